//! `llmem bench batch`: one figure set per batch size, in JSON, and bad flags refused with
//! exit code 2 before any model is read.

mod common_cli;
use common_cli::*;

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn bench_batch_reports_every_batch_size() {
    let Some(m) = model() else { return };
    let m = m.to_string_lossy().into_owned();
    let o = llmem(&[
        "bench",
        "batch",
        "--model",
        &m,
        "--threads",
        "2",
        "--seqs",
        "1,3",
        "--prompt",
        "8",
        "--gen",
        "4",
        "--reps",
        "1",
        "--json",
    ]);
    let r = json_of(&o);
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
