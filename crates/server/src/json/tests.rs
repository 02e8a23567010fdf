//! The JSON matcher against documents it must accept, refuse and close.

use super::*;
use serde_json::json;

fn accepts(g: &Grammar, text: &str) -> bool {
    let mut m = g.start();
    m.feed_all(g, text.as_bytes()) && m.is_complete()
}

fn prefix_ok(g: &Grammar, text: &str) -> bool {
    g.start().feed_all(g, text.as_bytes())
}

#[test]
fn any_object_accepts_json_objects_only() {
    let g = Grammar::any_object();
    for ok in [
        "{}",
        r#"{"a":1}"#,
        r#"{ "a" : [1, -2.5e3, "x\n\u00e9", true, null, {"b": false}] }"#,
    ] {
        assert!(accepts(&g, ok), "{ok}");
    }
    for bad in [
        "[]",
        "1",
        r#"{"a"}"#,
        r#"{"a":01}"#,
        "{,}",
        r#"{"a":1,}"#,
        "{} x",
    ] {
        assert!(!accepts(&g, bad), "{bad}");
    }
    assert!(prefix_ok(&g, r#"{"a": [1, 2"#));
    assert!(!prefix_ok(&g, r#"{"a": [1, 2}"#));
}

#[test]
fn schemas_fix_keys_order_and_types() {
    let s = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"enum": ["cat", "dog"]},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "age"]
    });
    let g = Grammar::from_schema(&s).unwrap();
    assert!(accepts(
        &g,
        r#"{"age":3,"kind":"cat","name":"Tom","ok":true,"tags":["a","b"]}"#
    ));
    assert!(accepts(
        &g,
        r#"{ "age": -1, "kind": "dog", "name": "x", "ok": false, "tags": [] }"#
    ));
    assert!(!prefix_ok(&g, r#"{"name""#));
    assert!(!prefix_ok(&g, r#"{"age":3.5"#));
    assert!(!prefix_ok(&g, r#"{"age":3,"kind":"cow"#));
    assert!(!prefix_ok(
        &g,
        r#"{"age":3,"kind":"cat","name":"Tom","ok":true,"tags":[1"#
    ));
}

#[test]
fn the_closing_text_completes_every_prefix() {
    let s = json!({
        "type": "object",
        "properties": {
            "a": {"type": "array", "items": {"type": "number"}},
            "b": {"$ref": "#/$defs/B"}
        },
        "$defs": {"B": {"type": "object", "properties": {"c": {"const": "x"}}}}
    });
    let g = Grammar::from_schema(&s).unwrap();
    let full = r#"{"a": [1.5e-3, 20], "b": {"c": "x"}}"#;
    for cut in 0..full.len() {
        let mut m = g.start();
        assert!(m.feed_all(&g, &full.as_bytes()[..cut]), "{cut}");
        let close = m.closing(&g);
        let mut text = full.as_bytes()[..cut].to_vec();
        text.extend_from_slice(&close);
        let mut m2 = g.start();
        assert!(
            m2.feed_all(&g, &text) && m2.is_complete(),
            "{}",
            String::from_utf8_lossy(&text)
        );
        let v: Value = serde_json::from_slice(&text).unwrap();
        assert!(v["a"].is_array() && v["b"]["c"] == "x", "{v}");
    }
}

#[test]
fn unsupported_keywords_are_named() {
    let e = Grammar::from_schema(&json!({"anyOf": [{"type": "string"}]})).unwrap_err();
    assert!(e.contains("anyOf"), "{e}");
    let e = Grammar::from_schema(&json!({"type": ["string", "null"]})).unwrap_err();
    assert!(e.contains("type"), "{e}");
}

#[test]
fn whitespace_runs_are_bounded() {
    let g = Grammar::any_object();
    assert!(prefix_ok(&g, "{    "));
    assert!(!prefix_ok(&g, "{     "));
}

#[test]
fn a_tool_call_names_an_offered_function_and_follows_its_schema() {
    let weather = json!({"type": "object", "properties": {
        "location": {"type": "string"}, "unit": {"enum": ["c", "f"]}}});
    let g = Grammar::tool_call(&[("get_weather", Some(&weather)), ("get_time", None)]).unwrap();
    assert!(accepts(
        &g,
        r#"{"name": "get_weather", "arguments": {"location": "Paris", "unit": "c"}}"#
    ));
    assert!(accepts(
        &g,
        r#"{"name": "get_time", "arguments": {"tz": 1}}"#
    ));
    assert!(prefix_ok(&g, r#"{"name": "get_w"#));
    assert!(!prefix_ok(&g, r#"{"name": "get_date"#));
    assert!(!prefix_ok(
        &g,
        r#"{"name": "get_weather", "arguments": {"unit""#
    ));
    assert!(!accepts(&g, r#"{"name": "get_time", "arguments": []}"#));
    // Every prefix closes into a call that parses.
    let full = r#"{"name": "get_weather", "arguments": {"location": "Paris", "unit": "f"}}"#;
    for cut in 0..full.len() {
        let mut m = g.start();
        assert!(m.feed_all(&g, &full.as_bytes()[..cut]), "{cut}");
        let mut text = full.as_bytes()[..cut].to_vec();
        text.extend_from_slice(&m.closing(&g));
        let v: Value = serde_json::from_slice(&text).unwrap();
        assert!(v["arguments"].is_object(), "{v}");
    }
    let e = Grammar::tool_call(&[("f", Some(&json!({"anyOf": []})))]).unwrap_err();
    assert!(e.contains("function f") && e.contains("anyOf"), "{e}");
    let e = Grammar::tool_call(&[("f", Some(&json!({"type": "string"})))]).unwrap_err();
    assert!(e.contains("object"), "{e}");
}
