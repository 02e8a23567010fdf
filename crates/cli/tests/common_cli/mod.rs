//! Helpers the binary's tests share: running llmem, the real model, temporary folders
//! and child processes that clean up, HTTP exchanges.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

pub use std::io::{BufRead, BufReader, Read, Write};
pub use std::net::{SocketAddr, TcpListener, TcpStream};
pub use std::path::{Path, PathBuf};
pub use std::process::{Child, Command, Output, Stdio};
pub use std::sync::atomic::{AtomicUsize, Ordering};
pub use std::sync::mpsc;
pub use std::time::{Duration, Instant};

pub use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_llmem");
pub const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../probe/health-report.schema.json"
);
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// ---------------------------------------------------------------------------------------
// Helpers

pub fn llmem(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run llmem")
}

/// [`llmem`] with the user's cache directory (where measured rates are saved) at `cache`.
pub fn llmem_cached(cache: &std::path::Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::null())
        .output()
        .expect("run llmem")
}

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default model, fetched by the project's script (skips outside CI when offline).
pub fn model() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(root().join("scripts/fetch-model.sh"))
        .output();
    match out {
        Ok(o) if o.status.success() => {
            Some(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        }
        other => {
            assert!(
                std::env::var_os("CI").is_none(),
                "could not fetch the model: {other:?}"
            );
            eprintln!("SKIPPED: could not fetch the model: {other:?}");
            None
        }
    }
}

/// The JSON a successful run printed.
pub fn json_of(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "llmem failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("llmem-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped on drop, so a failing test leaves nothing running.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
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
pub fn external_tool(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
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
pub fn meminfo_total_bytes() -> u64 {
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// A response: status, head (status line and headers), body.
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends `request` as is and reads the whole response (the server closes after one).
/// A write the server cut short is not an error here: what it answered is what counts.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Response> {
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

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(addr, request.as_bytes())
}

/// `llmem monitor --headless --prometheus 127.0.0.1:0`, with the address it bound (it
/// prints it on stderr).
pub fn start_headless() -> (ChildGuard, SocketAddr) {
    let (child, addr, _) = start_headless_on("127.0.0.1:0");
    (child, addr)
}

/// `llmem monitor --headless --prometheus BIND`, the address it bound, and the lines it
/// printed on stderr up to the one naming that address.
pub fn start_headless_on(bind: &str) -> (ChildGuard, SocketAddr, Vec<String>) {
    let mut child = ChildGuard(
        Command::new(BIN)
            .args([
                "monitor",
                "--headless",
                "--interval-ms",
                "250",
                "--prometheus",
                bind,
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
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no address printed by llmem monitor: {e} ({seen:?})"));
        if let Some(rest) = line.split("http://").nth(1) {
            let addr = rest
                .trim_end_matches("/metrics")
                .parse()
                .expect("an address");
            seen.push(line);
            return (child, addr, seen);
        }
        seen.push(line);
    }
}

/// A real Prometheus scraping `target` (host:port) every second as job `job`, with its
/// web API on a free loopback port; its data and log (`prometheus.log`) in the returned
/// folder.
pub fn start_prometheus(
    prometheus: &Path,
    target: &str,
    job: &str,
) -> (TempDir, ChildGuard, SocketAddr) {
    let dir = TempDir::new("prometheus");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      \
             - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = ChildGuard(
        Command::new(prometheus)
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
    (dir, child, web)
}

// ---------------------------------------------------------------------------------------
// A real terminal

/// A tmux server of our own (its own socket), killed on drop.
pub struct Tmux {
    bin: PathBuf,
    socket: String,
}

impl Tmux {
    pub fn new(bin: PathBuf, tag: &str) -> Self {
        let socket = format!("llmem-test-{}-{tag}", std::process::id());
        Self { bin, socket }
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null())
            .output()
            .expect("run tmux")
    }

    /// Runs `llmem ARGS` in a detached 80×24 session "m"; the shell then prints
    /// `llmem-exit=STATUS` on the normal screen (once a view has left the alternate one)
    /// and keeps the pane open to be captured.
    pub fn start_llmem(&self, args: &str) {
        let shell = format!("'{BIN}' {args}; echo llmem-exit=$?; sleep 60");
        let out = self.cmd(&[
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
    }

    pub fn capture(&self) -> String {
        stdout_of(&self.cmd(&["capture-pane", "-p", "-t", "m"]))
    }

    /// Captures until `done` holds, or gives up after `limit` with the last capture.
    pub fn wait_for(&self, limit: Duration, done: impl Fn(&str) -> bool) -> (bool, String) {
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
