//! Chat requests around the template: OpenAI's messages as the model's chat template sees
//! them, the `tools` a request offers with its `tool_choice`, and the model's tool calls
//! read back out of its text.
//!
//! The call format read is the one Qwen2.5 (and Hermes-style templates) trained on: each
//! call a JSON object `{"name": …, "arguments": {…}}` between `<tool_call>` and
//! `</tool_call>` lines, possibly several. A template that offers tools in another format
//! is refused rather than answered with calls left in the text. Text that looks like a
//! call but does not parse stays content: a malformed call is never half-reported.
//!
//! `tool_choice` `"required"` or a named function forces one call: the assistant's turn
//! is opened with `<tool_call>\n` and decoding follows [`Grammar::tool_call`], so the
//! call names an offered function and its arguments validate against its `parameters`.

use std::sync::Arc;

use engine::text::TextModel;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::json::Grammar;

/// Opens one call in the model's text.
const OPEN: &str = "<tool_call>";
/// Closes one call.
const CLOSE: &str = "</tool_call>";
/// Most tools one request may offer.
const MAX_TOOLS: usize = 128;

#[derive(Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub tool_calls: Option<Value>,
    #[serde(default)]
    pub tool_call_id: Option<Value>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

fn bad_message(i: usize, why: &str) -> ApiError {
    ApiError::invalid(format!("messages[{i}]: {why}")).param("messages")
}

