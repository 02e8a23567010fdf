//! Grammar-constrained JSON: a [`TokenHook`] that masks every token whose bytes cannot
//! continue a JSON object of one fixed shape, so even a small model's output parses.
//!
//! A [`Shape`] is an object with fixed keys in a fixed order, each a string (with a length
//! cap, so generation always ends) or an integer in a range. It is compiled to a sequence of
//! byte-level elements (a literal byte, optional whitespace, a string, an integer) walked
//! by a small state machine; the hook runs every candidate token's bytes through it.
//! The object is done at its closing brace, where the hook ends the request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use engine::sched::TokenHook;
use tokenizer::{TokenId, TokenType, Tokenizer};

/// A field's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string of 1 to `max_bytes` bytes (escapes count as the bytes written).
    Str { max_bytes: usize },
    /// An integer in `min..=max` (no sign, no leading zero).
    Int { min: u32, max: u32 },
}

/// An object with these keys, in this order.
#[derive(Clone, Debug)]
pub struct Shape {
    pub fields: Vec<(&'static str, Value)>,
}

impl Shape {
    /// `{"question": string, "answer": string}`.
    pub fn qa(max_question: usize, max_answer: usize) -> Shape {
        Shape {
            fields: vec![
                (
                    "question",
                    Value::Str {
                        max_bytes: max_question,
                    },
                ),
                (
                    "answer",
                    Value::Str {
                        max_bytes: max_answer,
                    },
                ),
            ],
        }
    }

    /// `{"score": 1..=10}`.
    pub fn score() -> Shape {
        Shape {
            fields: vec![("score", Value::Int { min: 1, max: 10 })],
        }
    }

    /// The judge's reply, `{"evidence": string, "score": 1..=10}`: the quoted support
    /// comes first, so the score is given after the document has been searched for it.
    pub fn judgement(max_evidence: usize) -> Shape {
        Shape {
            fields: vec![
                (
                    "evidence",
                    Value::Str {
                        max_bytes: max_evidence,
                    },
                ),
                ("score", Value::Int { min: 1, max: 10 }),
            ],
        }
    }

    /// Most bytes a valid object of this shape can take (tokens are at least one byte
    /// each, so this bounds the tokens too).
    pub fn max_bytes(&self) -> usize {
        let elems = self.compile();
        elems
            .iter()
            .map(|e| match e {
                Elem::Byte(_) => 1,
                Elem::Ws => MAX_WS,
                Elem::Str(m) => m + 2,
                Elem::Int(_, max) => max.to_string().len(),
            })
            .sum()
    }

    fn compile(&self) -> Vec<Elem> {
        let mut v = vec![Elem::Ws, Elem::Byte(b'{')];
        for (i, (key, val)) in self.fields.iter().enumerate() {
            if i > 0 {
                v.extend([Elem::Ws, Elem::Byte(b',')]);
            }
            v.push(Elem::Ws);
            v.push(Elem::Byte(b'"'));
            v.extend(key.bytes().map(Elem::Byte));
            v.extend([Elem::Byte(b'"'), Elem::Ws, Elem::Byte(b':'), Elem::Ws]);
            v.push(match *val {
                Value::Str { max_bytes } => Elem::Str(max_bytes.max(1)),
                Value::Int { min, max } => Elem::Int(min, max),
            });
        }
        v.extend([Elem::Ws, Elem::Byte(b'}')]);
        v
    }
}

/// Most whitespace bytes in one place (so whitespace cannot run forever).
const MAX_WS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    Byte(u8),
    Ws,
    Str(usize),
    Int(u32, u32),
}

/// Where the machine is inside the current element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sub {
    Start,
    Ws(usize),
    /// In a string: bytes so far, escape state, UTF-8 continuation bytes still due.
    Str {
        len: usize,
        esc: Esc,
        cont: u8,
    },
    Int {
        value: u32,
        digits: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Esc {
    None,
    Backslash,
    Hex(u8),
}

/// The machine's state: element index and position inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    at: usize,
    sub: Sub,
}

/// A compiled shape.
#[derive(Debug)]
pub struct Machine {
    elems: Vec<Elem>,
    /// Tells machines apart in the vocabulary's mask cache.
    id: u64,
}

/// A string state whose mask does not depend on the string's length: see
/// [`Machine::mask_key`].
type MaskKey = (u64, usize, Esc, u8);

