//! `llmem bench batch`: one figure set per batch size, in JSON, and bad flags refused with
//! exit code 2 before any model is read.

mod common_cli;
use common_cli::*;

/// `llmem bench batch --json` on the test model, 2 threads, one repetition: batch
/// sizes `seqs`, prompts of `prompt` tokens, `steps` decode steps, plus `extra` flags.
/// `None` without the model.
fn bench_json(seqs: &str, prompt: &str, steps: &str, extra: &[&str]) -> Option<Value> {
    let m = model()?.to_string_lossy().into_owned();
    let args = [
        "bench",
        "batch",
        "--model",
        &m,
        "--threads",
        "2",
        "--seqs",
        seqs,
        "--prompt",
        prompt,
        "--gen",
        steps,
        "--reps",
        "1",
        "--json",
    ];
    Some(json_of(&llmem(&[&args[..], extra].concat())))
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn bench_batch_reports_every_batch_size() {
    let Some(r) = bench_json("1,3", "8", "4", &[]) else {
        return;
    };
    let results = r["results"].as_array().expect("results array");
    let seqs: Vec<u64> = results
        .iter()
        .map(|x| x["seqs"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 3]);
    for x in results {
        for key in ["pp_tok_s", "tg_tok_s"] {
            let v = x[key].as_f64().unwrap_or_else(|| panic!("{key} in {x}"));
            assert!(v.is_finite() && v > 0.0, "{key} = {v}");
        }
    }
    // 8 + 4 tokens per sequence: one 16-token block each (23,040 bytes per token of
    // SmolLM2's f16 KV: 30 layers × 3 KV heads × 64 × 2 × 2).
    let kv: Vec<u64> = results
        .iter()
        .map(|x| x["kv_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(kv, vec![16 * 23_040, 3 * 16 * 23_040]);
    assert_eq!(
        (r["prompt"].as_u64(), r["gen"].as_u64()),
        (Some(8), Some(4))
    );
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn bench_batch_phases_account_for_the_steps_time() {
    let Some(r) = bench_json("4", "40", "6", &["--phases"]) else {
        return;
    };
    let x = &r["results"][0];
    let phases = |key: &str| -> Vec<(String, f64)> {
        x[key]
            .as_object()
            .unwrap_or_else(|| panic!("{key} in {x}"))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
            .collect()
    };
    let (pp, tg) = (phases("prefill_phases_ms"), phases("decode_phases_ms"));
    for (what, ph) in [("prefill", &pp), ("decode", &tg)] {
        let get = |name: &str| ph.iter().find(|(k, _)| k == name).map(|p| p.1);
        // The products and attention take time in every pass; nothing is negative.
        for name in ["qkv", "attention", "ffn_up", "ffn_down", "head", "norm"] {
            let ms = get(name).unwrap_or_else(|| panic!("{what}: {name} in {ph:?}"));
            assert!(ms > 0.0, "{what}: {name} = {ms}");
        }
        assert!(ph.iter().all(|(_, v)| v.is_finite() && *v >= 0.0), "{ph:?}");
    }
    // A decode step's phases add up to no more than the step's wall time (4 sequences
    // at `tg_tok_s` tokens per second), and to most of it.
    let step_ms = 4.0 / x["tg_tok_s"].as_f64().unwrap() * 1e3;
    let sum: f64 = tg.iter().map(|p| p.1).sum();
    assert!(
        sum <= step_ms * 1.001 && sum >= step_ms * 0.5,
        "{sum} of {step_ms}"
    );
    // Without the flag there are none.
    let r = bench_json("1", "8", "2", &[]).expect("the model was there above");
    assert!(r["results"][0].get("decode_phases_ms").is_none());
}

#[test]
fn bench_batch_refuses_bad_flags_with_exit_code_2() {
    let missing = "no-such-model.gguf";
    for (flags, says) in [
        (vec!["--seqs", "0"], "--seqs"),
        (vec!["--seqs", "4,99999"], "--seqs"),
        (vec!["--prompt", "0"], "--prompt"),
        (vec!["--gen", "0"], "--gen"),
        (vec!["--kv-type", "int3"], "--kv-type"),
    ] {
        let o = llmem(&[&["bench", "batch", "--model", missing][..], &flags].concat());
        assert_eq!(o.status.code(), Some(2), "{flags:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{flags:?}: {err}");
    }
    // A model that is not there is bad input too.
    let o = llmem(&["bench", "batch", "--model", missing]);
    assert_eq!(o.status.code(), Some(2));
}
