//! Hostile input to the binary (issue 13, findings 6, 7 and 9): one regression test per
//! finding, on the tiny synthetic model. Time bounds here only catch hangs; each case
//! finishes in well under a second when it works.

mod child;

use std::time::Duration;

use child::{Outcome, cache, closed_pipe, run, run_with, tiny_model, write};

const HANG: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

fn llmem(args: &[&str]) -> Outcome {
    run(args, &cache(), HANG)
}

/// Asserts exit code `code`, no signal, no hang; returns the outcome.
fn expect(code: i32, args: &[&str]) -> Outcome {
    let o = llmem(args);
    assert_eq!(o.code, Some(code), "{}", o.describe(args));
    assert!(!o.timed_out, "{}", o.describe(args));
    o
}

/// An input error (exit 2) whose one `llmem: error:` line contains every one of `says`.
fn refused(args: &[&str], says: &[&str]) -> Outcome {
    let o = expect(2, args);
    let line = o
        .stderr
        .lines()
        .find(|l| l.starts_with("llmem: error: "))
        .unwrap_or_else(|| panic!("no error line: {}", o.describe(args)));
    for s in says {
        assert!(line.contains(s), "{s:?} not in {line:?}");
    }
    o
}

// ---------------------------------------------------------------------------------------
// Finding 6: unbounded reads.

#[test]
fn finding6_profile_dev_zero_stops_at_64_kib() {
    let m = tiny_model();
    let o = refused(
        &["plan", "--model", m, "--profile", "/dev/zero"],
        &["/dev/zero", "65536"],
    );
    assert!(o.max_rss_bytes < 64 * MIB, "{}", o.max_rss_bytes);
}

#[test]
fn finding6_prompt_file_dev_zero_reads_at_most_what_the_context_holds() {
    let m = tiny_model();
    for extra in [&["--ctx", "64"][..], &["--budget", "200MiB"]] {
        let mut args = vec!["run", "--model", m, "--prompt-file", "/dev/zero"];
        args.extend_from_slice(extra);
        let o = refused(
            &args,
            &["/dev/zero", "--ctx", "raise --ctx or shorten the prompt"],
        );
        assert!(o.max_rss_bytes < 64 * MIB, "{}", o.describe(&args));
    }
    // A prompt that fits is read whole, however it is split into tokens.
    let fits = write("prompt.txt", "hello hello hello".as_bytes());
    expect(
        0,
        &[
            "run",
            "--model",
            m,
            "--prompt-file",
            &fits,
            "--max-tokens",
            "2",
        ],
    );
}

#[test]
fn finding6_bench_kv_text_dev_zero_is_read_with_a_cap() {
    let m = tiny_model();
    let base = [
        "bench",
        "kv",
        "--model",
        m,
        "--ctx",
        "32",
        "--types",
        "f16",
        "--depth",
        "0",
        "--reps",
        "1",
        "--no-save",
        "--text",
        "/dev/zero",
    ];
    // Every chunk asked for: at most 16 MiB is read, then refused.
    let all = [&base[..], &["--chunks", "0"]].concat();
    let o = refused(&all, &["/dev/zero", "16777216"]);
    assert!(o.max_rss_bytes < 128 * MIB, "{}", o.describe(&all));
    // One chunk: only what it can use is read, and scored.
    let one = [&base[..], &["--chunks", "1"]].concat();
    let o = expect(0, &one);
    assert!(o.max_rss_bytes < 128 * MIB, "{}", o.describe(&one));
}

// ---------------------------------------------------------------------------------------
// Finding 7: absurd numbers.

#[test]
fn finding7_plan_ctx_u64_max_refused_quickly() {
    let m = tiny_model();
    for ctx in ["18446744073709551615", "4294967295", "16777217"] {
        let o = refused(
            &["plan", "--model", m, "--ctx", ctx],
            &["--ctx", "16777216"],
        );
        assert!(o.elapsed < Duration::from_secs(10), "{:?}", o.elapsed);
    }
    // The largest context plans at once too: blocks are counted per format, not walked.
    let o = expect(
        0,
        &[
            "plan",
            "--model",
            m,
            "--ctx",
            "16777216",
            "--kv-type",
            "tiered",
        ],
    );
    assert!(o.elapsed < Duration::from_secs(10), "{:?}", o.elapsed);
}

