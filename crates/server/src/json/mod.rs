//! Grammar-constrained JSON: a byte-level pushdown matcher for JSON values, optionally of
//! one JSON-schema shape, used to mask tokens that cannot continue a valid document.
//!
//! A [`Grammar`] is compiled once per request from `response_format` (any object for
//! `json_object`, or the schema's shape for `json_schema`). A [`Matcher`] is its state
//! after the bytes generated so far; [`Matcher::feed`] says whether one more byte keeps the
//! text a prefix of a valid document. [`Matcher::closing`] is the shortest text that
//! completes the document from here: when the tokens left run short, generation is held
//! to it, so the output parses even when `max_tokens` cuts it short.
//!
//! The schema subset: `type` object (with `properties`, all of them emitted, in the order
//! of their names), array (`items`), string, number, integer, boolean, null; `enum` and `const`;
//! local `$ref`s (`#/$defs/…`, `#/definitions/…`). Anything else is refused by
//! [`Grammar::from_schema`] with the keyword it does not support, so what is accepted
//! always validates.
//!
//! [`Grammar::tool_call`] is the grammar of one tool call: `{"name": …, "arguments": …}`
//! where the arguments follow the schema of the function named.

use serde_json::Value;

/// Most whitespace bytes in a row between tokens of the document (a model left free to
/// indent can indent forever).
const MAX_WS: u8 = 4;
/// Most digits in a number.
const MAX_DIGITS: u8 = 16;
/// Deepest `$ref` chain or nesting followed while compiling.
const MAX_DEPTH: usize = 32;

/// What a value must be.
#[derive(Clone, Debug)]
enum Node {
    Any,
    AnyObject,
    /// An object with these keys (literal ids of `"key"`) and values, in this order.
    Object(Vec<(u32, u32)>),
    Array(u32),
    String,
    Number,
    Integer,
    Boolean,
    Null,
    /// One of these literal texts (JSON values).
    Enum(Vec<u32>),
    /// One of these heads (literal ids, none a prefix of another), then the value of the
    /// node paired with the head taken, then literal `tail`: a value whose shape depends
    /// on a name written before it (a tool call's arguments after its function's name).
    Tagged {
        opts: Vec<(u32, u32)>,
        tail: u32,
    },
}

/// The shape a generated document must have.
#[derive(Clone, Debug)]
pub struct Grammar {
    nodes: Vec<Node>,
    lits: Vec<Vec<u8>>,
    root: u32,
}

/// Node 0 of every grammar.
const ANY: u32 = 0;

impl Grammar {
    /// Any JSON object (`response_format: json_object`).
    pub fn any_object() -> Grammar {
        Grammar {
            nodes: vec![Node::Any, Node::AnyObject],
            lits: Vec::new(),
            root: 1,
        }
    }

    /// The shape of `schema` (see the module docs for the subset).
    ///
    /// # Errors
    /// A message naming what is not supported.
    pub fn from_schema(schema: &Value) -> Result<Grammar, String> {
        let mut g = Grammar {
            nodes: vec![Node::Any],
            lits: Vec::new(),
            root: 0,
        };
        g.root = g.compile(schema, schema, 0)?;
        Ok(g)
    }

    fn lit(&mut self, text: Vec<u8>) -> u32 {
        self.lits.push(text);
        (self.lits.len() - 1) as u32
    }

    fn node(&mut self, n: Node) -> u32 {
        self.nodes.push(n);
        (self.nodes.len() - 1) as u32
    }