/// `msgs` as the chat template sees them: `content` a string (text parts joined), an
/// assistant's `tool_calls` with their `arguments` as JSON objects (templates write them
/// with `tojson`), a tool result's `tool_call_id`.
pub fn conversation(msgs: Vec<ChatMessage>) -> Result<Vec<Value>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid("messages must not be empty").param("messages"));
    }
    let mut out = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.into_iter().enumerate() {
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(p)) => {
                let mut s = String::new();
                for part in p {
                    if part.kind != "text" {
                        return Err(ApiError::invalid(format!(
                            "content parts of type {:?} are not supported (text only)",
                            part.kind
                        ))
                        .param("messages"));
                    }
                    s.push_str(part.text.as_deref().unwrap_or(""));
                }
                s
            }
        };
        let mut v = json!({"role": m.role, "content": content});
        if let Some(name) = m.name {
            v["name"] = json!(name);
        }
        match (m.role.as_str(), m.tool_call_id) {
            ("tool", Some(Value::String(id))) => v["tool_call_id"] = json!(id),
            ("tool", _) => {
                return Err(bad_message(
                    i,
                    "a tool message needs tool_call_id (the id of the call it answers)",
                ));
            }
            (_, _) => {}
        }
        match m.tool_calls {
            None | Some(Value::Null) => {}
            Some(Value::Array(calls)) if m.role == "assistant" => {
                let calls = calls
                    .iter()
                    .map(|c| {
                        template_call(c).ok_or_else(|| {
                            bad_message(
                                i,
                                "each tool call needs function.name (a string) and \
                             function.arguments (a JSON string)",
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                v["tool_calls"] = Value::Array(calls);
            }
            Some(_) => {
                return Err(bad_message(
                    i,
                    "tool_calls must be an array, on an assistant message",
                ));
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// One of an assistant message's calls as templates take it: `arguments` parsed.
fn template_call(c: &Value) -> Option<Value> {
    let f = c.get("function")?;
    let name = f.get("name")?.as_str()?;
    let args = match f.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
        Some(o @ Value::Object(_)) => o.clone(),
        Some(_) => return None,
    };
    Some(json!({
        "id": c.get("id").cloned().unwrap_or(Value::Null),
        "type": "function",
        "function": {"name": name, "arguments": args},
    }))
}

/// What `tool_choice` asks.
#[derive(Debug, PartialEq, Eq)]
enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

fn tool_choice(v: Option<&Value>) -> Result<ToolChoice, ApiError> {
    let bad = || {
        ApiError::invalid(
            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \
             \"function\": {\"name\": …}}",
        )
        .param("tool_choice")
    };
    Ok(match v {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => return Err(bad()),
        },
        Some(o) if o.get("type").and_then(Value::as_str) == Some("function") => ToolChoice::Named(
            o.pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(bad)?
                .to_string(),
        ),
        Some(_) => return Err(bad()),
    })
}

/// The tools of a request that offers them to the model.
pub struct Tools {
    /// As the template gets them (`{"type": "function", "function": {…}}` each).
    pub offered: Vec<Value>,
    /// A call is forced: the turn opens with the call tag and decoding follows this.
    pub forced: Option<Arc<Grammar>>,
    /// The functions' names.
    names: Arc<[String]>,
}

impl Tools {
    /// Checks `tools` and `tool_choice` for a chat request to `tm`. `None`: no tools go
    /// to the template (none offered, or `tool_choice` `"none"`).
    pub fn parse(
        tools: Option<&Value>,
        choice: Option<&Value>,
        tm: &TextModel<'_>,
    ) -> Result<Option<Tools>, ApiError> {
        let choice = tool_choice(choice)?;
        let tools = match tools {
            None | Some(Value::Null) => {
                if matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) {
                    return Err(ApiError::invalid("tool_choice needs tools to choose from")
                        .param("tool_choice"));
                }
                return Ok(None);
            }
            Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_TOOLS => a,
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "tools must be an array of 1 to {MAX_TOOLS} tools"
                ))
                .param("tools"));
            }
        };
        let mut functions: Vec<(&str, Option<&Value>)> = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            let bad = |why: &str| ApiError::invalid(format!("tools[{i}]: {why}")).param("tools");
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad("type must be \"function\""));
            }
            let name = t
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("function.name must be a string"))?;
            let ok = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(bad(
                    "function.name must be 1 to 64 of a-z, A-Z, 0-9, _ and -",
                ));
            }
            if functions.iter().any(|(n, _)| *n == name) {
                return Err(bad(&format!("function {name} is offered twice")));
            }
            let params = t.pointer("/function/parameters");
            if params.is_some_and(|p| !p.is_object() && !p.is_null()) {
                return Err(bad("function.parameters must be a JSON schema object"));
            }
            functions.push((name, params.filter(|p| !p.is_null())));
        }
        if choice == ToolChoice::None {
            return Ok(None);
        }
        if !tm.offers_tools() {
            return Err(ApiError::invalid(
                "this model's chat template has no tool support (it does not show tools to \
                 the model): send the request without tools, or with tool_choice \"none\", or \
                 use a model whose template has them (such as Qwen2.5)",
            )
            .param("tools"));
        }
        if !tm
            .chat_template
            .as_deref()
            .is_some_and(|t| t.contains(OPEN))
        {
            return Err(ApiError::invalid(
                "this model's chat template offers tools in a call format this server does not \
                 read (it reads calls in <tool_call> tags, as Qwen2.5 writes them)",
            )
            .param("tools"));
        }
        let forced = match &choice {
            ToolChoice::Required => Some(functions.as_slice()),
            ToolChoice::Named(n) => {
                let Some(i) = functions.iter().position(|(f, _)| f == n) else {
                    return Err(ApiError::invalid(format!(
                        "tool_choice names function {n}, which tools does not offer"
                    ))
                    .param("tool_choice"));
                };
                Some(&functions[i..=i])
            }
            ToolChoice::None | ToolChoice::Auto => None,
        };
        let forced = forced
            .map(|f| {
                Grammar::tool_call(f)
                    .map(Arc::new)
                    .map_err(|e| ApiError::invalid(format!("tools: {e}")).param("tools"))
            })
            .transpose()?;
        Ok(Some(Tools {
            offered: tools.clone(),
            forced,
            names: functions.iter().map(|(n, _)| (*n).to_string()).collect(),
        }))
    }

    /// What the prompt continues with after the template's text (a forced call's tag).
    pub fn prefill(&self) -> &'static str {
        if self.forced.is_some() {
            "<tool_call>\n"
        } else {
            ""
        }
    }

    /// The calls in a choice's whole text.
    pub fn read(&self, text: &str) -> Parsed {
        if self.forced.is_some() {
            return parse_calls(&format!("{}{text}", self.prefill()));
        }
        read_unforced(text, &self.names)
    }

    /// A reader for a choice's text as it streams.
    pub fn stream(&self) -> CallStream {
        CallStream {
            held: self.prefill().to_string(),
            mode: if self.forced.is_some() {
                Held::Call
            } else {
                Held::Start
            },
            names: self.names.clone(),
        }
    }
}

