//! `llmem qa`: documents to question/answer pairs, in bounded memory, exactly once.
//!
//! - `--no-generate` chunks, hashes and journals a whole corpus of every format, skipping
//!   what it cannot read; its peak RSS does not grow with the corpus, and the documents
//!   pool never goes over its limit.
//! - Killed (`kill -9`) or interrupted (SIGINT) at random moments and run again, it ends
//!   with exactly the records of one uninterrupted run: none lost, none twice.
//! - With the model: every line validates against its format, and the same holds for a
//!   generating run killed and resumed.

mod common_cli;

use common_cli::*;

/// A deterministic corpus of `bytes` of English-like text in paragraphs, every sentence
/// different (so no two chunks are equal).
fn prose(bytes: usize, seed: u64) -> String {
    const WORDS: &[&str] = &[
        "license",
        "software",
        "copy",
        "source",
        "code",
        "rights",
        "holder",
        "terms",
        "permission",
        "distribute",
        "modify",
        "work",
        "notice",
        "warranty",
        "patent",
        "user",
        "program",
        "condition",
        "derivative",
        "grant",
        "party",
        "law",
        "version",
        "file",
        "binary",
        "free",
        "public",
        "general",
        "contributor",
        "agreement",
    ];
    let mut s = String::with_capacity(bytes + 256);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut n = 0u64;
    while s.len() < bytes {
        n += 1;
        s.push_str(&format!("Clause {n}: The"));
        for _ in 0..12 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push(' ');
            s.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        }
        s.push_str(". ");
        if n.is_multiple_of(5) {
            s.push_str("\n\n");
        }
    }
    s
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Lines of a file as a sorted list, after checking no record id appears twice.
fn records(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ids = std::collections::HashSet::new();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        let id = v
            .get("id")
            .or_else(|| v.get("meta").and_then(|m| m.get("id")))
            .and_then(Value::as_str)
            .unwrap()
            .to_string();
        assert!(ids.insert(id.clone()), "record {id} written twice");
    }
    lines.sort();
    lines
}

/// Runs `llmem qa` to the end; returns its JSON report.
fn qa(args: &[&str]) -> Value {
    let mut all = vec!["qa", "--json"];
    all.extend_from_slice(args);
    json_of(&llmem(&all))
}