    fn compile(&mut self, s: &Value, root: &Value, depth: usize) -> Result<u32, String> {
        if depth > MAX_DEPTH {
            return Err("the schema nests deeper than 32 levels".into());
        }
        let obj = match s {
            Value::Bool(true) => return Ok(ANY),
            Value::Object(o) => o,
            _ => return Err("a schema must be an object".into()),
        };
        if let Some(r) = obj.get("$ref") {
            let r = r.as_str().ok_or("$ref must be a string")?;
            let path = r
                .strip_prefix("#/")
                .ok_or_else(|| format!("$ref {r}: only local references (#/…) are supported"))?;
            let mut at = root;
            for part in path.split('/') {
                at = at
                    .get(part)
                    .ok_or_else(|| format!("$ref {r} points nowhere"))?;
            }
            return self.compile(at, root, depth + 1);
        }
        for k in ["anyOf", "oneOf", "allOf", "not", "if", "patternProperties"] {
            if obj.contains_key(k) {
                return Err(format!("the schema keyword {k} is not supported"));
            }
        }
        if let Some(c) = obj.get("const") {
            let l = self.lit(serde_json::to_vec(c).expect("a Value serializes"));
            return Ok(self.node(Node::Enum(vec![l])));
        }
        if let Some(e) = obj.get("enum") {
            let vals = e.as_array().ok_or("enum must be an array")?;
            if vals.is_empty() || vals.len() > 64 {
                return Err("enum must have 1 to 64 values".into());
            }
            let mut ids = Vec::new();
            for v in vals {
                ids.push(self.lit(serde_json::to_vec(v).expect("a Value serializes")));
            }
            return Ok(self.node(Node::Enum(ids)));
        }
        let ty = match obj.get("type") {
            None => {
                if obj.contains_key("properties") {
                    "object"
                } else if obj.contains_key("items") {
                    "array"
                } else {
                    return Ok(ANY);
                }
            }
            Some(Value::String(t)) => t.as_str(),
            Some(_) => return Err("type must be one string (type lists are not supported)".into()),
        };
        Ok(match ty {
            "object" => match obj.get("properties") {
                Some(Value::Object(props)) if !props.is_empty() => {
                    let mut fields = Vec::new();
                    for (k, v) in props {
                        let key = self.lit(serde_json::to_vec(k).expect("a string serializes"));
                        let val = self.compile(v, root, depth + 1)?;
                        fields.push((key, val));
                    }
                    self.node(Node::Object(fields))
                }
                Some(Value::Object(_)) | None => self.node(Node::AnyObject),
                Some(_) => return Err("properties must be an object".into()),
            },
            "array" => {
                let item = match obj.get("items") {
                    Some(i) => self.compile(i, root, depth + 1)?,
                    None => ANY,
                };
                self.node(Node::Array(item))
            }
            "string" => self.node(Node::String),
            "number" => self.node(Node::Number),
            "integer" => self.node(Node::Integer),
            "boolean" => self.node(Node::Boolean),
            "null" => self.node(Node::Null),
            t => return Err(format!("type {t:?} is not supported")),
        })
    }

    /// One call of one of `functions` (name, `parameters` schema; none: any object), as
    /// the object `{"name": "<name>", "arguments": <its arguments>}`, written with the
    /// spacing models trained on tool calls write it.
    ///
    /// # Errors
    /// A message naming the function whose schema is not supported, or too many.
    pub fn tool_call(functions: &[(&str, Option<&Value>)]) -> Result<Grammar, String> {
        if functions.is_empty() || functions.len() > 64 {
            return Err("a tool call is constrained to 1 to 64 functions".into());
        }
        let mut g = Grammar {
            nodes: vec![Node::Any, Node::AnyObject],
            lits: Vec::new(),
            root: 0,
        };
        let mut opts = Vec::new();
        for &(name, params) in functions {
            let quoted = serde_json::to_string(name).expect("a string serializes");
            // The closing quote ends every head: no head is a prefix of another.
            let head = g.lit(format!("{{\"name\": {quoted}, \"arguments\": ").into_bytes());
            let args = match params {
                None => 1,
                Some(p) => g
                    .compile(p, p, 0)
                    .map_err(|e| format!("function {name}: parameters: {e}"))?,
            };
            if !matches!(g.nodes[args as usize], Node::Object(_) | Node::AnyObject) {
                return Err(format!(
                    "function {name}: parameters must describe an object"
                ));
            }
            opts.push((head, args));
        }
        let tail = g.lit(b"}".to_vec());
        g.root = g.node(Node::Tagged { opts, tail });
        Ok(g)
    }

    /// A matcher at the start of a document.
    pub fn start(&self) -> Matcher {
        Matcher {
            stack: vec![Frame::Value(self.root)],
            ws: 0,
        }
    }
}

