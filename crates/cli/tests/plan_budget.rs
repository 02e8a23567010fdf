//! `llmem plan` against reality, and `llmem run --budget` enforcing it (issue 3).

mod common_cli;

use common_cli::{PathBuf, json_of as json, llmem, model, root};

fn prompt_file(chars: usize) -> PathBuf {
    let text = std::fs::read_to_string(root().join("testdata/eval/licenses.txt")).unwrap();
    let p = std::env::temp_dir().join(format!("llmem-prompt-{}-{chars}.txt", std::process::id()));
    std::fs::write(&p, &text[..chars]).unwrap();
    p
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn plan_reports_exact_weights_and_kv() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    let p = json(&llmem(&["plan", "--model", m, "--ctx", "2048", "--json"]));
    let file_len = std::fs::metadata(m).unwrap().len();
    assert_eq!(p["weights_bytes"].as_u64(), Some(file_len));
    // 30 layers × 2 × 3 KV heads × 64 × 2 bytes = 23,040 bytes per token.
    assert_eq!(p["kv_bytes"].as_u64(), Some(2048 * 23_040));
    assert_eq!(p["fits"].as_bool(), Some(true));
    let parts: u64 = [
        "weights_bytes",
        "tokenizer_bytes",
        "kv_bytes",
        "scratch_bytes",
        "runtime_bytes",
    ]
    .iter()
    .map(|k| p[*k].as_u64().unwrap())
    .sum();
    assert_eq!(p["total_bytes"].as_u64(), Some(parts));
    let kinds: Vec<u64> = p["fits_by_kv_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kv_bytes_per_token"].as_u64().unwrap())
        .collect();
    // Block bytes (16 tokens, 30 layers × 3 KV heads of 64): f16 368,640; a quantized
    // (layer, head) pair of chunks is K = 2 + 3·64 + 16·row, V = 2 + 16·(3·2 + row) bytes.
    let q = |row: u64| 90 * ((2 + 3 * 64 + 16 * row) + (2 + 16 * (6 + row)));
    let (f16, q8, q4, q2) = (368_640u64, q(64), q(32), q(16));
    // At 2,048 tokens (128 blocks), at the peak: a cache that transcodes reads prompts in
    // micro-batches of 128 tokens, so its newest 8 blocks (+ the one a batch may straddle)
    // are still f16. tiered: sink f16; blocks 110–121 int4 (ages 96–287), 122–125 int8,
    // 126–127 f16, 1–109 int2 — of which 119–127 f16 at the peak.
    let per_token = |bytes: u64| bytes.div_ceil(2048);
    assert_eq!(
        kinds,
        [
            23_040,
            per_token(9 * f16 + 119 * q8),
            per_token(9 * f16 + 119 * q4),
            per_token(9 * f16 + 119 * q2),
            per_token(10 * f16 + 118 * q4),
            per_token(10 * f16 + 9 * q4 + 109 * q2),
        ]
    );
    assert_eq!(kinds[1..4], [13_858, 8_503, 5_825]);
    let y = llmem(&["plan", "--model", m, "--ctx", "512", "--yaml"]);
    assert!(y.status.success());
    assert!(String::from_utf8_lossy(&y.stdout).contains("total_bytes:"));
    let small = json(&llmem(&[
        "plan", "--model", m, "--ctx", "2048", "--budget", "130MiB", "--json",
    ]));
    assert_eq!(small["fits"].as_bool(), Some(false));
    assert!(small["shortfall_bytes"].as_u64().unwrap() > 0);
    let tips = small["suggestions"].as_array().unwrap();
    assert!(
        tips.iter()
            .any(|t| t.as_str().unwrap().starts_with("--ctx")),
        "{tips:?}"
    );
}