/// The calls of a choice that was free to call or not: in tags, or failing those, the
/// whole answer one bare call of an offered function (small Qwen2.5-Coder models often
/// leave the tags out, or fence the call as a JSON code block).
fn read_unforced(text: &str, names: &[String]) -> Parsed {
    let p = parse_calls(text);
    if !p.calls.is_empty() {
        return p;
    }
    match bare_call(text, names) {
        Some(c) => Parsed {
            content: None,
            calls: vec![c],
        },
        None => p,
    }
}

/// `text` as one call without tags: an object of exactly `name` (one of `names`) and
/// `arguments`, alone or in a JSON code fence.
fn bare_call(text: &str, names: &[String]) -> Option<Call> {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|r| r.strip_suffix("```"))
        .unwrap_or(t)
        .trim();
    let v: Value = serde_json::from_str(t).ok()?;
    if v.as_object()?
        .keys()
        .any(|k| k != "name" && k != "arguments")
    {
        return None;
    }
    call_of(t).filter(|c| names.contains(&c.name))
}

/// One call the model made.
#[derive(Debug, PartialEq, Eq)]
pub struct Call {
    pub name: String,
    /// Its arguments as a JSON text (OpenAI's `function.arguments`).
    pub arguments: String,
}

/// A choice's text split into content and calls.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub content: Option<String>,
    pub calls: Vec<Call>,
}

impl Parsed {
    fn text(t: &str) -> Parsed {
        Parsed {
            content: (!t.is_empty()).then(|| t.to_string()),
            calls: Vec::new(),
        }
    }

    /// The finish reason the choice reports: `tool_calls` when it made any.
    pub fn reason(&self, reason: &'static str) -> &'static str {
        if self.calls.is_empty() {
            reason
        } else {
            "tool_calls"
        }
    }

    /// The calls as OpenAI's `tool_calls` (each with `index`, which streamed deltas
    /// carry and whole messages ignore), with fresh ids.
    pub fn tool_calls(&self) -> Vec<Value> {
        let base = engine::sampler::random_seed();
        self.calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "index": i,
                    "id": format!("call_{:016x}", base.wrapping_add(i as u64)),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })
            })
            .collect()
    }

    /// The whole assistant message.
    pub fn message(&self) -> Value {
        let mut m = json!({"role": "assistant", "content": self.content});
        if !self.calls.is_empty() {
            m["tool_calls"] = Value::Array(self.tool_calls());
        }
        m
    }
}

/// One call's JSON between the tags.
fn call_of(body: &str) -> Option<Call> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(o @ Value::Object(_)) => o.to_string(),
        // Some models write the arguments as a JSON text already.
        Some(Value::String(s)) if serde_json::from_str::<Value>(s).is_ok_and(|a| a.is_object()) => {
            s.clone()
        }
        Some(_) => return None,
    };
    Some(Call { name, arguments })
}

/// Splits `text` into content and the calls in its `<tool_call>` blocks. A block that
/// does not hold one well-formed call leaves the whole text as content, no calls; the
/// last block may lack its closing tag (the model ended there).
pub fn parse_calls(text: &str) -> Parsed {
    let Some(first) = text.find(OPEN) else {
        return Parsed::text(text);
    };
    let mut calls = Vec::new();
    let mut rest_content = String::new();
    let mut at = &text[first..];
    while let Some(after) = at.strip_prefix(OPEN) {
        let (body, next) = match after.find(CLOSE) {
            Some(e) => (&after[..e], &after[e + CLOSE.len()..]),
            None => (after, ""),
        };
        let Some(call) = call_of(body) else {
            return Parsed::text(text);
        };
        calls.push(call);
        match next.find(OPEN) {
            Some(o) => {
                rest_content.push_str(next[..o].trim());
                at = &next[o..];
            }
            None => {
                rest_content.push_str(next.trim());
                break;
            }
        }
    }
    let mut content = text[..first].trim_end().to_string();
    content.push_str(&rest_content);
    Parsed {
        content: (!content.is_empty()).then_some(content),
        calls,
    }
}