/// One open construct of the document being matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// A value of this node is next (whitespace may come first).
    Value(u32),
    /// Inside literal `lit` after `pos` bytes.
    Lit { lit: u32, pos: u32 },
    /// Inside one of the literals of enum `node`, `alive` (a bit per option) still
    /// possible after `pos` bytes.
    Choice { node: u32, alive: u64, pos: u32 },
    /// Inside a head of tagged `node`, `alive` (a bit per option) still possible after
    /// `pos` bytes.
    Head { node: u32, alive: u64, pos: u32 },
    /// Inside a string: `esc` 0 plain, 1 after a backslash, 2..=5 hex digits of `\u`.
    Str { esc: u8 },
    /// Inside a number: `state` as in [`num_step`], `digits` so far.
    Num { state: u8, digits: u8, int: bool },
    /// A fixed-key object at field `i`: phase 0 before its key, 1 before `:`, 2 after its
    /// value.
    Obj { node: u32, i: u32, phase: u8 },
    /// Any object: 0 after `{`, 1 after a key, 2 after a value, 3 after `,`.
    AnyObj { phase: u8 },
    /// An array: 0 after `[`, 1 after a value, 2 after `,`.
    Arr { item: u32, phase: u8 },
}

/// Where a document stands after some bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    stack: Vec<Frame>,
    ws: u8,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

/// Number states: 0 start, 1 after `-`, 2 after a leading `0`, 3 integer digits, 4 after
/// `.`, 5 fraction digits, 6 after `e`, 7 after the exponent's sign, 8 exponent digits.
/// Returns the next state, or `None` when `b` does not continue the number.
fn num_step(state: u8, b: u8, int: bool) -> Option<u8> {
    let d = b.is_ascii_digit();
    match (state, b) {
        (0, b'-') => Some(1),
        (0 | 1, b'0') => Some(2),
        (0 | 1, _) if d => Some(3),
        (3, _) if d => Some(3),
        (2 | 3, b'.') if !int => Some(4),
        (2 | 3 | 5, b'e' | b'E') if !int => Some(6),
        (4 | 5, _) if d => Some(5),
        (6, b'+' | b'-') => Some(7),
        (6..=8, _) if d => Some(8),
        _ => None,
    }
}

fn num_done(state: u8) -> bool {
    matches!(state, 2 | 3 | 5 | 8)
}

impl Matcher {
    /// Whether the document is complete (nothing more may follow).
    pub fn is_complete(&self) -> bool {
        match self.stack.as_slice() {
            [] => true,
            [Frame::Num { state, .. }] => num_done(*state),
            _ => false,
        }
    }

    fn space(&mut self) -> bool {
        if self.ws < MAX_WS {
            self.ws += 1;
            true
        } else {
            false
        }
    }

