//! End-to-end tests of `llmem health` and `llmem monitor`: the JSON report against its
//! schema, the plain snapshot, the live view in a real terminal (tmux), the metrics
//! endpoint under hostile input, and a real Prometheus scraping it.
//!
//! tmux and Prometheus (Debian's `prometheus`) are external programs. Where one is missing
//! the test says so and passes, except under CI (`CI` set), where it fails: CI installs
//! both.

#[path = "common_cli/mod.rs"]
mod common_cli;

use common_cli::*;
// ---------------------------------------------------------------------------------------
// The JSON schema: the keywords crates/probe/health-report.schema.json uses, and a
// failure on any other so the schema cannot silently outgrow this validator.

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "null" => value.is_null(),
        other => panic!("schema type {other} not supported by this validator"),
    }
}

fn validate(schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = schema.as_object().expect("a schema is an object");
    for (keyword, arg) in schema {
        match keyword.as_str() {
            "$schema" | "$id" | "title" | "description" => {}
            "type" => {
                let ok = match arg {
                    Value::String(t) => type_matches(t, value),
                    Value::Array(ts) => ts.iter().any(|t| type_matches(t.as_str().unwrap(), value)),
                    _ => panic!("bad type keyword"),
                };
                if !ok {
                    errors.push(format!("{at}: {value} is not {arg}"));
                }
            }
            "const" if value != arg => errors.push(format!("{at}: {value} is not {arg}")),
            "const" => {}
            "enum" if !arg.as_array().unwrap().contains(value) => {
                errors.push(format!("{at}: {value} not in {arg}"));
            }
            "enum" => {}
            "required" => {
                for key in arg.as_array().unwrap() {
                    let key = key.as_str().unwrap();
                    if value.get(key).is_none() {
                        errors.push(format!("{at}: missing {key}"));
                    }
                }
            }
            "properties" => {
                for (key, sub) in arg.as_object().unwrap() {
                    if let Some(v) = value.get(key) {
                        validate(sub, v, &format!("{at}.{key}"), errors);
                    }
                }
            }
            "additionalProperties" => {
                assert_eq!(arg, &Value::Bool(false), "only `false` is supported");
                let known = schema["properties"].as_object().unwrap();
                for key in value.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !known.contains_key(key) {
                        errors.push(format!("{at}: undocumented key {key}"));
                    }
                }
            }
            "items" => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    validate(arg, item, &format!("{at}[{i}]"), errors);
                }
            }
            "minimum" | "maximum" => {
                if let Some(n) = value.as_f64() {
                    let bound = arg.as_f64().unwrap();
                    let ok = if keyword == "minimum" {
                        n >= bound
                    } else {
                        n <= bound
                    };
                    if !ok {
                        errors.push(format!("{at}: {n} breaks {keyword} {bound}"));
                    }
                }
            }
            "minItems" | "maxItems" => {
                if let Some(items) = value.as_array() {
                    let len = items.len() as u64;
                    let bound = arg.as_u64().unwrap();
                    let ok = if keyword == "minItems" {
                        len >= bound
                    } else {
                        len <= bound
                    };
                    if !ok {
                        errors.push(format!("{at}: {len} items breaks {keyword} {bound}"));
                    }
                }
            }
            "minLength" => {
                if let Some(s) = value.as_str()
                    && (s.chars().count() as u64) < arg.as_u64().unwrap()
                {
                    errors.push(format!("{at}: {s:?} too short"));
                }
            }
            other => panic!("schema keyword {other} not supported by this validator"),
        }
    }
}

fn schema_errors(report: &Value) -> Vec<String> {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(SCHEMA).expect("read the schema"))
            .expect("schema is JSON");
    let mut errors = Vec::new();
    validate(&schema, report, "report", &mut errors);
    errors
}