/// The plan's total bounds the peak RSS a run filling that context measures, by at most
/// 5% too much, and memory outside the ledger is under 5% of RSS. The prompts are long
/// enough (425 and 660 tokens) for the prompt's micro-batch buffers to reach the size the
/// plan counts.
#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn plan_matches_measured_peak_rss() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    for (ctx, chars) in [(512usize, 1900usize), (2048, 3000)] {
        let pf = prompt_file(chars);
        let ctx_s = ctx.to_string();
        let r = json(&llmem(&[
            "run",
            "--model",
            m,
            "--raw",
            "--prompt-file",
            pf.to_str().unwrap(),
            "--ctx",
            &ctx_s,
            "--max-tokens",
            "100000",
            "--ignore-eos",
            "--json",
        ]));
        let used = r["prompt_token_ids"].as_array().unwrap().len()
            + r["token_ids"].as_array().unwrap().len();
        assert!(
            used >= ctx,
            "ctx {ctx}: the run must fill its context ({used} tokens)"
        );
        let peak = r["memory"]["peak_rss_bytes"].as_u64().unwrap() as f64;
        let plan = r["ledger"]["plan_total_bytes"].as_u64().unwrap() as f64;
        let ratio = plan / peak;
        eprintln!("ctx {ctx}: plan {plan} / peak RSS {peak} = {ratio:.3}");
        assert!(
            (1.0..=1.05).contains(&ratio),
            "ctx {ctx}: plan/peak = {ratio}"
        );
        let drift = r["ledger"]["untracked_ratio"].as_f64().unwrap();
        assert!(drift.abs() < 0.05, "ctx {ctx}: untracked drift {drift}");
        // Weight pages are file-backed: the mapped model is not copied to the heap.
        let anon = r["ledger"]["rss_anon_bytes"].as_u64().unwrap();
        assert!(
            anon < r["memory"]["weight_bytes"].as_u64().unwrap(),
            "anon {anon}"
        );
        std::fs::remove_file(pf).ok();
    }
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn run_refuses_a_budget_below_the_plan_and_keeps_within_one_at_or_above() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    let o = llmem(&[
        "run", "--model", m, "--prompt", "hi", "--ctx", "2048", "--budget", "100MiB",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("short by") && err.contains("bytes") && err.contains("cheapest change"),
        "{err}"
    );
    assert!(o.stdout.is_empty(), "nothing generated before the refusal");

    let need = json(&llmem(&["plan", "--model", m, "--ctx", "512", "--json"]))["total_bytes"]
        .as_u64()
        .unwrap();
    let budget = need.to_string();
    let pf = prompt_file(1200);
    let r = json(&llmem(&[
        "run",
        "--model",
        m,
        "--raw",
        "--prompt-file",
        pf.to_str().unwrap(),
        "--ctx",
        "512",
        "--max-tokens",
        "100000",
        "--ignore-eos",
        "--budget",
        &budget,
        "--json",
    ]));
    assert_eq!(r["stop_reason"].as_str(), Some("ctx"));
    let peak = r["memory"]["peak_rss_bytes"].as_u64().unwrap();
    assert!(peak <= need, "peak RSS {peak} over the budget {need}");
    let snap = &r["ledger"]["snapshot"];
    assert!(snap["peak_bytes"].as_u64().unwrap() <= need);
    std::fs::remove_file(pf).ok();
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn bad_budgets_and_profiles_are_refused_naming_the_problem() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    for (flag, value, needle) in [
        ("--budget", "-5GiB", "-5GiB"),
        ("--budget", "5XB", "5XB"),
        ("--budget", "0", "more than 0"),
        ("--profile", "no-such-profile.yaml", "no-such-profile.yaml"),
    ] {
        let arg = format!("{flag}={value}");
        let o = llmem(&["plan", "--model", m, &arg]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{flag} {value}: {err}");
    }
    let bad = std::env::temp_dir().join(format!("llmem-bad-profile-{}.yaml", std::process::id()));
    std::fs::write(
        &bad,
        "name: x\ntotal: 1GiB\npools:\n  kv:\n    policy: tiered\n    limt: 1MiB\n",
    )
    .unwrap();
    let o = llmem(&["plan", "--model", m, "--profile", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("limt"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let over = "name: x\ntotal: 1GiB\npools:\n  kv:\n    policy: tiered\n    limit: 2GiB\n";
    std::fs::write(&bad, over).unwrap();
    let o = llmem(&["plan", "--model", m, "--profile", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("kv"));
    std::fs::remove_file(bad).ok();
}