    /// Feeds all of `bytes`; `false` (the matcher then in an unspecified state) when they
    /// do not continue a valid document.
    pub fn feed_all(&mut self, g: &Grammar, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed(g, b))
    }

    /// Feeds one byte; `false` when it does not continue a valid document (the state is
    /// then unspecified).
    pub fn feed(&mut self, g: &Grammar, b: u8) -> bool {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return false;
            };
            match *top {
                Frame::Value(node) => {
                    if is_ws(b) {
                        return self.space();
                    }
                    let start = match &g.nodes[node as usize] {
                        Node::Any => match b {
                            b'{' => Some(Frame::AnyObj { phase: 0 }),
                            b'[' => Some(Frame::Arr {
                                item: ANY,
                                phase: 0,
                            }),
                            b'"' => Some(Frame::Str { esc: 0 }),
                            b'-' | b'0'..=b'9' => {
                                *top = Frame::Num {
                                    state: 0,
                                    digits: 0,
                                    int: false,
                                };
                                continue;
                            }
                            b't' | b'f' | b'n' => {
                                *top = Frame::Lit {
                                    lit: keyword(b),
                                    pos: 0,
                                };
                                continue;
                            }
                            _ => None,
                        },
                        Node::AnyObject => (b == b'{').then_some(Frame::AnyObj { phase: 0 }),
                        Node::Object(_) => (b == b'{').then_some(Frame::Obj {
                            node,
                            i: 0,
                            phase: 0,
                        }),
                        Node::Array(item) => (b == b'[').then_some(Frame::Arr {
                            item: *item,
                            phase: 0,
                        }),
                        Node::String => (b == b'"').then_some(Frame::Str { esc: 0 }),
                        Node::Number | Node::Integer => {
                            *top = Frame::Num {
                                state: 0,
                                digits: 0,
                                int: matches!(g.nodes[node as usize], Node::Integer),
                            };
                            continue;
                        }
                        Node::Boolean => match b {
                            b't' | b'f' => {
                                *top = Frame::Lit {
                                    lit: keyword(b),
                                    pos: 0,
                                };
                                continue;
                            }
                            _ => None,
                        },
                        Node::Null => {
                            *top = Frame::Lit {
                                lit: keyword(b'n'),
                                pos: 0,
                            };
                            continue;
                        }
                        Node::Tagged { opts, .. } => {
                            *top = Frame::Head {
                                node,
                                alive: all_bits(opts.len()),
                                pos: 0,
                            };
                            continue;
                        }
                        Node::Enum(opts) => {
                            *top = Frame::Choice {
                                node,
                                alive: all_bits(opts.len()),
                                pos: 0,
                            };
                            continue;
                        }
                    };
                    let Some(f) = start else { return false };
                    self.ws = 0;
                    *top = f;
                    return true;
                }
                Frame::Lit { lit, pos } => {
                    let text = lit_text(g, lit);
                    if text.get(pos as usize) != Some(&b) {
                        return false;
                    }
                    self.ws = 0;
                    if pos as usize + 1 == text.len() {
                        self.stack.pop();
                    } else {
                        *top = Frame::Lit { lit, pos: pos + 1 };
                    }
                    return true;
                }
                Frame::Choice { node, alive, pos } => {
                    let Node::Enum(opts) = &g.nodes[node as usize] else {
                        unreachable!("choices are made for enums")
                    };
                    let mut next = 0u64;
                    let mut done = false;
                    let mut longer = false;
                    for (i, &l) in opts.iter().enumerate() {
                        if alive & (1 << i) == 0 {
                            continue;
                        }
                        let t = &g.lits[l as usize];
                        if t.get(pos as usize) == Some(&b) {
                            next |= 1 << i;
                            if t.len() == pos as usize + 1 {
                                done = true;
                            } else {
                                longer = true;
                            }
                        }
                    }
                    if next == 0 {
                        return false;
                    }
                    self.ws = 0;
                    if done && !longer {
                        self.stack.pop();
                    } else {
                        *top = Frame::Choice {
                            node,
                            alive: next,
                            pos: pos + 1,
                        };
                    }
                    return true;
                }
                Frame::Head { node, alive, pos } => {
                    let Node::Tagged { opts, tail } = &g.nodes[node as usize] else {
                        unreachable!("heads are made for tagged nodes")
                    };
                    let mut next = 0u64;
                    let mut done = None;
                    for (i, &(head, val)) in opts.iter().enumerate() {
                        let t = &g.lits[head as usize];
                        if alive & (1 << i) != 0 && t.get(pos as usize) == Some(&b) {
                            next |= 1 << i;
                            if t.len() == pos as usize + 1 {
                                done = Some(val);
                            }
                        }
                    }
                    if next == 0 {
                        return false;
                    }
                    self.ws = 0;
                    match done {
                        // Heads are prefix-free: the finished one is the only one left.
                        Some(val) => {
                            *top = Frame::Lit { lit: *tail, pos: 0 };
                            self.stack.push(Frame::Value(val));
                        }
                        None => {
                            *top = Frame::Head {
                                node,
                                alive: next,
                                pos: pos + 1,
                            };
                        }
                    }
                    return true;
                }
                Frame::Str { esc } => {
                    self.ws = 0;
                    let next = match (esc, b) {
                        (0, b'"') => {
                            self.stack.pop();
                            return true;
                        }
                        (0, b'\\') => 1,
                        (0, 0..=0x1f) => return false,
                        (0, _) => 0,
                        (1, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 0,
                        (1, b'u') => 2,
                        (2..=5, _) if b.is_ascii_hexdigit() => {
                            if esc == 5 {
                                0
                            } else {
                                esc + 1
                            }
                        }
                        _ => return false,
                    };
                    *top = Frame::Str { esc: next };
                    return true;
                }
                Frame::Num { state, digits, int } => match num_step(state, b, int) {
                    Some(s) => {
                        let digits = digits + u8::from(b.is_ascii_digit());
                        if digits > MAX_DIGITS {
                            return false;
                        }
                        self.ws = 0;
                        *top = Frame::Num {
                            state: s,
                            digits,
                            int,
                        };
                        return true;
                    }
                    None if num_done(state) => {
                        // The number ended; the byte belongs to what encloses it.
                        self.stack.pop();
                        continue;
                    }
                    None => return false,
                },
                Frame::Obj { node, i, phase } => {
                    if is_ws(b) {
                        return self.space();
                    }
                    let Node::Object(fields) = &g.nodes[node as usize] else {
                        unreachable!("fixed objects are made for objects")
                    };
                    let n = fields.len() as u32;
                    match phase {
                        0 => {
                            let (key, _) = fields[i as usize];
                            *top = Frame::Obj { node, i, phase: 1 };
                            self.stack.push(Frame::Lit { lit: key, pos: 0 });
                            continue;
                        }
                        1 if b == b':' => {
                            let (_, val) = fields[i as usize];
                            *top = Frame::Obj { node, i, phase: 2 };
                            self.stack.push(Frame::Value(val));
                        }
                        2 if b == b',' && i + 1 < n => {
                            *top = Frame::Obj {
                                node,
                                i: i + 1,
                                phase: 0,
                            };
                        }
                        2 if b == b'}' && i + 1 == n => {
                            self.stack.pop();
                        }
                        _ => return false,
                    }
                    self.ws = 0;
                    return true;
                }
                Frame::AnyObj { phase } => {
                    if is_ws(b) {
                        return self.space();
                    }
                    match (phase, b) {
                        (0 | 3, b'"') => {
                            *top = Frame::AnyObj { phase: 1 };
                            self.stack.push(Frame::Str { esc: 0 });
                        }
                        (0 | 2, b'}') => {
                            self.stack.pop();
                        }
                        (1, b':') => {
                            *top = Frame::AnyObj { phase: 2 };
                            self.stack.push(Frame::Value(ANY));
                        }
                        (2, b',') => *top = Frame::AnyObj { phase: 3 },
                        _ => return false,
                    }
                    self.ws = 0;
                    return true;
                }
                Frame::Arr { item, phase } => {
                    if is_ws(b) {
                        return self.space();
                    }
                    match (phase, b) {
                        (0 | 1, b']') => {
                            self.stack.pop();
                        }
                        (1, b',') => *top = Frame::Arr { item, phase: 2 },
                        (0 | 2, _) => {
                            *top = Frame::Arr { item, phase: 1 };
                            self.stack.push(Frame::Value(item));
                            continue;
                        }
                        _ => return false,
                    }
                    self.ws = 0;
                    return true;
                }
            }
        }
    }

    /// The shortest text that completes the document from here (empty when complete).
    pub fn closing(&self, g: &Grammar) -> Vec<u8> {
        let mut out = Vec::new();
        for f in self.stack.iter().rev() {
            match *f {
                Frame::Value(node) => min_value(g, node, &mut out),
                Frame::Lit { lit, pos } => out.extend_from_slice(&lit_text(g, lit)[pos as usize..]),
                Frame::Choice { node, alive, pos } => {
                    let Node::Enum(opts) = &g.nodes[node as usize] else {
                        unreachable!("choices are made for enums")
                    };
                    let best = opts
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| alive & (1 << i) != 0)
                        .map(|(_, &l)| &g.lits[l as usize])
                        .min_by_key(|t| t.len())
                        .expect("a live choice has an option");
                    out.extend_from_slice(&best[pos as usize..]);
                }
                Frame::Head { node, alive, pos } => {
                    let Node::Tagged { opts, tail } = &g.nodes[node as usize] else {
                        unreachable!("heads are made for tagged nodes")
                    };
                    let best = opts
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| alive & (1 << i) != 0)
                        .map(|(_, &(head, val))| {
                            let mut t = g.lits[head as usize][pos as usize..].to_vec();
                            min_value(g, val, &mut t);
                            t.extend_from_slice(&g.lits[*tail as usize]);
                            t
                        })
                        .min_by_key(Vec::len)
                        .expect("a live head has an option");
                    out.extend_from_slice(&best);
                }
                Frame::Str { esc } => {
                    match esc {
                        1 => out.push(b'n'),
                        2..=5 => out.extend(std::iter::repeat_n(b'0', usize::from(6 - esc))),
                        _ => {}
                    }
                    out.push(b'"');
                }
                Frame::Num { state, .. } => {
                    if !num_done(state) {
                        out.push(b'0');
                    }
                }
                Frame::Obj { node, i, phase } => {
                    let Node::Object(fields) = &g.nodes[node as usize] else {
                        unreachable!("fixed objects are made for objects")
                    };
                    let i = i as usize;
                    match phase {
                        0 => field(g, fields[i], &mut out),
                        1 => {
                            out.push(b':');
                            min_value(g, fields[i].1, &mut out);
                        }
                        _ => {}
                    }
                    for &f in &fields[i + 1..] {
                        out.push(b',');
                        field(g, f, &mut out);
                    }
                    out.push(b'}');
                }
                Frame::AnyObj { phase } => out.extend_from_slice(match phase {
                    1 => b":0}",
                    3 => b"\"\":0}",
                    _ => b"}",
                }),
                Frame::Arr { item, phase } => {
                    if phase == 2 {
                        min_value(g, item, &mut out);
                    }
                    out.push(b']');
                }
            }
        }
        out
    }
}