impl Machine {
    pub fn new(shape: &Shape) -> Machine {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Machine {
            elems: shape.compile(),
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Inside a string, not at its start, with more room left than a token can take plus
    /// what an escape or a split character may still owe: no cap check can then refuse a
    /// token, and a closing quote is allowed, so which tokens may come next depends only
    /// on the element, the escape and the character in progress, not on the length.
    fn mask_key(&self, s: State, longest: usize) -> Option<MaskKey> {
        match (self.elems.get(s.at)?, s.sub) {
            (Elem::Str(max), Sub::Str { len, esc, cont })
                if len > 0 && max.saturating_sub(len) > longest + 8 =>
            {
                Some((self.id, s.at, esc, cont))
            }
            _ => None,
        }
    }

    pub fn start(&self) -> State {
        State {
            at: 0,
            sub: Sub::Start,
        }
    }

    pub fn is_done(&self, s: State) -> bool {
        s.at >= self.elems.len()
    }

    fn next_elem(s: State) -> State {
        State {
            at: s.at + 1,
            sub: Sub::Start,
        }
    }

    /// The state after byte `b`, or `None` if `b` cannot come next.
    pub fn step(&self, mut s: State, b: u8) -> Option<State> {
        loop {
            let elem = *self.elems.get(s.at)?;
            match elem {
                Elem::Byte(c) => return (b == c).then(|| Self::next_elem(s)),
                Elem::Ws => {
                    let n = match s.sub {
                        Sub::Ws(n) => n,
                        _ => 0,
                    };
                    if matches!(b, b' ' | b'\n' | b'\t' | b'\r') && n < MAX_WS {
                        return Some(State {
                            at: s.at,
                            sub: Sub::Ws(n + 1),
                        });
                    }
                    s = Self::next_elem(s);
                }
                Elem::Str(max) => {
                    let Sub::Str { len, esc, cont } = s.sub else {
                        return (b == b'"').then_some(State {
                            at: s.at,
                            sub: Sub::Str {
                                len: 0,
                                esc: Esc::None,
                                cont: 0,
                            },
                        });
                    };
                    // A new state must leave room for what it still owes (continuation
                    // bytes, the rest of an escape), so the cap never strands the string.
                    let str_state = |len: usize, esc: Esc, cont: u8| {
                        let owed = usize::from(cont)
                            + match esc {
                                Esc::None => 0,
                                Esc::Backslash => 1,
                                Esc::Hex(n) => usize::from(n),
                            };
                        (len + owed <= max).then_some(State {
                            at: s.at,
                            sub: Sub::Str { len, esc, cont },
                        })
                    };
                    return match esc {
                        Esc::Backslash => match b {
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                                str_state(len + 1, Esc::None, 0)
                            }
                            b'u' => str_state(len + 1, Esc::Hex(4), 0),
                            _ => None,
                        },
                        Esc::Hex(n) => {
                            if !b.is_ascii_hexdigit() {
                                return None;
                            }
                            let e = if n == 1 { Esc::None } else { Esc::Hex(n - 1) };
                            str_state(len + 1, e, 0)
                        }
                        Esc::None if cont > 0 => {
                            (0x80..0xC0).contains(&b).then_some(())?;
                            str_state(len + 1, Esc::None, cont - 1)
                        }
                        Esc::None => match b {
                            b'"' if len > 0 => Some(Self::next_elem(s)),
                            b'"' => None,
                            b'\\' => str_state(len + 1, Esc::Backslash, 0),
                            0..0x20 | 0x7F => None,
                            0x20..0x7F => str_state(len + 1, Esc::None, 0),
                            0xC2..0xE0 => str_state(len + 1, Esc::None, 1),
                            0xE0..0xF0 => str_state(len + 1, Esc::None, 2),
                            0xF0..0xF5 => str_state(len + 1, Esc::None, 3),
                            _ => None,
                        },
                    };
                }
                Elem::Int(min, max) => {
                    let (value, digits) = match s.sub {
                        Sub::Int { value, digits } => (value, digits),
                        _ => (0, 0),
                    };
                    if b.is_ascii_digit() {
                        if digits > 0 && value == 0 {
                            return None;
                        }
                        let v = value.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
                        if v > max || (digits == 0 && v == 0 && min > 0) {
                            return None;
                        }
                        return Some(State {
                            at: s.at,
                            sub: Sub::Int {
                                value: v,
                                digits: digits + 1,
                            },
                        });
                    }
                    if digits == 0 || value < min {
                        return None;
                    }
                    s = Self::next_elem(s);
                }
            }
        }
    }

    /// Inside a string with nothing pending (no escape, no split character): how many
    /// more bytes it may take. Plain text (printable ASCII other than `"` and `\`) fits
    /// exactly when it is no longer than that, so the hook needs no walk for it.
    pub fn plain_room(&self, s: State) -> Option<usize> {
        match (self.elems.get(s.at)?, s.sub) {
            (
                Elem::Str(max),
                Sub::Str {
                    len,
                    esc: Esc::None,
                    cont: 0,
                },
            ) => Some(max - len),
            _ => None,
        }
    }

    /// The state after `bytes`, or `None` if they cannot come next (empty: no progress).
    pub fn run(&self, mut s: State, bytes: &[u8]) -> Option<State> {
        if bytes.is_empty() || self.is_done(s) {
            return None;
        }
        for &b in bytes {
            s = self.step(s, b)?;
        }
        Some(s)
    }
}

/// Each token's bytes, `None` for tokens that never appear in JSON text (control,
/// unknown, unused).
pub struct Vocab {
    pieces: Vec<Option<Box<[u8]>>>,
    /// Pieces of plain string text only (see [`Machine::plain_room`]).
    plain: Vec<bool>,
    /// The longest piece, in bytes.
    longest: usize,
    /// The allowed tokens (a bit each) of the string states [`Machine::mask_key`] names:
    /// most of a generated object is string text, where walking every piece through the
    /// machine for every sequence and step was a tenth of a generation run.
    masks: Mutex<HashMap<MaskKey, Arc<[u64]>>>,
}

/// Most masks a vocabulary keeps (a shape has a handful of string states each).
const MAX_MASKS: usize = 64;

impl Vocab {
    pub fn of(t: &Tokenizer) -> Vocab {
        let pieces = (0..t.vocab_size() as u32)
            .map(|i| {
                let id = TokenId(i);
                match t.token_type(id) {
                    Some(TokenType::Normal | TokenType::Byte) => {
                        t.token_bytes(id).ok().map(Into::into)
                    }
                    _ => None,
                }
            })
            .collect::<Vec<Option<Box<[u8]>>>>();
        Vocab::from_pieces(pieces)
    }

