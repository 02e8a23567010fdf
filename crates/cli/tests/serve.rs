//! `llmem serve` end to end on the real model: greedy answers equal the engine's, the
//! budget admits or refuses (never crashes, never truncates), hostile HTTP gets 4xx while
//! the server keeps serving, and the real `openai` Python client passes its checks.

mod common_cli;
mod common_serve;
use common_cli::*;
use common_serve::*;

const QUESTION: &str = "What is the capital of France?";

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn greedy_chat_through_the_server_equals_the_engines_greedy_run() {
    let Some(model) = model() else { return };
    let m = model.to_str().unwrap();
    let direct = json_of(&llmem(&[
        "run",
        "--model",
        m,
        "--prompt",
        QUESTION,
        "--max-tokens",
        "24",
        "--temperature",
        "0",
        "--ctx",
        "512",
        "--json",
    ]));
    let s = serve(&model, &["--ctx", "512"]);
    let (status, _, r) = post(
        &s.addr,
        "/v1/chat/completions",
        &serde_json::json!({"messages": [{"role": "user", "content": QUESTION}],
                             "max_tokens": 24, "temperature": 0}),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["message"]["content"], direct["text"], "{r}");
    assert_eq!(
        r["usage"]["prompt_tokens"],
        direct["prompt_token_ids"].as_array().unwrap().len()
    );
    let n = direct["token_ids"].as_array().unwrap().len();
    let stopped = direct["stop_reason"] == "eog";
    // The server counts the end-of-generation token it generated; run does not.
    assert_eq!(
        r["usage"]["completion_tokens"],
        n + usize::from(stopped),
        "{r}"
    );
    // Several at once (a batch of four) answer the same, token for token.
    let answers: Vec<Value> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                sc.spawn(|| {
                    post(
                        &s.addr,
                        "/v1/chat/completions",
                        &serde_json::json!({"messages": [{"role": "user", "content": QUESTION}],
                                             "max_tokens": 24, "temperature": 0}),
                    )
                    .2
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // A request that attached another's cached prompt prefix computes only its tail;
    // what follows a shared block may round its attention differently from a run alone
    // (`Engine::share_rule` says so), and on this prompt that moved log-probs by up to
    // ~0.05, enough to flip a near-tie. So: a request that computed its whole prompt
    // answers exactly as `run` does, and those that attached the prefix exactly as each
    // other.
    let mut attached: Option<&Value> = None;
    for a in &answers {
        let text = &a["choices"][0]["message"]["content"];
        if a["usage"]["prompt_tokens_details"]["cached_tokens"] == 0 {
            assert_eq!(text, &direct["text"], "{a}");
        } else if let Some(first) = attached {
            assert_eq!(text, &first["choices"][0]["message"]["content"], "{a}");
        } else {
            attached = Some(a);
        }
    }
}

/// `--kv-dir`: a long system prompt's blocks written by one server are found by the next
/// one on the same directory, and the greedy answer stays the same.
#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn prefixes_survive_a_restart_with_kv_dir() {
    let Some(model) = model() else { return };
    let dir = TempDir::new("serve-kvdir");
    let d = dir.path().to_str().unwrap();
    let body = serde_json::json!({
        "messages": [
            {"role": "system", "content": "You answer in one short sentence. ".repeat(30)},
            {"role": "user", "content": QUESTION},
        ],
        "temperature": 0,
        "max_tokens": 12,
    });
    let ask = |s: &Serve| {
        let (status, _, v) = post(&s.addr, "/v1/chat/completions", &body);
        assert_eq!(status, 200, "{v}");
        v
    };
    let before = {
        let s = serve(&model, &["--ctx", "512", "--kv-dir", d]);
        let v = ask(&s);
        // The counters reach /metrics after the step that wrote the blocks.
        let t = Instant::now();
        loop {
            let (_, _, m) = http(&s.addr, "GET", "/metrics", &[], b"");
            let m = String::from_utf8(m).unwrap();
            let written: u64 = m
                .lines()
                .find_map(|l| l.strip_prefix("llmem_kv_prefix_writes_total "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            if written > 0 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no prefix blocks written:\n{m}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        v
    };
    assert_eq!(
        before["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{before}"
    );
    let s = serve(&model, &["--ctx", "512", "--kv-dir", d]);
    let after = ask(&s);
    let cached = after["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt = after["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(cached > 0 && cached < prompt, "{after}");
    assert_eq!(
        after["choices"][0]["message"], before["choices"][0]["message"],
        "the answer changed after the restart"
    );
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn malformed_http_gets_4xx_and_the_server_keeps_serving() {
    let Some(model) = model() else { return };
    let s = serve(
        &model,
        &["--ctx", "256", "--client-timeout", "2", "--api-key", "k1"],
    );
    let a = &s.addr;
    let auth = "Authorization: Bearer k1";
    let ok = |what: &str| {
        let (st, _, b) = http(
            a,
            "POST",
            "/v1/completions",
            &[auth],
            br#"{"prompt": "Hello", "max_tokens": 2, "temperature": 0}"#,
        );
        assert_eq!(st, 200, "after {what}: {}", String::from_utf8_lossy(&b));
    };
    // Without the key, with a wrong one: 401 in OpenAI's shape.
    let (st, _, b) = http(a, "GET", "/v1/models", &[], b"");
    assert_eq!(st, 401);
    assert!(is_error_shape(&serde_json::from_slice(&b).unwrap()));
    let (st, _, _) = http(a, "GET", "/v1/models", &["Authorization: Bearer nope"], b"");
    assert_eq!(st, 401);
    let (st, _, _) = http(a, "GET", "/health", &[], b"");
    assert_eq!(st, 200, "health needs no key");
    // Bad JSON, wrong types, missing fields, bad values.
    for (body, what) in [
        (&b"{not json"[..], "bad JSON"),
        (br#"[1, 2]"#, "not an object"),
        (br#"{"prompt": "x", "max_tokens": "many"}"#, "wrong type"),
        (br#"{"prompt": 7}"#, "prompt of the wrong type"),
        (br#"{"max_tokens": 3}"#, "no prompt"),
        (br#"{"prompt": "x", "temperature": -3}"#, "temperature out of range"),
        (br#"{"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": {"anyOf": []}}}}"#, "unsupported schema"),
        (br#"{"prompt": [99999999]}"#, "token outside the vocabulary"),
    ] {
        let (st, _, b) = http(a, "POST", "/v1/completions", &[auth], body);
        assert_eq!(st, 400, "{what}: {}", String::from_utf8_lossy(&b));
        assert!(is_error_shape(&serde_json::from_slice(&b).unwrap()), "{what}");
    }
    ok("bad bodies");
    // A prompt longer than the context: 400, never truncated.
    let long = serde_json::json!({"prompt": "word ".repeat(400), "max_tokens": 4});
    let (st, _, b) = http(
        a,
        "POST",
        "/v1/completions",
        &[auth],
        long.to_string().as_bytes(),
    );
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    // More than 10 MB of body: 413 (declared, and sent).
    let big = vec![b' '; (10 << 20) + 10];
    let (st, _, _) = http(a, "POST", "/v1/completions", &[auth], &big);
    assert_eq!(st, 413);
    // A huge header: 431.
    let huge = format!("X-Big: {}", "a".repeat(64 << 10));
    let (st, _, _) = http(a, "GET", "/v1/models", &[auth, &huge], b"");
    assert!(st == 431 || st == 0, "huge header: {st}");
    // Unknown route, wrong method.
    assert_eq!(http(a, "GET", "/nope", &[auth], b"").0, 404);
    assert_eq!(http(a, "GET", "/v1/completions", &[auth], b"").0, 405);
    ok("oversized requests");
    // Slow clients: one that never finishes its head, one that never sends its body. Both
    // are closed after the timeout while others are served.
    let mut slow_head = TcpStream::connect(a).unwrap();
    slow_head
        .write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut slow_body = TcpStream::connect(a).unwrap();
    slow_body
        .write_all(format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Length: 100\r\n\r\n{{").as_bytes())
        .unwrap();
    ok("slow clients waiting");
    for (name, mut c) in [("head", slow_head), ("body", slow_body)] {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let t = Instant::now();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "slow {name} kept open"
        );
        let text = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || text.starts_with("HTTP/1.1 4"),
            "slow {name}: {text}"
        );
    }
    ok("slow clients closed");
    // A streaming client that goes away mid-answer cancels its sequence.
    let mut c = TcpStream::connect(a).unwrap();
    let body = r#"{"prompt": "Count to a thousand:", "max_tokens": 200, "stream": true}"#;
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 256];
    let n = c.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(c);
    let t = Instant::now();
    loop {
        let (_, _, m) = http(a, "GET", "/metrics", &[], b"");
        let m = String::from_utf8_lossy(&m);
        let cancelled = m
            .lines()
            .find_map(|l| l.strip_prefix("llmem_requests_cancelled_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if cancelled >= 1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "not cancelled:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok("a client that went away");
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn under_a_budget_for_four_sequences_64_requests_complete_or_get_503() {
    let Some(model) = model() else { return };
    let m = model.to_str().unwrap();
    let budget = plan_bytes(m, 4).to_string();
    let s = serve(
        &model,
        &[
            "--ctx",
            "4096",
            "--parallel",
            "4",
            "--queue",
            "8",
            "--budget",
            &budget,
        ],
    );
    let a = s.addr.clone();
    // A request that can never fit this budget is refused up front, saying what would.
    let (st, _, v) = post(
        &a,
        "/v1/completions",
        &serde_json::json!({"prompt": "Hello", "max_tokens": 4000}),
    );
    assert_eq!(st, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("fits at most") && msg.contains("--kv-type"),
        "{msg}"
    );
    let results: Vec<(u16, String, Value)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..64)
            .map(|i| {
                let a = a.clone();
                sc.spawn(move || {
                    post(
                        &a,
                        "/v1/completions",
                        &serde_json::json!({"prompt": format!("Story number {i}:"),
                                             "max_tokens": 12, "temperature": 0}),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (mut done, mut busy) = (0, 0);
    for (st, head, v) in &results {
        match st {
            200 => {
                done += 1;
                let c = &v["choices"][0];
                let n = v["usage"]["completion_tokens"].as_u64().unwrap();
                assert!(
                    (c["finish_reason"] == "length" && n == 12) || c["finish_reason"] == "stop",
                    "truncated: {v}"
                );
            }
            503 => {
                busy += 1;
                assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
                assert!(is_error_shape(v), "{v}");
            }
            _ => panic!("{st}: {v}"),
        }
    }
    assert!(done >= 12, "{done} completed, {busy} refused");
    assert_eq!(done + busy, 64);
    let (_, _, m) = http(&a, "GET", "/metrics", &[], b"");
    let m = String::from_utf8_lossy(&m);
    let metric = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
    };
    assert_eq!(
        metric("llmem_requests_rejected_total{reason=\"queue_full\"}"),
        f64::from(busy)
    );
    assert_eq!(metric("llmem_requests_running_peak"), 4.0);
    // The process's peak resident set stays within the budget (+5%).
    #[cfg(target_os = "linux")]
    assert_rss_within(s.child.id(), budget.parse().unwrap());
    assert_eq!(
        metric("llmem_time_to_first_token_seconds_count"),
        f64::from(done)
    );
    assert!(metric("llmem_process_rss_bytes") > 0.0);
    assert!(
        m.contains("llmem_ledger_pool_used_bytes{pool=\"kv\"}"),
        "{m}"
    );
    assert!(m.contains("llmem_kv_bytes{tier=\"hot\"}"));
}

/// The Python with `openai` and `jsonschema`: `LLMEM_TEST_PYTHON`, or `python3`.
fn python() -> Option<String> {
    let py = std::env::var("LLMEM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import openai, jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

#[test]
#[cfg_attr(
    not(all(llmem_openai, llmem_model)),
    ignore = "needs the model (scripts/fetch-model.sh) and a Python with openai and \
              jsonschema (LLMEM_TEST_PYTHON)"
)]
fn the_openai_python_client_passes_end_to_end() {
    let Some(py) = python() else {
        panic!("no Python with openai and jsonschema: LLMEM_TEST_PYTHON names one (CI sets it up)");
    };
    let Some(model) = model() else { return };
    let s = serve(&model, &["--ctx", "1024", "--api-key", "sk-test"]);
    // Tool calls need a template with tools: Qwen2.5, where it is present.
    let tools = option_env!("LLMEM_MODEL_QWEN05")
        .map(|q| serve(Path::new(q), &["--ctx", "1024", "--api-key", "sk-test"]));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/serve_openai.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(format!("http://{}", s.addr))
        .arg("sk-test")
        .args(tools.iter().map(|t| format!("http://{}", t.addr)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the openai client's checks failed:\n{text}"
    );
}

/// The short version of the load bench (`bench/serve_load.py`; the long one and the
/// comparison with llama-server are `bench/serve_vs_llama_server.sh`): 32 concurrent
/// streaming clients for 30 s, every request answered and every stream ended with its
/// finish reason and `[DONE]`.
#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn thirty_two_streaming_clients_for_30_s_get_every_stream_whole() {
    let Some(model) = model() else { return };
    let s = serve(
        &model,
        &["--ctx", "512", "--parallel", "32", "--queue", "64"],
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/serve_load.py");
    let py = std::env::var("LLMEM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&py)
        .arg(&script)
        .args(["--url", &format!("http://{}", s.addr)])
        .args([
            "--clients",
            "32",
            "--seconds",
            "30",
            "--max-tokens",
            "32",
            "--json",
        ])
        .output()
        .expect("run bench/serve_load.py");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(&text).expect("the load script's JSON report");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["dropped_streams"], 0, "{r}");
    assert!(r["requests"].as_u64().unwrap() >= 32, "{r}");
    assert!(r["generated_tokens"].as_u64().unwrap() > 0, "{r}");
    assert!(out.status.success());
}

/// What `llmem plan` says model `m` needs for `seqs` sequences of 256 tokens.
fn plan_bytes(m: &str, seqs: usize) -> u64 {
    let seqs = seqs.to_string();
    let plan = json_of(&llmem(&[
        "plan",
        "--model",
        m,
        "--ctx",
        "256",
        "--seqs",
        &seqs,
        "--threads",
        "2",
        "--json",
    ]));
    plan["total_bytes"].as_u64().unwrap()
}

/// Process `pid`'s peak resident set stays within `budget` + 5% (Linux).
#[cfg(target_os = "linux")]
fn assert_rss_within(pid: u32, budget: u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let peak = kib * 1024;
    eprintln!("peak RSS {peak} of budget {budget}");
    assert!(
        peak <= budget + budget / 20,
        "peak RSS {peak} B over the budget {budget} B + 5%"
    );
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn two_models_under_a_budget_for_one_swap_and_answer_as_each_alone() {
    let Some(model) = model() else { return };
    let m = model.to_str().unwrap();
    let budget = plan_bytes(m, 2);
    // The same file under two names: two models of one model's size each, so the
    // answers through either must equal the model's answer alone.
    let (a_arg, b_arg) = (format!("a={m}"), format!("b={m}"));
    let s = serve(
        Path::new(&a_arg),
        &[
            "--model",
            &b_arg,
            "--ctx",
            "256",
            "--parallel",
            "2",
            "--budget",
            &budget.to_string(),
            "--keep-alive",
            "-1",
        ],
    );
    let a = s.addr.clone();
    let ask = |name: &str| -> String {
        let (st, _, v) = post(
            &a,
            "/v1/completions",
            &serde_json::json!({"model": name, "prompt": "The capital of France is",
                                 "max_tokens": 8, "temperature": 0}),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["model"], name);
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let loaded = || -> Vec<String> {
        let (st, _, b) = http(&a, "GET", "/api/ps", &[], b"");
        assert_eq!(st, 200);
        let v: Value = serde_json::from_slice(&b).unwrap();
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(loaded(), ["a"]);
    let alone = ask("a");
    for name in ["b", "a", "b", "a"] {
        assert_eq!(ask(name), alone, "{name}'s answer changed after a swap");
        assert_eq!(loaded(), [name], "only the model asked for stays loaded");
    }
    // /v1/models lists both, saying which is loaded.
    let (_, _, b) = http(&a, "GET", "/v1/models", &[], b"");
    let v: Value = serde_json::from_slice(&b).unwrap();
    let listed: Vec<(String, bool)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap().into(), m["loaded"] == true))
        .collect();
    assert_eq!(listed, [("a".into(), true), ("b".into(), false)]);
    // An unknown model is a 404 in OpenAI's shape.
    let (st, _, v) = post(
        &a,
        "/v1/completions",
        &serde_json::json!({"model": "gpt-4", "prompt": "x"}),
    );
    assert_eq!(st, 404, "{v}");
    assert_eq!(v["error"]["code"], "model_not_found");
    // keep_alive 0: unloaded once its request ends.
    let (st, _, v) = post(
        &a,
        "/v1/embeddings",
        &serde_json::json!({"model": "b", "input": "hello", "keep_alive": 0}),
    );
    assert_eq!(st, 200, "{v}");
    let t = Instant::now();
    while !loaded().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", loaded());
        std::thread::sleep(Duration::from_millis(50));
    }
    // llmem ps and llmem monitor --attach read the same server.
    ask("a");
    let url = format!("http://{a}");
    let ps = llmem(&["ps", "--url", &url]);
    let text = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.status.success() && text.contains("forever"), "{text}");
    assert!(text.lines().nth(1).unwrap().starts_with("a "), "{text}");
    let st = json_of(&llmem(&["monitor", "--attach", &url, "--once", "--json"]));
    assert_eq!(st["models"][0]["loaded"], true);
    assert_eq!(st["models"][1]["loaded"], false);
    assert!(st["ledger"]["pools"].as_array().unwrap().len() >= 3, "{st}");
    assert_eq!(st["sequences_running"], 0);
    assert!(st["kv_tier_bytes"]["hot"].is_u64(), "{st}");
    let text = llmem(&["monitor", "--attach", &url, "--once"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("ledger"));
    let bad = llmem(&["ps", "--url", "http://127.0.0.1:1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot reach"));
    #[cfg(target_os = "linux")]
    assert_rss_within(s.child.id(), budget);
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn monitor_attach_live_view_in_tmux_follows_the_server_and_quits() {
    let Some(tmux_bin) = external_tool("tmux", &["/usr/bin/tmux"]) else {
        return;
    };
    let Some(model) = model() else { return };
    let s = serve(&model, &["--ctx", "2048"]);
    let url = format!("http://{}", s.addr);
    let tmux = Tmux::new(tmux_bin, "attach");
    tmux.start_llmem(&format!("monitor --attach {url} --interval-ms 200"));
    let (shown, screen) = tmux.wait_for(Duration::from_secs(15), |s| {
        s.contains("attached to") && s.contains("0 running") && s.contains("q quits")
    });
    assert!(shown, "attach view not drawn:\n{screen}");
    for needle in ["ledger ", "weights", "kv ", "MODEL", "yes"] {
        assert!(screen.contains(needle), "{needle:?} missing in:\n{screen}");
    }
    assert!(
        screen.lines().all(|l| l.chars().count() <= 80),
        "wider than 80 columns:\n{screen}"
    );
    // A long request shows up as a running sequence, live.
    let addr = s.addr.clone();
    let long = std::thread::spawn(move || {
        let body = serde_json::json!({"prompt": "Once upon a time", "max_tokens": 1500,
                                      "temperature": 0.8, "seed": 1});
        http(
            &addr,
            "POST",
            "/v1/completions",
            &["Content-Type: application/json"],
            body.to_string().as_bytes(),
        )
    });
    let (running, screen) = tmux.wait_for(Duration::from_secs(15), |s| s.contains("1 running"));
    assert!(running, "the running request never showed:\n{screen}");
    let out = tmux.cmd(&["send-keys", "-t", "m", "q"]);
    assert!(out.status.success());
    let (exited, screen) = tmux.wait_for(Duration::from_secs(10), |s| s.contains("llmem-exit="));
    assert!(
        exited,
        "llmem monitor --attach did not quit on q:\n{screen}"
    );
    assert!(screen.contains("llmem-exit=0"), "{screen}");
    assert!(
        !screen.contains("attached to"),
        "terminal not restored:\n{screen}"
    );
    drop(s);
    let _ = long.join();
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn a_real_prometheus_scrapes_the_servers_counters_and_ledger() {
    let Some(prometheus) = external_tool("prometheus", &["/usr/bin/prometheus"]) else {
        return;
    };
    let Some(model) = model() else { return };
    let s = serve(&model, &["--ctx", "256"]);
    for i in 0..3 {
        let (st, _, v) = post(
            &s.addr,
            "/v1/completions",
            &serde_json::json!({"prompt": format!("Count {i}:"), "max_tokens": 2}),
        );
        assert_eq!(st, 200, "{v}");
    }
    let (dir, mut prom, web) = start_prometheus(&prometheus, &s.addr, "llmem-serve");
    let query = |q: &str| -> Option<Vec<Value>> {
        let r = get(web, &format!("/api/v1/query?query={q}")).ok()?;
        let v: Value = serde_json::from_str(&r.body).ok()?;
        v["data"]["result"].as_array().cloned()
    };
    let value = |r: &Value| -> f64 { r["value"][1].as_str().unwrap().parse().unwrap() };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = prom.exited() {
            let log = std::fs::read_to_string(dir.path().join("prometheus.log"));
            panic!("prometheus exited ({status}):\n{}", log.unwrap_or_default());
        }
        let requests = query("llmem_http_requests_total");
        let pools = query("llmem_ledger_pool_used_bytes");
        if let (Some(r), Some(p)) = (requests, pools)
            && r.first().is_some_and(|r| value(r) >= 3.0)
        {
            let names: Vec<&str> = p
                .iter()
                .filter_map(|x| x["metric"]["pool"].as_str())
                .collect();
            assert!(
                names.contains(&"weights") && names.contains(&"kv"),
                "{names:?}"
            );
            let w = p.iter().find(|x| x["metric"]["pool"] == "weights").unwrap();
            assert!(value(w) > 0.0, "{w}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had the server's counters"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The exposition passes promtool's lint, when it is there.
    if let Some(promtool) = external_tool("promtool", &["/usr/bin/promtool"]) {
        let (_, _, body) = http(&s.addr, "GET", "/metrics", &[], b"");
        let mut c = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(&body).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
