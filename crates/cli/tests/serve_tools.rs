//! `tools` and `tool_choice` through `llmem serve`: a forced call on Qwen2.5 is a
//! well-formed call of an offered function whose arguments validate, streamed or whole;
//! tool results go back through the template; a model without tool support says so.

mod common_cli;
mod common_serve;
use common_cli::*;
use common_serve::*;
use serde_json::json;

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
            },
            "required": ["location"]
        }
    }})
}

fn time_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_time",
        "description": "The time now in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}
    }})
}

/// `args` (a JSON text) validates against the weather tool's parameters.
fn assert_weather_args(args: &str) {
    let v: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("{args}: {e}"));
    let o = v.as_object().expect("arguments are an object");
    assert!(o["location"].is_string(), "{args}");
    assert!(
        o.get("unit")
            .is_none_or(|u| u == "celsius" || u == "fahrenheit"),
        "{args}"
    );
    assert!(o.keys().all(|k| k == "location" || k == "unit"), "{args}");
}

fn ask(tool_choice: Value, stream: bool) -> Value {
    json!({
        "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}],
        "tools": [weather_tool(), time_tool()],
        "tool_choice": tool_choice,
        "temperature": 0,
        // At least a byte per token of the shortest call, or the request is refused.
        "max_tokens": 128,
        "stream": stream,
    })
}

#[test]
#[cfg_attr(
    not(llmem_model_qwen05),
    ignore = "needs qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf in $LLMEM_MODELS or ~/.cache/llmem/models"
)]
fn a_forced_tool_call_on_qwen25_names_an_offered_function_with_valid_arguments() {
    let Some(model) = option_env!("LLMEM_MODEL_QWEN05") else {
        return;
    };
    let s = serve(Path::new(model), &["--ctx", "1024"]);
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    for choice in [json!("required"), named.clone()] {
        let (status, _, v) = post(&s.addr, "/v1/chat/completions", &ask(choice, false));
        assert_eq!(status, 200, "{v}");
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{v}");
        let calls = c["message"]["tool_calls"].as_array().expect("tool_calls");
        assert_eq!(calls.len(), 1, "{v}");
        assert_eq!(calls[0]["type"], "function");
        assert!(
            calls[0]["id"]
                .as_str()
                .is_some_and(|i| i.starts_with("call_"))
        );
        assert_eq!(calls[0]["function"]["name"], "get_weather", "{v}");
        assert_weather_args(calls[0]["function"]["arguments"].as_str().unwrap());
    }

    // Streamed: the call arrives as `delta.tool_calls`, then finish_reason tool_calls.
    let body = ask(named, true).to_string();
    let (status, _, raw) = http(
        &s.addr,
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        body.as_bytes(),
    );
    assert_eq!(status, 200);
    let text = String::from_utf8(raw).unwrap();
    let mut args = String::new();
    let mut name = String::new();
    let mut reason = Value::Null;
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        let c = &v["choices"][0];
        assert!(
            c["delta"]["content"].as_str().is_none_or(str::is_empty),
            "{v}"
        );
        for t in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
            assert_eq!(t["index"], 0);
            name.push_str(t["function"]["name"].as_str().unwrap_or(""));
            args.push_str(t["function"]["arguments"].as_str().unwrap_or(""));
        }
        if !c["finish_reason"].is_null() {
            reason = c["finish_reason"].clone();
        }
    }
    assert_eq!(name, "get_weather", "{text}");
    assert_weather_args(&args);
    assert_eq!(reason, "tool_calls", "{text}");

    // The call and its result go back through the template; the model answers in text.
    let (status, _, v) = post(
        &s.addr,
        "/v1/chat/completions",
        &json!({
            "messages": [
                {"role": "user", "content": "What is the weather like in Paris today?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"location\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 21, \"sky\": \"sunny\"}"},
            ],
            "tools": [weather_tool()],
            "tool_choice": "none",
            "temperature": 0,
            "max_tokens": 32,
        }),
    );
    assert_eq!(status, 200, "{v}");
    let c = &v["choices"][0];
    assert!(c["message"]["tool_calls"].is_null(), "{v}");
    assert!(
        c["message"]["content"]
            .as_str()
            .is_some_and(|t| !t.trim().is_empty()),
        "{v}"
    );
    // More prompt than the question alone: the call and its result were rendered.
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 40, "{v}");

    // A function that is not offered, and a schema outside the supported subset.
    let unknown = json!({"type": "function", "function": {"name": "get_tide"}});
    let (status, _, v) = post(&s.addr, "/v1/chat/completions", &ask(unknown, false));
    assert_eq!(status, 400, "{v}");
    assert!(
        is_error_shape(&v) && v["error"]["param"] == "tool_choice",
        "{v}"
    );
    let mut body = ask(json!("required"), false);
    body["tools"][0]["function"]["parameters"] = json!({"anyOf": [{"type": "object"}]});
    let (status, _, v) = post(&s.addr, "/v1/chat/completions", &body);
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("anyOf"),
        "{v}"
    );
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn a_model_whose_template_has_no_tools_refuses_them_clearly() {
    let Some(model) = model() else { return };
    let s = serve(&model, &["--ctx", "512"]);
    let (status, _, v) = post(&s.addr, "/v1/chat/completions", &ask(json!("auto"), false));
    assert_eq!(status, 400, "{v}");
    assert!(is_error_shape(&v), "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("no tool support"), "{m}");
    // tool_choice "none" offers nothing to the template: an ordinary answer.
    let mut body = ask(json!("none"), false);
    body["max_tokens"] = json!(8);
    let (status, _, v) = post(&s.addr, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
}
