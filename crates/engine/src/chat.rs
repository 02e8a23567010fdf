//! Chat templates: the Jinja template stored in the GGUF, rendered with minijinja.

use minijinja::{Environment, Error as JinjaError, ErrorKind, context};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: &str) -> Self {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// Why a template could not be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    #[error("chat template: {0}")]
    Render(String),
}

/// Renders `template` (a Hugging Face-style chat template) for `messages`, ending with the
/// assistant's turn opened (`add_generation_prompt = true`).
pub fn render(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TemplateError> {
    let msgs: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
        .collect();
    render_json(template, &msgs, None, bos_token, eos_token)
}

/// Renders `template` for messages shaped as JSON objects, as OpenAI's API and Hugging
/// Face templates shape them (`role`, `content`, and for tool use `tool_calls`,
/// `tool_call_id`, `name`), with the `tools` offered (each `{"type": "function",
/// "function": {...}}`) when there are any. The assistant's turn is opened.
pub fn render_json(
    template: &str,
    messages: &[serde_json::Value],
    tools: Option<&[serde_json::Value]>,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        },
    );
    // Templates were written against Python's `json.dumps` (what Hugging Face's `tojson`
    // is): `", "` and `": "` between items, no HTML escaping. minijinja's own writes
    // `<` as `\u003c` and no spaces, text the model never saw in training.
    env.add_filter(
        "tojson",
        |v: minijinja::Value| -> Result<String, JinjaError> {
            let j = serde_json::to_value(&v)
                .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
            let mut out = String::new();
            python_json(&j, &mut out);
            Ok(out)
        },
    );
    env.add_template("chat", template)
        .map_err(|e| TemplateError::Render(e.to_string()))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| TemplateError::Render(e.to_string()))?;
    let msgs: Vec<minijinja::Value> = messages
        .iter()
        .map(|v| minijinja::Value::from(minijinja::value::Serde(v)))
        .collect();
    let tools = tools.map(|t| {
        t.iter()
            .map(|v| minijinja::Value::from(minijinja::value::Serde(v)))
            .collect::<Vec<_>>()
    });
    tmpl.render(context! {
        messages => msgs,
        tools => tools,
        add_generation_prompt => true,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| TemplateError::Render(e.to_string()))
}

/// Whether `template` shows the model the tools it is offered: a conversation rendered
/// with one made-up tool names it somewhere (a template without tool support ignores
/// `tools`).
pub fn offers_tools(template: &str, bos_token: &str, eos_token: &str) -> bool {
    const PROBE: &str = "llmem_probe_tool_7f3a";
    let tool = serde_json::json!({
        "type": "function",
        "function": {"name": PROBE, "description": "", "parameters": {"type": "object", "properties": {}}},
    });
    let msgs = [serde_json::json!({"role": "user", "content": "hi"})];
    render_json(template, &msgs, Some(&[tool]), bos_token, eos_token)
        .is_ok_and(|s| s.contains(PROBE))
}

/// `v` as Python's `json.dumps(v, ensure_ascii=False)` writes it.
fn python_json(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_json(x, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(x, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_with_default_system_message() {
        let t = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let s = render(t, &[Message::user("Hi")], "", "").unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn template_errors_are_values() {
        assert!(render("{{ raise_exception('no') }}", &[], "", "").is_err());
        assert!(render("{% if %}", &[], "", "").is_err());
    }

    const TOOLS_TEMPLATE: &str = "{%- if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}{% for m in messages %}[{{ m.role }}]{% if m.tool_calls %}{% for c in m.tool_calls %}{{ c.function.name }}({{ c.function.arguments | tojson }}){% endfor %}{% else %}{{ m.content }}{% endif %}{% endfor %}";

    #[test]
    fn tools_and_tool_calls_reach_the_template_as_python_json() {
        let tools = [
            serde_json::json!({"type": "function", "function": {"name": "f", "description": "a <b> & 'c'"}}),
        ];
        let msgs = [
            serde_json::json!({"role": "user", "content": "hi"}),
            serde_json::json!({"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": [1, "é"]}}}
            ]}),
        ];
        let s = render_json(TOOLS_TEMPLATE, &msgs, Some(&tools), "", "").unwrap();
        assert_eq!(
            s,
            "<tools>{\"function\": {\"description\": \"a <b> & 'c'\", \"name\": \"f\"}, \"type\": \"function\"}</tools>[user]hi[assistant]f({\"x\": [1, \"é\"]})"
        );
    }

    #[test]
    fn a_template_that_ignores_tools_does_not_offer_them() {
        assert!(offers_tools(TOOLS_TEMPLATE, "", ""));
        let chatml = "{% for m in messages %}{{ m.content }}{% endfor %}";
        assert!(!offers_tools(chatml, "", ""));
    }
}