/// The literal id of `true`, `false` or `null` (by first byte): ids past the grammar's
/// table.
fn keyword(first: u8) -> u32 {
    u32::MAX - u32::from(first)
}

/// A literal's text: the grammar's, or a keyword's.
fn lit_text(g: &Grammar, lit: u32) -> &[u8] {
    if lit == keyword(b't') {
        b"true"
    } else if lit == keyword(b'f') {
        b"false"
    } else if lit == keyword(b'n') {
        b"null"
    } else {
        &g.lits[lit as usize]
    }
}

fn field(g: &Grammar, (key, val): (u32, u32), out: &mut Vec<u8>) {
    out.extend_from_slice(&g.lits[key as usize]);
    out.push(b':');
    min_value(g, val, out);
}

fn min_value(g: &Grammar, node: u32, out: &mut Vec<u8>) {
    match &g.nodes[node as usize] {
        Node::Any | Node::Number | Node::Integer => out.push(b'0'),
        Node::AnyObject => out.extend_from_slice(b"{}"),
        Node::Object(fields) => {
            out.push(b'{');
            for (i, &f) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                field(g, f, out);
            }
            out.push(b'}');
        }
        Node::Array(_) => out.extend_from_slice(b"[]"),
        Node::String => out.extend_from_slice(b"\"\""),
        Node::Boolean => out.extend_from_slice(b"true"),
        Node::Null => out.extend_from_slice(b"null"),
        Node::Enum(opts) => {
            let best = opts
                .iter()
                .map(|&l| &g.lits[l as usize])
                .min_by_key(|t| t.len())
                .expect("enums have values");
            out.extend_from_slice(best);
        }
        Node::Tagged { opts, tail } => {
            let best = opts
                .iter()
                .map(|&(head, val)| {
                    let mut t = g.lits[head as usize].clone();
                    min_value(g, val, &mut t);
                    t.extend_from_slice(&g.lits[*tail as usize]);
                    t
                })
                .min_by_key(Vec::len)
                .expect("tagged nodes have options");
            out.extend_from_slice(&best);
        }
    }
}

/// A mask with the low `n` bits set (`n` ≤ 64).
fn all_bits(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

#[cfg(test)]
mod tests;
