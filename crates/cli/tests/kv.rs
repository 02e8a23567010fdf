//! KV tiers through the binary (issue 4): `--kv-type` changes the cache's size and keeps
//! the answer, `--kv-dir` keeps a prompt's prefix across runs and recomputes — never uses
//! — a block whose file was damaged, and `bench kv --json` reports its formats. The disk
//! tier against hostile use is in `kv_hostile.rs`.

mod common_cli;

use common_cli::{PathBuf, Value, json_of as json, llmem, llmem_cached, model, root};

const PROMPT: &str = "The licence grants every recipient the right to copy, modify and \
    distribute the work, provided that the notice is kept intact and that any changes are \
    marked as such. The licence grants every recipient the right to copy, modify and \
    distribute the work. Summarise the conditions in one sentence.";

fn run(m: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "run",
        "--model",
        m,
        "--prompt",
        PROMPT,
        "--max-tokens",
        "12",
        "--threads",
        "2",
        "--temperature",
        "0",
        "--json",
    ];
    args.extend_from_slice(extra);
    json(&llmem(&args))
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn kv_dir_reuses_a_prefix_across_runs_and_recomputes_a_damaged_block() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // Past one f16 micro-batch (512 tokens): a reuse ends on a multiple of it.
    let long = PROMPT.repeat(9);
    let cache = tempfile::tempdir().unwrap();
    let run_long = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--model",
            m,
            "--prompt",
            &long,
            "--max-tokens",
            "12",
            "--threads",
            "2",
            "--temperature",
            "0",
            "--json",
        ];
        args.extend_from_slice(extra);
        json(&llmem_cached(cache.path(), &args))
    };
    let first = run_long(&["--kv-dir", d]);
    let n_prompt = first["prompt_token_ids"].as_array().unwrap().len();
    assert!(n_prompt > 530, "{n_prompt}");
    assert_eq!(first["kv"]["prefix_reused_tokens"], 0);
    let persisted = first["kv"]["blocks_persisted"].as_u64().unwrap();
    assert_eq!(
        persisted as usize,
        n_prompt / 16,
        "every full prompt block is kept"
    );
    let second = run_long(&["--kv-dir", d]);
    let reused = second["kv"]["prefix_reused_tokens"].as_u64().unwrap() as usize;
    assert_eq!(reused, 512);
    assert_eq!(
        second["token_ids"], first["token_ids"],
        "same answer from reused KV"
    );
    // Damage every block file: none is used, all are recomputed.
    let files: Vec<PathBuf> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "kvb"))
        .collect();
    assert_eq!(files.len() as u64, persisted);
    for victim in &files {
        let mut bytes = std::fs::read(victim).unwrap();
        let at = bytes.len() - 100;
        bytes[at] ^= 0x10;
        std::fs::write(victim, &bytes).unwrap();
    }
    let third = run_long(&["--kv-dir", d]);
    assert_eq!(
        third["kv"]["prefix_reused_tokens"], 0,
        "a damaged block was used"
    );
    assert_eq!(third["token_ids"], first["token_ids"]);
}

fn walk(p: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn kv_types_shrink_the_cache_and_bench_kv_reports_formats() {
    let Some(m) = model() else { return };
    let m = m.to_str().unwrap();
    let f16 = run(m, &["--kv-type", "f16"]);
    let int4 = run(m, &["--kv-type", "int4"]);
    let f16_bytes = f16["memory"]["kv_bytes"].as_u64().unwrap();
    let int4_bytes = int4["memory"]["kv_bytes"].as_u64().unwrap();
    assert!(int4_bytes < f16_bytes / 2, "{int4_bytes} vs {f16_bytes}");
    assert!(
        int4["kv"]["tier_blocks"][0].as_u64().unwrap() <= 1,
        "only the block being written stays hot"
    );
    let cache = tempfile::tempdir().unwrap();
    let b = json(&llmem_cached(
        cache.path(),
        &[
            "bench",
            "kv",
            "--model",
            m,
            "--text",
            root().join("testdata/eval/licenses.txt").to_str().unwrap(),
            "--chunks",
            "1",
            "--ctx",
            "128",
            "--depth",
            "0",
            "--types",
            "f16,int8,int4",
            "--threads",
            "2",
            "--json",
        ],
    ));
    let f = b["formats"].as_array().unwrap();
    assert_eq!(f.len(), 3);
    for x in f {
        for k in ["name", "bytes_per_token", "ppl", "kl_mean", "kl_max"] {
            assert!(!x[k].is_null(), "{k} missing");
        }
    }
    assert_eq!(f[0]["kl_mean"].as_f64(), Some(0.0));
    assert!(f[1]["kl_mean"].as_f64().unwrap() < 0.02);
    assert!(f[2]["bytes_per_token"].as_f64().unwrap() < f[1]["bytes_per_token"].as_f64().unwrap());
    // The codec rates went where the eviction score reads them.
    let saved = std::fs::read_to_string(cache.path().join("llmem/tier-throughput.json")).unwrap();
    let t: Value = serde_json::from_str(&saved).unwrap();
    for c in ["int8", "int4", "int2"] {
        assert!(
            t["codecs"][c]["dequantize_gb_s"].as_f64().unwrap() > 0.0,
            "{c}: {t}"
        );
    }
    assert!(
        t["compressors"]["lz4"]["decompress_gb_s"].as_f64().unwrap() > 0.0,
        "{t}"
    );
}