/// Reads a choice's calls as its text streams: content goes out as it comes, except a
/// tail that could begin a call tag; from the tag on everything is held and read at the
/// end. An answer that opens like JSON (a bare call, maybe) is held whole.
pub struct CallStream {
    held: String,
    mode: Held,
    names: Arc<[String]>,
}

/// What a [`CallStream`] holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Nothing sent yet (only whitespace so far).
    Start,
    /// Content is going out.
    Content,
    /// Everything from a call tag on.
    Call,
    /// The whole answer, which opened like JSON.
    Whole,
}

impl CallStream {
    /// Takes the next piece of text; returns the content that may be sent now.
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        match self.mode {
            Held::Call | Held::Whole => return String::new(),
            Held::Start => {
                let t = self.held.trim_start();
                if t.is_empty() {
                    return String::new();
                }
                if t.starts_with('{') || t.starts_with('`') {
                    self.mode = Held::Whole;
                    return String::new();
                }
                self.mode = Held::Content;
            }
            Held::Content => {}
        }
        if let Some(i) = self.held.find(OPEN) {
            self.mode = Held::Call;
            let out = self.held[..i].to_string();
            self.held.drain(..i);
            return out;
        }
        // Hold back the longest tail that the tag could start with.
        let keep = (1..OPEN.len().min(self.held.len() + 1))
            .rev()
            .find(|&k| {
                let at = self.held.len() - k;
                self.held.is_char_boundary(at) && OPEN.starts_with(&self.held[at..])
            })
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        out
    }

    /// At the choice's end: the content not sent yet, and the calls.
    pub fn finish(self) -> Parsed {
        match self.mode {
            Held::Call => parse_calls(&self.held),
            Held::Whole => read_unforced(&self.held, &self.names),
            Held::Start | Held::Content => Parsed::text(&self.held),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> Call {
        Call {
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn several_calls_are_read_in_order_with_the_content_around_them() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \
                    {\"location\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \
                    \"arguments\": {}}\n</tool_call>";
        let p = parse_calls(text);
        assert_eq!(p.content.as_deref(), Some("Let me check."));
        assert_eq!(
            p.calls,
            vec![
                call("get_weather", r#"{"location":"Paris"}"#),
                call("get_time", "{}")
            ]
        );
        assert_eq!(p.reason("stop"), "tool_calls");
        let m = p.message();
        assert_eq!(m["tool_calls"][1]["function"]["name"], "get_time");
        assert_eq!(m["tool_calls"][0]["type"], "function");
        assert_ne!(m["tool_calls"][0]["id"], m["tool_calls"][1]["id"]);
    }

    #[test]
    fn malformed_calls_stay_content() {
        for text in [
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }\n</tool_call>",
            "<tool_call>\nnot json\n</tool_call>",
            "<tool_call>\n{\"arguments\": {}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"f\", \"arguments\": [1]}\n</tool_call>",
            "<tool_call>\n{\"name\": \"f\"}\n</tool_call><tool_call>\n{\"name\": \n</tool_call>",
            "<tool_call>\n{\"name\": \"f\", \"argu",
        ] {
            let p = parse_calls(text);
            assert_eq!(p.content.as_deref(), Some(text));
            assert!(p.calls.is_empty(), "{text}");
            assert_eq!(p.reason("stop"), "stop");
        }
        assert_eq!(parse_calls("plain").message()["content"], "plain");
        assert!(parse_calls("").content.is_none());
    }

    #[test]
    fn a_last_call_cut_before_its_closing_tag_still_counts_if_whole() {
        let p = parse_calls("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}");
        assert_eq!(p.calls, vec![call("f", r#"{"x":1}"#)]);
        assert!(p.content.is_none());
        let p = parse_calls(
            "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 2}\"}</tool_call>",
        );
        assert_eq!(p.calls, vec![call("f", r#"{"x": 2}"#)]);
    }

    fn stream() -> CallStream {
        CallStream {
            held: String::new(),
            mode: Held::Start,
            names: vec!["get_weather".to_string()].into(),
        }
    }

    #[test]
    fn a_bare_call_of_an_offered_function_counts_when_it_is_the_whole_answer() {
        let names = ["get_weather".to_string()];
        let call_json = "{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\"}}";
        for text in [
            call_json.to_string(),
            format!("\n```json\n{call_json}\n```\n"),
        ] {
            let p = read_unforced(&text, &names);
            assert_eq!(
                p.calls,
                vec![call("get_weather", r#"{"location":"Paris"}"#)]
            );
            assert!(p.content.is_none());
            let mut s = stream();
            assert_eq!(s.push(&text[..5]), "");
            assert_eq!(s.push(&text[5..]), "");
            assert_eq!(s.finish().calls.len(), 1);
        }
        for text in [
            "{\"name\": \"get_time\", \"arguments\": {}}",
            "{\"name\": \"get_weather\", \"arguments\": {}, \"x\": 1}",
            "The call is {\"name\": \"get_weather\", \"arguments\": {}}",
            "{\"location\": \"Paris\"}",
        ] {
            let p = read_unforced(text, &names);
            assert!(p.calls.is_empty(), "{text}");
            assert_eq!(p.content.as_deref(), Some(text));
        }
    }

    #[test]
    fn streaming_holds_back_what_could_start_a_call() {
        let mut s = stream();
        assert_eq!(s.push("Sure <tool"), "Sure ");
        assert_eq!(s.push("_call>\n{\"name\": \"f\", "), "");
        assert_eq!(s.push("\"arguments\": {}}\n</tool_call>"), "");
        let p = s.finish();
        assert_eq!(p.calls, vec![call("f", "{}")]);
        let mut s = stream();
        assert_eq!(s.push(" "), "");
        assert_eq!(s.push("a <t"), " a ");
        assert_eq!(s.push("é> c<"), "<té> c");
        assert_eq!(s.finish().content.as_deref(), Some("<"));
    }

    #[test]
    fn conversations_carry_tool_calls_and_results_to_the_template() {
        let msgs: Vec<ChatMessage> = serde_json::from_value(json!([
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"location\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "20C"},
        ]))
        .unwrap();
        let c = conversation(msgs).unwrap();
        assert_eq!(c[0]["content"], "weather?");
        assert_eq!(
            c[1]["tool_calls"][0]["function"]["arguments"]["location"],
            "Paris"
        );
        assert_eq!(c[2]["tool_call_id"], "c1");
        let bad: Vec<ChatMessage> =
            serde_json::from_value(json!([{"role": "tool", "content": "x"}])).unwrap();
        let e = conversation(bad).unwrap_err();
        assert!(e.message.contains("tool_call_id"), "{}", e.message);
        let bad: Vec<ChatMessage> = serde_json::from_value(
            json!([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]),
        )
        .unwrap();
        assert!(conversation(bad).is_err());
    }

    #[test]
    fn tool_choice_forms() {
        assert_eq!(tool_choice(None).unwrap(), ToolChoice::Auto);
        assert_eq!(
            tool_choice(Some(&json!("required"))).unwrap(),
            ToolChoice::Required
        );
        assert_eq!(
            tool_choice(Some(
                &json!({"type": "function", "function": {"name": "f"}})
            ))
            .unwrap(),
            ToolChoice::Named("f".into())
        );
        assert!(tool_choice(Some(&json!("always"))).is_err());
        assert!(tool_choice(Some(&json!({"type": "function"}))).is_err());
    }
}
