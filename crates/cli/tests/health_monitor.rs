//! End-to-end tests of `llmem health` and `llmem monitor`: the JSON report against its
//! schema, the plain snapshot, the live view in a real terminal (tmux), the metrics
//! endpoint under hostile input, and a real Prometheus scraping it.
//!
//! tmux and Prometheus (Debian's `prometheus`) are external programs. Where one is missing
//! the test says so and passes, except under CI (`CI` set), where it fails: CI installs
//! both.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_llmem");
const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../probe/health-report.schema.json"
);
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// ---------------------------------------------------------------------------------------
// Helpers

fn llmem(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run llmem")
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("llmem-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped on drop, so a failing test leaves nothing running.
struct ChildGuard(Child);

impl ChildGuard {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().expect("try_wait")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The program `name` from PATH or one of `fallbacks`. Missing: `None` after saying why,
/// or a failure under CI.
fn external_tool(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    let found = on_path.or_else(|| fallbacks.iter().map(PathBuf::from).find(|p| p.is_file()));
    if found.is_none() {
        let why = format!("`{name}` not found on PATH or at {fallbacks:?}");
        assert!(
            std::env::var_os("CI").is_none(),
            "{why}; CI must install it (apt-get install -y tmux prometheus)"
        );
        eprintln!("skipped: {why}");
    }
    found
}

#[cfg(target_os = "linux")]
fn meminfo_total_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    let line = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .expect("MemTotal line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("MemTotal value");
    kib * 1024
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// A response: status, head (status line and headers), body.
struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends `request` as is and reads the whole response (the server closes after one).
/// A write the server cut short is not an error here: what it answered is what counts.
fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    // A reset after the response arrived still leaves the response in `raw`.
    let read = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        read?;
        return Err(std::io::Error::other("closed without a response"));
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
    Ok(Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(addr, request.as_bytes())
}

/// `llmem monitor --headless --prometheus 127.0.0.1:0`, with the address it bound (it
/// prints it on stderr).
fn start_headless() -> (ChildGuard, SocketAddr) {
    let mut child = ChildGuard(
        Command::new(BIN)
            .args([
                "monitor",
                "--headless",
                "--interval-ms",
                "250",
                "--prometheus",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn llmem monitor --headless"),
    );
    let stderr = child.0.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no address printed by llmem monitor: {e}"));
        if let Some(rest) = line.split("http://").nth(1) {
            let addr = rest
                .trim_end_matches("/metrics")
                .parse()
                .expect("an address");
            return (child, addr);
        }
    }
}

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
    // (weights + KV ≥ 90 % of memory) fires.
    let out = llmem(&[
        "health",
        "--json",
        "--model",
        path,
        "--ctx",
        "1099511627776",
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
    assert!(kinds.contains(&"lazy_weights"), "{kinds:?}");
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

/// A tmux server of our own (its own socket), killed on drop.
struct Tmux {
    bin: PathBuf,
    socket: String,
}

impl Tmux {
    fn new(bin: PathBuf, tag: &str) -> Self {
        let socket = format!("llmem-test-{}-{tag}", std::process::id());
        Self { bin, socket }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null())
            .output()
            .expect("run tmux")
    }

    fn capture(&self) -> String {
        stdout_of(&self.cmd(&["capture-pane", "-p", "-t", "m"]))
    }

    /// Captures until `done` holds, or gives up after `limit` with the last capture.
    fn wait_for(&self, limit: Duration, done: impl Fn(&str) -> bool) -> (bool, String) {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.capture();
            if done(&screen) {
                return (true, screen);
            }
            if Instant::now() >= deadline {
                return (false, screen);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn monitor_live_view_in_tmux_shows_pools_and_pressure_and_quits() {
    let Some(tmux_bin) = external_tool("tmux", &["/usr/bin/tmux"]) else {
        return;
    };
    // q and Ctrl-C (raw mode delivers it as a key) both quit and restore the terminal.
    for (tag, key) in [("q", "q"), ("ctrl-c", "C-c")] {
        let tmux = Tmux::new(tmux_bin.clone(), tag);
        // The shell prints the exit status on the normal screen once the view has left
        // the alternate one, and keeps the pane open to be captured.
        let shell = format!("'{BIN}' monitor; echo llmem-exit=$?; sleep 60");
        let out = tmux.cmd(&[
            "new-session",
            "-d",
            "-s",
            "m",
            "-x",
            "80",
            "-y",
            "24",
            &shell,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

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

// ---------------------------------------------------------------------------------------
// The metrics endpoint

#[test]
fn metrics_endpoint_serves_prometheus_text_and_survives_malformed_requests() {
    let (mut server, addr) = start_headless();

    let ok = get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(ok.status, 200, "{}", ok.head);
    assert_eq!(ok.header("content-type"), Some(PROMETHEUS_CONTENT_TYPE));
    assert_eq!(
        ok.header("content-length").and_then(|v| v.parse().ok()),
        Some(ok.body.len())
    );
    assert!(
        ok.body.contains("# TYPE llmem_mem_total_bytes gauge"),
        "{}",
        ok.body
    );
    #[cfg(target_os = "linux")]
    assert!(
        ok.body
            .lines()
            .any(|l| l == format!("llmem_mem_total_bytes {}", meminfo_total_bytes())),
        "{}",
        ok.body
    );
    assert!(ok.body.contains("llmem_pressure_ratio "), "{}", ok.body);

    // A client that connects and sends nothing must not hold up the others.
    let idle = TcpStream::connect(addr).unwrap();

    let huge_header = {
        let mut r = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        r.extend(std::iter::repeat_n(b'a', 256 * 1024));
        r.extend_from_slice(b"\r\n\r\n");
        r
    };
    let cases: [(&str, Vec<u8>, &[u16]); 9] = [
        (
            "wrong method",
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            &[405],
        ),
        (
            "unknown path",
            b"GET /secrets HTTP/1.1\r\n\r\n".to_vec(),
            &[404],
        ),
        (
            "garbage line",
            b"\x00\x01\x02 garbage\xff\r\n\r\n".to_vec(),
            &[400],
        ),
        ("no version", b"GET /metrics\r\n\r\n".to_vec(), &[400]),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            &[400],
        ),
        ("huge header", huge_header, &[431]),
        ("truncated head", b"GET /metr".to_vec(), &[400]),
        ("empty", Vec::new(), &[]),
        ("bare newlines", b"\n\n".to_vec(), &[400]),
    ];
    for (name, request, allowed) in cases {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(&request);
        // Half-close: the server sees the end of what we send (the truncated head and the
        // empty request end there).
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        if raw.is_empty() {
            // A closed connection is an allowed answer to nonsense, never to a real request.
            assert!(
                allowed.is_empty() || name == "huge header",
                "{name}: closed without a response"
            );
        } else {
            let status: u16 = text
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{name}: no status in {text:?}"));
            assert!(
                allowed.contains(&status),
                "{name}: got {status}, want {allowed:?}"
            );
            if status == 405 {
                assert!(text.contains("Allow: GET, HEAD"), "{text}");
            }
        }
        assert!(server.exited().is_none(), "server died after {name}");
    }

    // HEAD has the headers and no body.
    let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    // Many at once: all answered (or, past the connection cap, closed), none fatal.
    let burst: Vec<_> = (0..40)
        .map(|_| std::thread::spawn(move || get(addr, "/metrics").map(|r| r.status)))
        .collect();
    let answered = burst
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|r| matches!(r, Ok(200)))
        .count();
    assert!(answered >= 1);

    drop(idle);
    let after = get(addr, "/metrics").expect("a good request after the bad ones");
    assert_eq!(after.status, 200);
    assert!(after.body.contains("llmem_mem_total_bytes"));
    assert!(server.exited().is_none());
}

#[test]
fn a_real_prometheus_scrapes_the_endpoint_without_errors() {
    let Some(prometheus) = external_tool("prometheus", &["/usr/bin/prometheus"]) else {
        return;
    };
    let (_llmem, target) = start_headless();
    let dir = TempDir::new("prometheus");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: llmem\n    static_configs:\n      \
             - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut server = ChildGuard(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let log_text =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    // The target is up and its last scrape had no error.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("no answer from Prometheus");
    let up = loop {
        if let Some(status) = server.exited() {
            panic!("prometheus exited ({status}):\n{}", log_text());
        }
        if let Ok(r) = get(web, "/api/v1/targets") {
            let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
            let found = v["data"]["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["labels"]["job"] == "llmem")
                .cloned();
            if let Some(t) = found {
                if t["health"] == "up" && t["lastError"] == "" {
                    break t;
                }
                last = t.to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "target never up: {last}\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(up["scrapeUrl"], format!("http://{target}/metrics"));

    // And the scraped value is queryable, equal to what the kernel says.
    let value = loop {
        if let Ok(r) = get(web, "/api/v1/query?query=llmem_mem_total_bytes") {
            let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
            if let Some(s) = v["data"]["result"][0]["value"][1].as_str() {
                break s.parse::<f64>().expect("a number");
            }
            last = r.body;
        }
        assert!(
            Instant::now() < deadline,
            "no value: {last}\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(value > 0.0);
    #[cfg(target_os = "linux")]
    assert_eq!(value as u64, meminfo_total_bytes());
}