#[test]
fn finding7_plan_seqs_never_wrap_to_a_fit() {
    let m = tiny_model();
    refused(
        &["plan", "--model", m, "--seqs", "8796093022208", "--json"],
        &["--seqs", "65536"],
    );
    // The most sequences allowed at the largest context: a very large plan that does not
    // fit, not a wrapped one that does.
    let o = expect(
        0,
        &[
            "plan", "--model", m, "--seqs", "65536", "--ctx", "16777216", "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(report["fits"], false, "{report}");
    // 2^24 tokens × 256 bytes (the tiny model's f16 KV per token) × 2^16 sequences.
    assert_eq!(report["kv_bytes"].as_u64(), Some(1 << 48), "{report}");
}

#[test]
fn finding7_run_refuses_huge_contexts_before_any_work() {
    let m = tiny_model();
    refused(
        &[
            "run",
            "--model",
            m,
            "--prompt",
            "hi",
            "--ctx",
            "18446744073709551615",
        ],
        &["--ctx"],
    );
    refused(
        &[
            "run",
            "--model",
            m,
            "--prompt",
            "hi",
            "--ctx",
            "36028797018963968",
            "--budget",
            "200MiB",
        ],
        &["--ctx"],
    );
    // Within the cap but past the budget: refused by the plan, with what would fit.
    refused(
        &[
            "run", "--model", m, "--prompt", "hi", "--ctx", "16777216", "--budget", "64MiB",
        ],
        &["this run needs", "the budget allows", "--ctx"],
    );
}

#[test]
fn finding7_bench_infer_counts_are_checked_before_any_allocation() {
    let m = tiny_model();
    let bench = ["bench", "infer", "--model", m, "--no-save"];
    for (flag, value) in [
        ("--depth", "18446744073709551615"),
        ("--depth", "99999999999"),
        ("--pp", "99999999999"),
        ("--tg", "18446744073709551615"),
    ] {
        let args = [&bench[..], &[flag, value]].concat();
        refused(&args, &[flag]);
    }
    // Within the context cap, but more KV than the budget: refused before a block exists.
    let args = [&bench[..], &["--depth", "10000000", "--budget", "64MiB"]].concat();
    let o = refused(&args, &["this bench needs", "the budget allows"]);
    assert!(o.max_rss_bytes < 64 * MIB, "{}", o.describe(&args));
    refused(&[&bench[..], &["--reps", "0"]].concat(), &["--reps"]);
}

#[test]
fn finding7_a_context_past_the_training_length_warns_once_and_runs() {
    let m = tiny_model();
    // The tiny model was trained for 256 positions.
    let o = expect(0, &["plan", "--model", m, "--ctx", "1024"]);
    let warnings: Vec<&str> = o.stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{}", o.stderr);
    assert!(
        warnings[0].contains("--ctx 1024") && warnings[0].contains("256"),
        "{}",
        o.stderr
    );
    // A run warns only when it can reach past it.
    let short = expect(
        0,
        &["run", "--model", m, "--prompt", "hi", "--max-tokens", "4"],
    );
    assert!(!short.stderr.contains("warning"), "{}", short.stderr);
    let long = expect(
        0,
        &[
            "run",
            "--model",
            m,
            "--prompt",
            "hi",
            "--max-tokens",
            "300",
            "--ctx",
            "512",
        ],
    );
    assert_eq!(long.stderr.matches("warning").count(), 1, "{}", long.stderr);
}

// ---------------------------------------------------------------------------------------
// Finding 9.

/// The tiny model in f32 with NaN written into `tensor`.
fn model_with_nan_in(tensor: &str) -> String {
    let mut bytes = testkit::tiny_llama(&testkit::TinyLlamaConfig::default()).bytes;
    let offset = {
        let file = gguf::GgufFile::parse(&bytes).expect("the tiny model parses");
        let info = file.tensor(tensor).expect("the tensor exists");
        let data = file.tensor_data(info);
        data.as_ptr() as usize - bytes.as_ptr() as usize
    };
    // Element 5 of the tensor (f32).
    bytes[offset + 20..offset + 24].copy_from_slice(&f32::NAN.to_le_bytes());
    write(&format!("nan-{tensor}.gguf"), &bytes)
}

#[test]
fn finding9_nan_weights_stop_the_run_naming_the_tensor() {
    let m = model_with_nan_in("blk.1.attn_q.weight");
    let args = [
        "run",
        "--model",
        &m,
        "--prompt",
        "hello",
        "--max-tokens",
        "8",
    ];
    let o = expect(1, &args);
    assert!(
        o.stderr
            .contains("tensor 'blk.1.attn_q.weight' holds NaN at element 5"),
        "{}",
        o.describe(&args)
    );
    assert!(o.stderr.contains("not a number"), "{}", o.stderr);
    assert!(
        o.stdout.trim().is_empty(),
        "nothing generated: {:?}",
        o.stdout
    );
}

#[test]
fn finding9_tiny_temperatures_sample_greedily() {
    let m = tiny_model();
    let ids = |temperature: &str| {
        let args = [
            "run",
            "--model",
            m,
            "--prompt",
            "the cat",
            "--max-tokens",
            "16",
            "--json",
            "--seed",
            "7",
            &format!("--temperature={temperature}"),
        ];
        let o = expect(0, &args);
        let report: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        report["token_ids"].clone()
    };
    let greedy = ids("0");
    for t in ["1e-38", "1e-30", "0.0000001", "-0"] {
        assert_eq!(ids(t), greedy, "--temperature {t}");
    }
}

#[test]
fn finding9_a_closed_stdout_exits_0_quietly() {
    let m = tiny_model();
    let commands: [&[&str]; 6] = [
        &["plan", "--model", m],
        &["plan", "--model", m, "--json"],
        &["health"],
        &["monitor", "--once"],
        &["run", "--model", m, "--prompt", "hi", "--max-tokens", "4"],
        &[
            "bench",
            "infer",
            "--model",
            m,
            "--reps",
            "1",
            "--pp",
            "8",
            "--tg",
            "2",
            "--depth",
            "0",
            "--no-save",
        ],
    ];
    for args in commands {
        let o = run_with(args, &cache(), HANG, closed_pipe());
        assert_eq!(o.code, Some(0), "{}", o.describe(args));
        assert!(
            !o.stderr.contains("panicked") && !o.stderr.contains("error"),
            "{}",
            o.describe(args)
        );
    }
}

#[test]
fn finding9_plot_path_is_checked_before_measuring() {
    let args = [
        "bench",
        "memory",
        "--plot",
        "/nonexistent/x.svg",
        "--sizes",
        "4K",
        "--no-save",
    ];
    let o = refused(&args, &["--plot", "/nonexistent/x.svg"]);
    assert!(!o.stderr.contains("[1/"), "measured first: {}", o.stderr);
    assert!(o.elapsed < Duration::from_secs(10), "{:?}", o.elapsed);
}

#[test]
fn finding9_bench_memory_reports_progress_per_working_set() {
    let args = [
        "bench",
        "memory",
        "--sizes",
        "16K,32K",
        "--ops",
        "copy,latency",
        "--reps",
        "1",
        "--threads",
        "1",
        "--no-save",
    ];
    let o = expect(0, &args);
    let progress: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(progress.len(), 4, "{}", o.stderr);
    assert!(
        progress[0].starts_with("[1/4] bandwidth 16K: copy"),
        "{}",
        o.stderr
    );
    assert!(
        progress[3].starts_with("[4/4] latency 32K: latency"),
        "{}",
        o.stderr
    );
    // Sizes the budget cannot hold are refused before any is measured.
    refused(
        &[
            "bench",
            "memory",
            "--sizes",
            "1G",
            "--budget",
            "256MiB",
            "--no-save",
        ],
        &["--sizes", "the budget allows"],
    );
}

#[test]
fn finding9_os_error_text_is_printed_once() {
    // A sysfs file has a size but cannot be mapped (ENODEV); the message said so twice.
    #[cfg(target_os = "linux")]
    {
        let o = refused(
            &["plan", "--model", "/sys/devices/system/cpu/online"],
            &["cannot map", "No such device"],
        );
        assert_eq!(o.stderr.matches("(os error 19)").count(), 1, "{}", o.stderr);
    }
    let m = tiny_model();
    let o = refused(
        &["plan", "--model", m, "--profile", "/"],
        &["/", "os error"],
    );
    assert_eq!(o.stderr.matches("os error").count(), 1, "{}", o.stderr);
}

#[test]
fn finding9_a_model_path_that_is_a_directory_says_so() {
    let dir = child::scratch().to_str().unwrap().to_owned();
    for args in [
        &["run", "--model", &dir, "--prompt", "hi"][..],
        &["plan", "--model", &dir],
        &["health", "--model", &dir],
    ] {
        let o = refused(args, &["is a directory, not a GGUF file"]);
        assert!(!o.stderr.contains("No such device"), "{}", o.stderr);
    }
}
