//! A budget equal to `llmem plan`'s total holds in resident memory, for every KV type and
//! thread count (issue 13, finding 4), and `--threads` is checked, capped or refused, never
//! silently changed (findings 4 and 9).

mod common_cli;

use common_cli::*;

/// A context small enough for CI, filled most of the way by the prompt (the prompt's
/// micro-batch buffers reach their planned size) and the rest by generation.
const CTX: usize = 512;
/// About 420 tokens of the evaluation text.
const PROMPT_CHARS: usize = 1_900;
const KV_TYPES: [&str; 6] = kvcache::KvType::NAMES;

/// What `llmem plan` says a configuration needs, in bytes.
fn plan_total(model: &str, kv: &str, threads: &str) -> u64 {
    let ctx = CTX.to_string();
    let p = json_of(&llmem(&[
        "plan",
        "--model",
        model,
        "--ctx",
        &ctx,
        "--kv-type",
        kv,
        "--threads",
        threads,
        "--threads-oversubscribe",
        "--json",
    ]));
    p["total_bytes"].as_u64().expect("total_bytes")
}

/// Runs `llmem args…` to the end and returns its JSON report and the peak resident size the
/// kernel recorded for the whole process (`wait4`'s `ru_maxrss`), in bytes.
// The child is reaped by `wait4` (which `Child::wait` cannot do: it returns no rusage).
#[allow(clippy::zombie_processes)]
fn run_measured(args: &[&str]) -> (Value, u64) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run llmem");
    let pid = i32::try_from(child.id()).expect("a pid");
    // Read the pipes before reaping, so a full pipe cannot block the child.
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            pipe.read_to_end(&mut buf).map(|_| buf)
        })
    };
    let out = reader(Box::new(stdout.expect("stdout piped")));
    let err = reader(Box::new(stderr.expect("stderr piped")));
    let mut status = 0;
    // SAFETY: `rusage` is plain data, valid all zeros. wait4 reaps our own child, which
    // nothing else waits for (`child` is only dropped afterwards, which does not wait).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers are to locals that outlive the call.
    let reaped = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let out = out.join().unwrap().expect("stdout");
    let err = err.join().unwrap().expect("stderr");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "llmem {args:?} failed ({status}): {}",
        String::from_utf8_lossy(&err)
    );
    let report: Value = serde_json::from_slice(&out).expect("JSON on stdout");
    // Linux reports ru_maxrss in KiB.
    let max_rss = u64::try_from(usage.ru_maxrss).expect("a size") * 1024;
    (report, max_rss)
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn finding4_a_budget_equal_to_the_plan_is_never_exceeded_in_peak_rss() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    let dir = TempDir::new("budget-rss");
    let prompt = dir.path().join("prompt.txt");
    let text = std::fs::read_to_string(root().join("testdata/eval/licenses.txt")).unwrap();
    std::fs::write(&prompt, &text[..PROMPT_CHARS]).unwrap();
    let prompt = prompt.to_str().unwrap();
    let ctx = CTX.to_string();
    let mut rows = Vec::new();
    for threads in ["1", "2", "64"] {
        for kv in KV_TYPES {
            let budget = plan_total(m, kv, threads);
            let budget_arg = budget.to_string();
            let (r, max_rss) = run_measured(&[
                "run",
                "--model",
                m,
                "--raw",
                "--prompt-file",
                prompt,
                "--ctx",
                &ctx,
                "--max-tokens",
                "100000",
                "--ignore-eos",
                "--kv-type",
                kv,
                "--threads",
                threads,
                "--threads-oversubscribe",
                "--budget",
                &budget_arg,
                "--json",
            ]);
            let what = format!("{kv}, {threads} threads");
            assert_eq!(
                r["stop_reason"], "ctx",
                "{what}: the run must fill its context"
            );
            let prompt_tokens = r["prompt_token_ids"].as_array().unwrap().len();
            assert!(
                prompt_tokens * 4 >= CTX * 3,
                "{what}: a {prompt_tokens}-token prompt fills too little of {CTX}"
            );
            assert_eq!(r["ledger"]["plan_total_bytes"].as_u64(), Some(budget));
            let vm_hwm = r["memory"]["peak_rss_bytes"].as_u64().expect("VmHWM");
            let peak = max_rss.max(vm_hwm);
            rows.push(format!(
                "{what}: budget {budget}, peak RSS {peak} ({:.1}% of it)",
                100.0 * peak as f64 / budget as f64
            ));
            assert!(
                peak <= budget,
                "{what}: peak RSS {peak} over the budget {budget} by {} bytes",
                peak - budget
            );
        }
    }
    eprintln!("{}", rows.join("\n"));
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn finding4_threads_beyond_the_cpus_are_capped_with_a_warning() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get();
    let runtime = |threads: &str, extra: &[&str]| {
        let mut args = vec!["plan", "--model", m, "--ctx", "512", "--threads", threads];
        args.extend_from_slice(extra);
        args.push("--json");
        let o = llmem(&args);
        let warnings = String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| l.contains("warning"))
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let report = json_of(&o);
        assert_eq!(
            report["threads"].as_u64(),
            Some(if extra.is_empty() {
                threads.parse::<u64>().unwrap().min(cpus as u64)
            } else {
                threads.parse().unwrap()
            })
        );
        (report["runtime_bytes"].as_u64().unwrap(), warnings)
    };
    let (at_cpus, quiet) = runtime(&cpus.to_string(), &[]);
    assert!(quiet.is_empty(), "{quiet:?}");
    let (capped, warned) = runtime("512", &[]);
    assert_eq!(
        capped, at_cpus,
        "512 threads are planned as the {cpus} CPUs"
    );
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("512") && warned[0].contains("--threads-oversubscribe"),
        "{warned:?}"
    );
    // Asked for: run and planned as given, each thread's stack counted.
    let (over, quiet) = runtime("512", &["--threads-oversubscribe"]);
    assert!(quiet.is_empty(), "{quiet:?}");
    assert!(
        over >= at_cpus + (512 - cpus as u64) * 256 * 1024,
        "{over} vs {at_cpus}"
    );
    // The override needs a count to apply to.
    let o = llmem(&["plan", "--model", m, "--threads-oversubscribe"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn finding9_threads_zero_is_an_input_error_in_every_command() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    for args in [
        &["run", "--model", m, "--prompt", "hi"][..],
        &["plan", "--model", m],
        &["bench", "infer", "--model", m],
        &["bench", "kv", "--model", m],
        &["bench", "memory"],
    ] {
        for bad in ["0", "-1", "1025", "many"] {
            let flag = format!("--threads={bad}");
            let mut a = args.to_vec();
            a.push(&flag);
            let o = llmem(&a);
            assert_eq!(o.status.code(), Some(2), "{a:?}");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("--threads"), "{a:?}: {err}");
            assert!(o.stdout.is_empty(), "{a:?}: ran anyway");
        }
    }
}