    /// A vocabulary of these token bytes (`None`: never in JSON text).
    pub fn from_pieces(pieces: Vec<Option<Box<[u8]>>>) -> Vocab {
        let longest = pieces.iter().flatten().map(|p| p.len()).max().unwrap_or(0);
        let plain = pieces
            .iter()
            .map(|p| {
                p.as_deref().is_some_and(|p| {
                    !p.is_empty()
                        && p.iter()
                            .all(|&b| (0x20..0x7F).contains(&b) && b != b'"' && b != b'\\')
                })
            })
            .collect();
        Vocab {
            pieces,
            plain,
            longest,
            masks: Mutex::new(HashMap::new()),
        }
    }

    /// Bytes held (for the ledger), the mask cache at its most.
    pub fn bytes(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| p.as_ref().map_or(0, |p| p.len()) + 16)
            .sum::<usize>()
            + MAX_MASKS * self.pieces.len().div_ceil(64) * 8
    }
}

/// The hook: masks tokens the shape forbids, ends the request when the object closes.
pub struct JsonHook {
    machine: Arc<Machine>,
    vocab: Arc<Vocab>,
    state: State,
}

impl JsonHook {
    pub fn new(machine: Arc<Machine>, vocab: Arc<Vocab>) -> JsonHook {
        let state = machine.start();
        JsonHook {
            machine,
            vocab,
            state,
        }
    }
}

impl JsonHook {
    /// Whether token `i` may come next, given the bytes that may (`first`) and, inside a
    /// string with nothing pending, the room left.
    fn allows(&self, i: usize, first: &[bool; 256], room: Option<usize>) -> bool {
        let Some(p) = self.vocab.pieces.get(i).and_then(Option::as_deref) else {
            return false;
        };
        if !p.first().is_some_and(|&b| first[b as usize]) {
            return false;
        }
        if let Some(room) = room
            && self.vocab.plain[i]
        {
            return p.len() <= room;
        }
        self.machine.run(self.state, p).is_some()
    }
}