/// Runs `args` again and again, each run stopped by `signal` after a random delay (up to
/// `max_delay`), until one finishes on its own; returns how many were stopped.
fn stop_and_resume(
    args: &[String],
    signal: i32,
    runs: usize,
    max_delay: Duration,
    seed: u64,
) -> usize {
    let mut x = seed | 1;
    let mut stopped = 0;
    for _ in 0..runs {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Anywhere from the model's loading to most of a whole run.
        let span = (max_delay.as_millis() as u64 * 3 / 4).max(1);
        let delay = Duration::from_millis(20 + x % span);
        let mut child = Command::new(BIN)
            .arg("qa")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        let mut finished = None;
        while t.elapsed() < delay {
            if let Some(s) = child.try_wait().unwrap() {
                finished = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if finished.is_some() {
            eprintln!("run finished before {delay:?}");
            continue;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        if signal == libc::SIGINT {
            // Interrupted cleanly (130), or it had just finished (0).
            assert!(
                matches!(status.code(), Some(130 | 0)),
                "SIGINT ended it with {status:?}"
            );
        } else {
            assert!(status.signal() == Some(signal) || status.code() == Some(0));
        }
        stopped += 1;
    }
    stopped
}

fn corpus(dir: &Path) -> PathBuf {
    let c = dir.join("corpus");
    std::fs::create_dir_all(c.join("sub")).unwrap();
    write(&c.join("a.txt"), &prose(40_000, 1));
    write(&c.join("b.md"), &format!("# Title\n\n{}", prose(30_000, 2)));
    write(
        &c.join("sub/c.html"),
        &format!(
            "<html><head><style>body {{}}</style><script>var a = 1;</script></head><body><p>{}</p></body></html>",
            prose(20_000, 3).replace("\n\n", "</p><p>")
        ),
    );
    let lines: Vec<String> = (0..20)
        .map(|i| serde_json::json!({ "text": prose(1500, 10 + i) }).to_string())
        .collect();
    write(&c.join("sub/d.jsonl"), &(lines.join("\n") + "\n"));
    write(&c.join("e.pdf"), "%PDF-1.4 not read");
    std::fs::write(c.join("f.bin"), [0u8, 1, 2, 3, 0, 0]).unwrap();
    c
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn no_generate_chunks_every_format_and_reports_what_it_skips() {
    let Some(m) = model() else { return };
    let dir = TempDir::new("qa-nogen");
    let c = corpus(dir.path());
    let out = dir.path().join("chunks.jsonl");
    let (m, c, o) = (
        m.to_str().unwrap(),
        c.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let args = [
        "--model",
        m,
        "--no-generate",
        "--out",
        o,
        "--chunk-tokens",
        "256",
        c,
    ];
    let v = qa(&args);
    let r = &v["report"];
    assert_eq!(r["files"], 4, "{v}");
    let skipped: Vec<&str> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap())
        .collect();
    assert!(skipped.iter().any(|p| p.ends_with("e.pdf")), "{skipped:?}");
    assert!(skipped.iter().any(|p| p.ends_with("f.bin")), "{skipped:?}");
    let lines = records(&out);
    assert_eq!(lines.len() as u64, r["records"].as_u64().unwrap());
    let sources: std::collections::BTreeSet<String> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let s = v["source"].as_str().unwrap();
            s.rsplit('/')
                .next()
                .unwrap()
                .split('#')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        sources.into_iter().collect::<Vec<_>>(),
        ["a.txt", "b.md", "c.html", "d.jsonl"]
    );
    // Script and style never reach a chunk; no chunk is over its size by much.
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("var a"));
    assert!(lines.iter().all(|l| {
        let v: Value = serde_json::from_str(l).unwrap();
        v["tokens"].as_u64().unwrap() <= 256
    }));
    assert!(
        v["documents_peak_bytes"].as_u64().unwrap() <= v["documents_limit_bytes"].as_u64().unwrap()
    );
    // A second run finds everything done and writes nothing.
    let again = qa(&args);
    assert_eq!(again["report"]["records"], 0);
    assert_eq!(records(&out), lines);
    // Stdin JSONL.
    let out2 = dir.path().join("stdin.jsonl");
    let mut child = Command::new(BIN)
        .args([
            "qa",
            "--json",
            "--model",
            m,
            "--no-generate",
            "--out",
            out2.to_str().unwrap(),
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"text\": \"One document on stdin.\"}\n{\"text\": \"Another.\"}\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(records(&out2).len(), 2);
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn no_generate_peak_rss_does_not_grow_with_the_corpus_and_the_pool_holds() {
    let Some(m) = model() else { return };
    let dir = TempDir::new("qa-rss");
    let mut peaks = Vec::new();
    for mb in [1usize, 24] {
        let f = dir.path().join(format!("c{mb}.txt"));
        write(&f, &prose(mb << 20, mb as u64));
        let out = dir.path().join(format!("o{mb}.jsonl"));
        let v = qa(&[
            "--model",
            m.to_str().unwrap(),
            "--no-generate",
            "--documents",
            "2MiB",
            "--out",
            out.to_str().unwrap(),
            f.to_str().unwrap(),
        ]);
        // The run's own high-water mark (VmHWM, read by llmem itself): a parent's wait4
        // would count the test process's peak too (a vfork-and-exec child starts in the
        // parent's memory), which concurrent tests move by megabytes.
        let rss = v["peak_rss_bytes"]
            .as_u64()
            .expect("peak_rss_bytes on Linux");
        let peak = v["documents_peak_bytes"].as_u64().unwrap();
        assert!(peak <= 2 << 20, "documents pool over its limit: {v}");
        eprintln!(
            "{mb} MB corpus: {} chunks, peak RSS {} KiB",
            v["report"]["chunks"],
            rss >> 10
        );
        peaks.push(rss as f64);
    }
    let ratio = peaks[1] / peaks[0];
    assert!(
        (0.9..=1.1).contains(&ratio),
        "peak RSS grew {ratio:.3}x: {peaks:?}"
    );
}

fn crash_args(m: &str, corpus: &Path, out: &Path) -> Vec<String> {
    [
        "--model",
        m,
        "--no-generate",
        "--chunk-tokens",
        "64",
        "--overlap",
        "8",
        "--out",
        out.to_str().unwrap(),
        corpus.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn killed_or_interrupted_runs_resume_to_exactly_one_runs_records() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    let dir = TempDir::new("qa-crash");
    let corpus = dir.path().join("c.txt");
    write(&corpus, &prose(3 << 20, 9));
    let whole = dir.path().join("whole.jsonl");
    let t = Instant::now();
    let mut a: Vec<&str> = vec!["--json"];
    let wargs = crash_args(m, &corpus, &whole);
    a.extend(wargs.iter().map(String::as_str));
    let v = json_of(&llmem(&[&["qa"][..], &a[..]].concat()));
    let took = t.elapsed();
    let expected = records(&whole);
    assert_eq!(
        expected.len() as u64,
        v["report"]["records"].as_u64().unwrap()
    );
    assert!(expected.len() > 1000, "{}", expected.len());
    for (signal, seed) in [(libc::SIGKILL, 11), (libc::SIGINT, 12)] {
        let out = dir.path().join(format!("run{signal}.jsonl"));
        let args = crash_args(m, &corpus, &out);
        let stopped = stop_and_resume(&args, signal, 6, took, seed);
        eprintln!("signal {signal}: {stopped} of 6 runs stopped (a whole run: {took:?})");
        assert!(stopped >= 2, "only {stopped} runs were stopped");
        // One more to the end.
        let mut fin: Vec<&str> = vec!["qa", "--json"];
        fin.extend(args.iter().map(String::as_str));
        json_of(&llmem(&fin));
        assert_eq!(
            records(&out),
            expected,
            "after {stopped} stops by signal {signal}"
        );
    }
}

/// Checks a `messages` record: exactly the keys of the format, the provenance complete.
fn check_messages(l: &str, chunk_text_from: &str) {
    let v: Value = serde_json::from_str(l).unwrap();
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 2, "{l}");
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        (msgs[0]["role"].as_str(), msgs[1]["role"].as_str()),
        (Some("user"), Some("assistant"))
    );
    assert!(!msgs[0]["content"].as_str().unwrap().is_empty());
    assert!(!msgs[1]["content"].as_str().unwrap().is_empty());
    let meta = &v["meta"];
    for k in ["id", "chunk_hash"] {
        assert_eq!(meta[k].as_str().unwrap().len(), 32, "{k}: {l}");
    }
    for k in ["model_digest", "prompt_version"] {
        assert_eq!(meta[k].as_str().unwrap().len(), 16, "{k}: {l}");
    }
    assert!(meta["source"].as_str().unwrap().ends_with(chunk_text_from));
    let b = meta["bytes"].as_array().unwrap();
    assert!(b[0].as_u64().unwrap() < b[1].as_u64().unwrap());
    let score = meta["judge_score"].as_u64().unwrap();
    assert!((1..=10).contains(&score));
    let grounding = meta["grounding"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&grounding), "{l}");
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn smollm2_writes_valid_judged_pairs_and_a_killed_run_resumes_to_the_same() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    let dir = TempDir::new("qa-gen");
    let text = root().join("testdata/eval/licenses.txt");
    let args = |out: &Path| -> Vec<String> {
        [
            "--model",
            m,
            "--max-chunks",
            "2",
            "--questions-per-chunk",
            "2",
            "--chunk-tokens",
            "128",
            "--overlap",
            "16",
            "--seed",
            "7",
            "--threads",
            "2",
            "--judge-threshold",
            "5",
            "--out",
            out.to_str().unwrap(),
            text.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let whole = dir.path().join("whole.jsonl");
    let mut a = vec!["qa".to_string(), "--json".into()];
    a.extend(args(&whole));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let t = Instant::now();
    let v = json_of(&llmem(&a));
    let took = t.elapsed();
    let r = &v["report"];
    assert_eq!(r["pairs_generated"], 4, "{v}");
    assert_eq!(
        r["pairs_invalid"], 0,
        "the grammar lets no broken JSON through: {v}"
    );
    let judged = 4 - r["pairs_invalid"].as_u64().unwrap();
    let passed = judged - r["dropped_judge"].as_u64().unwrap();
    eprintln!(
        "SmolLM2: {passed}/{judged} pairs passed the judge (threshold 5), mean score {:.2}, \
         {} not grounded, {} restating the question, {} near-duplicates, {} of {} prompt \
         tokens from chunk prefixes, {took:?}",
        r["score_sum"].as_f64().unwrap() / judged as f64,
        r["dropped_ungrounded"],
        r["dropped_trivial"],
        r["dropped_duplicate"],
        r["cached_tokens"],
        r["prompt_tokens"]
    );
    assert!(
        r["cached_tokens"].as_u64().unwrap() > 0,
        "no prefix reused: {v}"
    );
    let expected = records(&whole);
    assert_eq!(expected.len() as u64, r["records"].as_u64().unwrap());
    // Every judged pair is either written or dropped for one counted reason.
    let dropped: u64 = [
        "dropped_judge",
        "dropped_ungrounded",
        "dropped_trivial",
        "dropped_duplicate",
    ]
    .iter()
    .map(|k| r[*k].as_u64().unwrap())
    .sum();
    assert_eq!(judged, r["records"].as_u64().unwrap() + dropped, "{v}");
    for l in &expected {
        check_messages(l, "licenses.txt");
    }
    // Killed once the first chunk is journaled, then resumed.
    let out = dir.path().join("resumed.jsonl");
    let journal = dir.path().join("resumed.jsonl.journal");
    let mut child = Command::new(BIN)
        .arg("qa")
        .args(args(&out))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::fs::read_to_string(&journal).map_or(0, |j| j.lines().count()) < 1
        && t.elapsed() < took * 3
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut a = vec!["qa".to_string(), "--json".into()];
    a.extend(args(&out));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let v2 = json_of(&llmem(&a));
    assert!(
        v2["report"]["chunks_done_before"].as_u64().unwrap() >= 1,
        "{v2}"
    );
    assert_eq!(records(&out), expected);
}

/// Under a budget just over the least a generating run needs (the weights, the scratch,
/// one of a chunk's sequences at full length), the run completes and its peak RSS (the
/// process's own, code and stacks included) stays within the budget: the ledger is given
/// the budget less the process's own memory outside it. Under that least, the run is
/// refused before loading, naming the budget that would do.
#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn a_generating_run_under_a_tight_budget_completes_within_it() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    let dir = TempDir::new("qa-budget");
    let text = root().join("testdata/eval/licenses.txt");
    let out = dir.path().join("qa.jsonl");
    let run = |budget: &str| {
        llmem(&[
            "qa",
            "--json",
            "--model",
            m,
            "--max-chunks",
            "3",
            "--chunk-tokens",
            "128",
            "--overlap",
            "16",
            "--max-in-flight",
            "4",
            "--threads",
            "2",
            "--budget",
            budget,
            "--out",
            out.to_str().unwrap(),
            text.to_str().unwrap(),
        ])
    };
    let refused = run("64MiB");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("generating needs"), "{err}");
    assert!(!out.exists(), "a refused run wrote {}", out.display());
    // "generating needs X (N bytes)": N plus 4 MiB.
    let need: u64 = err
        .split_once("MiB (")
        .and_then(|(_, r)| r.split_once(" bytes)"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in: {err}"));
    let budget = need + (4 << 20);
    let v = json_of(&run(&budget.to_string()));
    let r = &v["report"];
    assert_eq!(r["chunks_written"], 3, "{v}");
    assert_eq!(r["pairs_generated"], 9, "{v}");
    let rss = v["peak_rss_bytes"].as_u64().unwrap();
    assert!(
        rss <= budget,
        "peak RSS {rss} over the budget {budget}: {v}"
    );
    let ledger: u64 = v["ledger_peaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peak_bytes"].as_u64().unwrap())
        .sum();
    assert!(ledger < budget, "{v}");
    eprintln!(
        "budget {budget}: peak RSS {rss} ({:.1}%), ledger peaks {ledger}, {} preemptions, \
         peak running {}",
        100.0 * rss as f64 / budget as f64,
        v["scheduler"]["preemptions"],
        v["scheduler"]["peak_running"]
    );
}
