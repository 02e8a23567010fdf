//! Running `llmem` as a child whose end is watched: exit code or signal, wall time (killed
//! past a deadline), and peak resident memory from `wait4`'s rusage. Shared by the hostile
//! input tests and the flag fuzzer.
//!
//! Peak RSS rather than an address-space limit (`RLIMIT_AS`): the mapped model file, the
//! thread stacks and the allocator's arenas reserve address space that is never touched,
//! so a limit on it would fail healthy runs; RSS counts the pages actually held, mapped
//! model pages included (they are charged to the process when read).

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_llmem");

/// How a child ended.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did (SIGABRT for an abort, SIGKILL past the
    /// deadline).
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub timed_out: bool,
    /// Peak resident set of the child, bytes (`ru_maxrss`).
    pub max_rss_bytes: u64,
}

impl Outcome {
    /// A one-line description for assertion messages.
    pub fn describe(&self, args: &[&str]) -> String {
        let tail: String = self
            .stderr
            .chars()
            .rev()
            .take(400)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!(
            "llmem {}: code {:?}, signal {:?}, {:.2} s{}, peak RSS {} MiB, stderr: {tail}",
            args.join(" "),
            self.code,
            self.signal,
            self.elapsed.as_secs_f64(),
            if self.timed_out {
                " (killed at the deadline)"
            } else {
                ""
            },
            self.max_rss_bytes >> 20
        )
    }
}

/// Runs `llmem args` with stdin closed and `cache` as its user cache directory, killing it
/// at `deadline`.
pub fn run(args: &[&str], cache: &Path, deadline: Duration) -> Outcome {
    run_with(args, cache, deadline, Stdio::piped())
}

/// As [`run`], with `stdout` given (a pipe whose reader is gone, say).
pub fn run_with(args: &[&str], cache: &Path, deadline: Duration, stdout: Stdio) -> Outcome {
    let start = Instant::now();
    // Reaped by `wait4` below, which `Child::wait` cannot do: it drops the rusage.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(BIN)
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("llmem starts");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        // SAFETY: `pid` is our child, not yet reaped (only this loop waits for it);
        // `status` and `usage` are valid for writes.
        let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if got == pid {
            break;
        }
        assert!(got == 0, "wait4: {}", std::io::Error::last_os_error());
        if start.elapsed() > deadline && !timed_out {
            timed_out = true;
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = start.elapsed();
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    Outcome {
        code,
        signal,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        elapsed,
        timed_out,
        max_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
    }
}

/// A pipe whose read end is already closed: the first write to it fails with EPIPE.
pub fn closed_pipe() -> Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: fds[0] is the read end just created and owned by nobody else.
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is the write end just created; the Stdio takes ownership of it.
    unsafe { Stdio::from_raw_fd(fds[1]) }
}

/// A directory for this test binary's files, emptied and made once per run.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(env!("CARGO_CRATE_NAME"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cache")).expect("scratch dir");
        dir
    })
}

/// The user cache directory the children get (kept apart from the real one).
pub fn cache() -> PathBuf {
    scratch().join("cache")
}

/// Writes `bytes` to `name` in the scratch directory and returns its path as text.
pub fn write(name: &str, bytes: &[u8]) -> String {
    let path = scratch().join(name);
    std::fs::write(&path, bytes).expect("write a test file");
    path.to_str().expect("UTF-8 path").to_owned()
}

/// The tiny synthetic model (2 layers, d 64, 256-token training context, q8_0), written
/// once.
pub fn tiny_model() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let model = testkit::tiny_llama(&testkit::TinyLlamaConfig {
            weight_type: testkit::WeightType::Q8_0,
            ..testkit::TinyLlamaConfig::default()
        });
        write("tiny.gguf", &model.bytes)
    })
}

/// A few hundred bytes of text for `bench kv --text`.
pub fn tiny_text() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let text = "The cat sat on the mat. He was in the hall with the ring. ".repeat(40);
        write("text.txt", text.as_bytes())
    })
}
