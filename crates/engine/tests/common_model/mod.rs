//! The default model and llama.cpp's reference outputs for it, shared by the engine's
//! tests that run the real model; the other reference models (found by the build script,
//! see `scripts/model_cfg.rs`) and the comparison with llama.cpp's outputs.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::Command;

/// The model, fetched by the project's script into the shared models folder (cached; a
/// checkout's older `models/` copy is taken over). Outside CI a missing network skips the
/// test with a message; under CI it fails.
pub fn model_path() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/fetch-model.sh"))
        .output();
    match out {
        Ok(o) if o.status.success() => Some(PathBuf::from(
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )),
        other => {
            let why = format!("could not fetch the model: {other:?}");
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

pub fn golden() -> serde_json::Value {
    golden_file("smollm2-greedy.json")
}

/// `testdata/golden/<name>`, parsed.
pub fn golden_file(name: &str) -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/golden")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// An optional reference model's path, as the build script found it (`option_env!` of
/// its `LLMEM_MODEL_*`); `None` after saying so when it is not on this machine.
pub fn reference_model(path: Option<&'static str>, file: &str) -> Option<PathBuf> {
    match path {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("SKIPPED: {file} is not in $LLMEM_MODELS or ~/.cache/llmem/models");
            None
        }
    }
}

/// Loads the reference model `file` (at `path`, see [`reference_model`]) and runs `f`
/// on it; does nothing (the skip is reported) when the file is absent.
pub fn with_reference_model(
    path: Option<&'static str>,
    file: &str,
    f: impl FnOnce(&engine::text::TextModel<'_>),
) {
    let Some(path) = reference_model(path, file) else {
        return;
    };
    let mapped = weights::MappedFile::open(&path).unwrap();
    let gguf = gguf::GgufFile::parse(mapped.bytes()).unwrap();
    f(&engine::text::TextModel::from_gguf(&gguf).unwrap());
}

/// How a model's outputs compare with llama.cpp's golden ones.
#[derive(Debug, Default)]
pub struct Agreement {
    /// Teacher-forced |Δ log-prob| over every scored position: sum, count, largest.
    pub sum_diff: f64,
    pub n_diff: usize,
    pub max_diff: f64,
    /// Where the largest was: (prompt, position, llama.cpp's log-prob, ours).
    pub worst: Option<(String, usize, f64, f64)>,
    /// Per prompt: (name, leading greedy tokens equal to llama.cpp's, tokens compared,
    /// must_match).
    pub greedy: Vec<(String, usize, usize, usize)>,
}

impl Agreement {
    pub fn mean(&self) -> f64 {
        self.sum_diff / self.n_diff.max(1) as f64
    }

    /// Asserts the golden criteria: greedy tokens equal up to `must_match` for every
    /// prompt, |Δ log-prob| ≤ 0.05 on average and ≤ 0.3 at worst.
    pub fn check(&self, model: &str) {
        for (name, same, compared, must) in &self.greedy {
            eprintln!("{model} {name}: {same}/{compared} greedy tokens equal (must: {must})");
        }
        eprintln!(
            "{model}: teacher-forced |Δ logprob| vs llama.cpp: mean {:.4}, max {:.4} over {} positions",
            self.mean(),
            self.max_diff,
            self.n_diff
        );
        if let Some((name, pos, want, got)) = &self.worst {
            eprintln!(
                "{model}: largest at {name} position {pos}: llama.cpp {want:.4}, here {got:.4}"
            );
        }
        for (name, same, _, must) in &self.greedy {
            assert!(
                same >= must,
                "{model} {name}: greedy tokens before the first near-tie"
            );
        }
        assert!(
            self.mean() <= 0.05,
            "{model}: mean |Δ logprob| {}",
            self.mean()
        );
        assert!(
            self.max_diff <= 0.3,
            "{model}: max |Δ logprob| {}",
            self.max_diff
        );
    }
}

/// Runs `golden`'s prompts (those `keep` accepts) through `tm`: prompt ids must equal
/// llama.cpp's; greedy decoding runs for all of llama.cpp's continuation, or only up to
/// `must_match` when `full` is false; teacher forcing scores prompt + continuation in
/// one batch.
pub fn compare(
    tm: &engine::text::TextModel<'_>,
    golden: &serde_json::Value,
    keep: impl Fn(&str) -> bool,
    full: bool,
) -> Agreement {
    use engine::forward::{Logits, Session, SessionConfig};
    use engine::sampler::argmax;
    use kernels::ops::log_softmax_at;

    let mut s = Session::unbudgeted(&tm.model, SessionConfig::new(256, 2, 512)).unwrap();
    let vocab = tm.model.cfg.vocab;
    let mut a = Agreement::default();
    for p in golden["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        if !keep(name) {
            continue;
        }
        let prompt_ids = ids(&p["prompt_ids"]);
        let gen_ids = ids(&p["gen_ids"]);
        let must = p["must_match"].as_u64().unwrap() as usize;
        assert_eq!(
            tm.encode(p["text"].as_str().unwrap()),
            prompt_ids,
            "{name}: prompt ids"
        );

        // Greedy continuation.
        s.reset();
        let n_gen = if full { gen_ids.len() } else { must };
        let mut next = argmax(s.eval(&prompt_ids, Logits::Last).unwrap());
        let mut got = Vec::new();
        for i in 0..n_gen {
            got.push(next);
            if i + 1 < n_gen {
                next = argmax(s.eval(&[next], Logits::Last).unwrap());
            }
        }
        let same = got.iter().zip(&gen_ids).take_while(|(a, b)| a == b).count();
        a.greedy.push((name.into(), same, n_gen, must));

        // Teacher forcing over prompt + llama.cpp's continuation, in one batch.
        s.reset();
        let all: Vec<u32> = prompt_ids.iter().chain(&gen_ids).copied().collect();
        let logits = s.eval(&all, Logits::All).unwrap().to_vec();
        for tf in p["teacher_forced"].as_array().unwrap() {
            let pos = tf["pos"].as_u64().unwrap() as usize;
            let next = tf["next"].as_u64().unwrap() as usize;
            let want = tf["logprob"].as_f64().unwrap();
            let lp = f64::from(log_softmax_at(
                &logits[pos * vocab..(pos + 1) * vocab],
                next,
            ));
            let d = (lp - want).abs();
            a.sum_diff += d;
            a.n_diff += 1;
            if d > a.max_diff {
                a.max_diff = d;
                a.worst = Some((name.into(), pos, want, lp));
            }
        }
    }
    a
}