impl TokenHook for JsonHook {
    fn mask(&mut self, logits: &mut [f32]) {
        let room = self.machine.plain_room(self.state);
        // Bytes that may come next: a token starting with any other byte is out without
        // a walk (most of the vocabulary, between a string's end and the next one).
        let first = || {
            let mut first = [false; 256];
            for (b, f) in first.iter_mut().enumerate() {
                *f = self.machine.step(self.state, b as u8).is_some();
            }
            first
        };
        if let Some(key) = self.machine.mask_key(self.state, self.vocab.longest) {
            let cached = self.vocab.masks.lock().unwrap().get(&key).cloned();
            let bits = match cached {
                Some(b) if b.len() * 64 >= logits.len() => b,
                _ => {
                    let first = first();
                    let mut b = vec![0u64; logits.len().div_ceil(64)];
                    for i in 0..logits.len() {
                        if self.allows(i, &first, room) {
                            b[i / 64] |= 1 << (i % 64);
                        }
                    }
                    let b: Arc<[u64]> = b.into();
                    let mut masks = self.vocab.masks.lock().unwrap();
                    if masks.len() >= MAX_MASKS {
                        masks.clear();
                    }
                    masks.insert(key, b.clone());
                    b
                }
            };
            for (i, l) in logits.iter_mut().enumerate() {
                if bits[i / 64] >> (i % 64) & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
            return;
        }
        let first = first();
        for (i, l) in logits.iter_mut().enumerate() {
            if *l != f32::NEG_INFINITY && !self.allows(i, &first, room) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    fn accept(&mut self, token: u32) -> bool {
        if let Some(p) = self
            .vocab
            .pieces
            .get(token as usize)
            .and_then(Option::as_deref)
            && let Some(s) = self.machine.run(self.state, p)
        {
            self.state = s;
        }
        self.machine.is_done(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(m: &Machine, text: &str) -> bool {
        m.run(m.start(), text.as_bytes())
            .is_some_and(|s| m.is_done(s))
    }

    #[test]
    fn qa_objects() {
        let m = Machine::new(&Shape::qa(40, 40));
        assert!(accepts(
            &m,
            r#"{"question": "Why?", "answer": "Because \"x\"\n."}"#
        ));
        assert!(accepts(&m, "{\"question\":\"é\",\"answer\":\"\\u00e9\"}"));
        assert!(!accepts(&m, r#"{"question": "", "answer": "a"}"#));
        assert!(!accepts(&m, r#"{"answer": "a", "question": "q"}"#));
        assert!(!accepts(&m, "{\"question\": \"a\nb\", \"answer\": \"a\"}"));
        assert!(m.run(m.start(), b"{\"quest").is_some());
        assert!(m.run(m.start(), b"{\"q\"").is_none());
        // The cap: 40 bytes, then only the closing quote.
        let long = format!(r#"{{"question": "{}"#, "a".repeat(40));
        let s = m.run(m.start(), long.as_bytes()).unwrap();
        assert!(m.step(s, b'a').is_none() && m.step(s, b'"').is_some());
        // An unfinished character cannot be closed.
        let s = m.run(m.start(), b"{\"question\": \"\xc3").unwrap();
        assert!(m.step(s, b'"').is_none());
        // Nor started where it cannot end: one byte left, a two-byte character refused.
        let near = format!(r#"{{"question": "{}"#, "a".repeat(39));
        let s = m.run(m.start(), near.as_bytes()).unwrap();
        assert!(m.step(s, 0xc3).is_none() && m.step(s, b'\\').is_none());
    }

    #[test]
    fn cached_string_masks_equal_the_walked_ones() {
        let pieces: Vec<&[u8]> = vec![
            b"{",
            b"}",
            b"\"",
            b"\":",
            b" \"",
            b"question",
            b"answer",
            b"\",",
            b" the",
            "é".as_bytes(),
            b"\\n",
            b"\\",
            b"n",
            b"\xc3",
            b"\xa9",
            b"ab\"",
            b"\"}",
            b"x",
            b"\n",
            b"\\u00e9",
            b"0123456789abcdef",
        ];
        let n = pieces.len();
        let vocab = Arc::new(Vocab::from_pieces(
            pieces.iter().map(|p| Some((*p).into())).collect(),
        ));
        let id = |p: &[u8]| pieces.iter().position(|q| *q == p).unwrap();
        // {"question": "the the é\n… x", "answer": "ab"}, split mid-character once.
        let mut seq = vec![id(b"{"), id(b"\""), id(b"question"), id(b"\":"), id(b" \"")];
        seq.extend([
            id(b"x"),
            id(b" the"),
            id(b" the"),
            id("é".as_bytes()),
            id(b"\\n"),
        ]);
        seq.extend([
            id(b"\xc3"),
            id(b"\xa9"),
            id(b"\\u00e9"),
            id(b"0123456789abcdef"),
        ]);
        seq.extend([
            id(b"\","),
            id(b" \""),
            id(b"answer"),
            id(b"\":"),
            id(b" \""),
            id(b"ab\""),
        ]);
        seq.push(id(b"}"));
        let m = Arc::new(Machine::new(&Shape::qa(200, 200)));
        // Twice: the second hook meets the masks the first one cached.
        for _ in 0..2 {
            let mut hook = JsonHook::new(m.clone(), vocab.clone());
            for &t in &seq {
                let mut logits = vec![0.0f32; n];
                hook.mask(&mut logits);
                let room = m.plain_room(hook.state);
                let mut first = [false; 256];
                for (b, f) in first.iter_mut().enumerate() {
                    *f = m.step(hook.state, b as u8).is_some();
                }
                for (i, l) in logits.iter().enumerate() {
                    let walked = hook.allows(i, &first, room);
                    assert_eq!(
                        *l != f32::NEG_INFINITY,
                        walked,
                        "token {i} at {:?}",
                        hook.state
                    );
                }
                assert!(logits[t] != f32::NEG_INFINITY, "token {t} masked");
                hook.accept(t as u32);
            }
            assert!(m.is_done(hook.state));
        }
        assert!(
            !vocab.masks.lock().unwrap().is_empty(),
            "no string state was cached"
        );
    }

    #[test]
    fn score_objects() {
        let m = Machine::new(&Shape::score());
        for ok in [r#"{"score": 1}"#, r#"{"score":10}"#, r#" { "score" : 7 }"#] {
            assert!(accepts(&m, ok), "{ok}");
        }
        for bad in [
            r#"{"score": 0}"#,
            r#"{"score": 11}"#,
            r#"{"score": 05}"#,
            r#"{"score": }"#,
        ] {
            assert!(!accepts(&m, bad), "{bad}");
        }
        assert!(Shape::score().max_bytes() < 40);
        let j = Machine::new(&Shape::judgement(40));
        for ok in [
            r#"{"evidence": "It is licensed under MIT.", "score": 10}"#,
            r#"{"evidence":"none","score":1}"#,
        ] {
            assert!(accepts(&j, ok), "{ok}");
        }
        for bad in [r#"{"score": 7}"#, r#"{"evidence": "x", "score": 0}"#] {
            assert!(!accepts(&j, bad), "{bad}");
        }
    }

    #[test]
    fn plain_text_fast_path_agrees_with_the_walk() {
        let m = Machine::new(&Shape::qa(10, 10));
        let s = m.run(m.start(), b"{\"question\": \"abc").unwrap();
        let room = m.plain_room(s).unwrap();
        assert_eq!(room, 7);
        for piece in [&b"defg"[..], b"defghij", b"defghijk", b" x y"] {
            assert_eq!(m.run(s, piece).is_some(), piece.len() <= room, "{piece:?}");
        }
        assert!(m.plain_room(m.start()).is_none());
    }

    /// Random walks through the machine only ever produce JSON that parses to the shape.
    #[test]
    fn every_accepted_walk_parses() {
        let m = Machine::new(&Shape::qa(12, 12));
        let alphabet: Vec<&[u8]> = vec![
            b"{",
            b"}",
            b"\"",
            b" ",
            b":",
            b",",
            b"question",
            b"answer",
            b"a",
            b"\\",
            b"n",
            b"u",
            b"0",
            b"\xc3\xa9",
            b"\xc3",
            b"\"question\": \"",
            b"\", \"answer\": \"",
            b"\"}",
            b"\n",
        ];
        let mut seed = 12345u64;
        let mut done = 0;
        for _ in 0..20_000 {
            let mut s = m.start();
            let mut out = Vec::new();
            for _ in 0..60 {
                let ok: Vec<&&[u8]> = alphabet.iter().filter(|p| m.run(s, p).is_some()).collect();
                if ok.is_empty() || m.is_done(s) {
                    break;
                }
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let p = ok[(seed >> 33) as usize % ok.len()];
                s = m.run(s, p).unwrap();
                out.extend_from_slice(p);
            }
            if m.is_done(s) {
                done += 1;
                let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                assert!(v["question"].is_string() && v["answer"].is_string());
            }
        }
        assert!(done > 100, "{done}");
    }
}