#[test]
fn the_validator_rejects_what_the_schema_forbids() {
    let out = llmem(&["health", "--json"]);
    let good: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut bad = good.clone();
    bad["rating"] = Value::from("splendid");
    bad["pressure"]["value"] = Value::from(1.5);
    bad.as_object_mut().unwrap().remove("health_score");
    bad["extra"] = Value::from(1);
    let errors = schema_errors(&bad);
    for needle in [
        "rating",
        "pressure.value",
        "missing health_score",
        "undocumented key extra",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "{needle}: {errors:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// llmem health

#[test]
fn health_json_validates_against_the_schema() {
    let out = llmem(&["health", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let errors = schema_errors(&report);
    assert!(errors.is_empty(), "{errors:#?}");
    let total = report["mem_total_bytes"].as_u64().unwrap();
    let available = report["mem_available_bytes"].as_u64().unwrap();
    assert!(available <= total);
    assert!(report["process_footprint_bytes"].as_u64().unwrap() > 0);
    // `health` loads no model and so has no ledger: untracked is unknown, not made up.
    assert_eq!(report["untracked_bytes"], Value::Null);
    #[cfg(target_os = "linux")]
    assert_eq!(total, meminfo_total_bytes(), "MemTotal from /proc/meminfo");
}

#[test]
fn health_text_names_memory_pressure_score_and_recommendations() {
    let out = llmem(&["health"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout_of(&out);
    for needle in [
        "memory: total",
        "swap:",
        "process:",
        "pressure: ",
        "(source: ",
        "health: ",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
    }
    assert!(
        text.contains("recommendations: none") || text.contains("     setting: "),
        "{text}"
    );
    #[cfg(target_os = "linux")]
    for category in ["anon", "page_cache", "free"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(category)),
            "category {category} missing in:\n{text}"
        );
    }
}

#[test]
fn health_with_a_model_counts_its_weights_and_kv() {
    let config = testkit::TinyLlamaConfig::default();
    let model = testkit::tiny_llama(&config);
    let dir = TempDir::new("health-model");
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, &model.bytes).unwrap();
    let path = path.to_str().unwrap();

    // f32 weights: 4 bytes a value. KV f16 per position: layers × 2 × KV heads × head dim × 2.
    let weights: usize = model.tensors.iter().map(|t| t.values.len() * 4).sum();
    let head_dim = config.d_model / config.n_heads;
    let per_token = config.n_layers * 2 * config.n_kv_heads * head_dim * 2;
    let out = llmem(&["health", "--model", path, "--ctx", "512"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout_of(&out);
    assert!(text.contains(&format!("({weights} bytes)")), "{text}");
    assert!(
        text.contains(&format!("({per_token} bytes per token)")),
        "{text}"
    );
    assert!(text.contains("KV f16 at ctx 512"), "{text}");

    // A context whose KV exceeds the machine: the recommendation that depends on the model
    // (weights + KV ≥ 90 % of memory) fires. Contexts stop at 2^24 tokens (issue 13), so
    // the model has 16 KiB of KV a position: 256 GiB at the largest context.
    let deep = testkit::TinyLlamaConfig {
        n_layers: 64,
        n_heads: 8,
        n_kv_heads: 8,
        ..testkit::TinyLlamaConfig::default()
    };
    let deep_path = dir.path().join("deep.gguf");
    std::fs::write(&deep_path, testkit::tiny_llama(&deep).bytes).unwrap();
    let out = llmem(&[
        "health",
        "--json",
        "--model",
        deep_path.to_str().unwrap(),
        "--ctx",
        "16777216",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema_errors(&report).is_empty());
    let kinds: Vec<&str> = report["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"fit_memory"), "{kinds:?}");
    // The KV is what is large, so the context is what to change.
    let fit = report["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "fit_memory")
        .unwrap();
    assert!(
        fit["setting"].as_str().unwrap().starts_with("--ctx "),
        "{fit}"
    );
    // Past the cap, the context is refused.
    let out = llmem(&["health", "--model", path, "--ctx", "1099511627776"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn health_input_errors_exit_2() {
    let out = llmem(&["health", "--model", "/nonexistent/model.gguf"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    let dir = TempDir::new("health-bad");
    let path = dir.path().join("not.gguf");
    std::fs::write(&path, b"this is not a GGUF file at all").unwrap();
    let out = llmem(&["health", "--model", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));

    // --ctx needs --model; 0 is not a context.
    assert_eq!(llmem(&["health", "--ctx", "512"]).status.code(), Some(2));
    let out = llmem(&["health", "--model", "x.gguf", "--ctx", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn health_json_into_a_closed_pipe_is_not_an_error() {
    let mut child = Command::new(BIN)
        .args(["health", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// llmem monitor --once and the flags

#[test]
fn monitor_once_prints_memory_pools_and_pressure() {
    let out = llmem(&["monitor", "--once"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout_of(&out);
    let memory = text
        .lines()
        .find(|l| l.starts_with("memory: total "))
        .unwrap_or_else(|| panic!("no memory line in:\n{text}"));
    assert!(memory.contains("available"), "{memory}");
    #[cfg(target_os = "linux")]
    for category in ["anon", "page_cache", "slab", "free"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(category)),
            "category {category} missing in:\n{text}"
        );
    }
    assert!(text.lines().any(|l| l.starts_with("swap: ")), "{text}");
    assert!(
        text.contains("llmem pools: none (no model loaded here)"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("untracked")),
        "{text}"
    );
    let pressure = text
        .lines()
        .find(|l| l.starts_with("pressure: "))
        .unwrap_or_else(|| panic!("no pressure line in:\n{text}"));
    let value: f64 = pressure["pressure: ".len()..]
        .split(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {pressure}"));
    assert!((0.0..=1.0).contains(&value), "{pressure}");
    assert!(
        ["normal", "warning", "critical"]
            .iter()
            .any(|level| pressure.contains(level)),
        "{pressure}"
    );
    assert!(text.lines().any(|l| l.starts_with("alerts:")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("health: ")), "{text}");
}

#[test]
fn monitor_flags_are_checked() {
    // The live view without a terminal is refused with a hint, not a garbled screen.
    let out = llmem(&["monitor"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--once"));
    // --headless needs an endpoint; --once serves nothing.
    assert_eq!(llmem(&["monitor", "--headless"]).status.code(), Some(2));
    let out = llmem(&["monitor", "--once", "--prometheus", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        llmem(&["monitor", "--once", "--interval-ms", "0"])
            .status
            .code(),
        Some(2)
    );
    let out = llmem(&["monitor", "--headless", "--prometheus", "localhost"]);
    assert_eq!(out.status.code(), Some(2));
    // An address that cannot be bound is the user's to fix.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = llmem(&["monitor", "--headless", "--prometheus", &addr]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot serve metrics"));
}

// ---------------------------------------------------------------------------------------
// The live view in a real terminal

#[test]
fn monitor_live_view_in_tmux_shows_pools_and_pressure_and_quits() {
    let Some(tmux_bin) = external_tool("tmux", &["/usr/bin/tmux"]) else {
        return;
    };
    // q and Ctrl-C (raw mode delivers it as a key) both quit and restore the terminal.
    for (tag, key) in [("q", "q"), ("ctrl-c", "C-c")] {
        let tmux = Tmux::new(tmux_bin.clone(), tag);
        tmux.start_llmem("monitor");

        std::thread::sleep(Duration::from_secs(2));
        let (shown, screen) = tmux.wait_for(Duration::from_secs(10), |s| {
            s.contains("llmem pools") && s.contains("untracked") && s.contains(" pressure ")
        });
        assert!(shown, "live view not drawn in 80×24:\n{screen}");
        let pressure = screen.lines().find(|l| l.contains(" pressure ")).unwrap();
        assert!(
            ["normal", "warning", "critical"]
                .iter()
                .any(|level| pressure.contains(level)),
            "{pressure}"
        );
        for needle in [
            "memory (OS)",
            "total ",
            "swap ",
            "health ",
            "alerts:",
            "q quits",
        ] {
            assert!(screen.contains(needle), "{needle:?} missing in:\n{screen}");
        }
        assert!(
            screen.lines().all(|l| l.chars().count() <= 80),
            "wider than 80 columns:\n{screen}"
        );

        let out = tmux.cmd(&["send-keys", "-t", "m", key]);
        assert!(out.status.success());
        let (exited, screen) =
            tmux.wait_for(Duration::from_secs(10), |s| s.contains("llmem-exit="));
        assert!(exited, "llmem monitor did not quit on {key}:\n{screen}");
        assert!(screen.contains("llmem-exit=0"), "{screen}");
        // Back on the normal screen: the view is gone.
        assert!(
            !screen.contains("memory (OS)"),
            "terminal not restored:\n{screen}"
        );
    }
}
