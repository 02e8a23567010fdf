//! Correctness against llama.cpp: the golden prompts of SmolLM2-135M-Instruct Q4_1.
//!
//! For every prompt: the tokenizer gives llama.cpp's prompt ids; greedy decoding matches
//! llama.cpp's continuation for at least `must_match` tokens (after that a near-tie may go
//! either way); and teacher-forced over prompt + continuation, the log-probability of
//! llama.cpp's next token is within 0.05 of llama.cpp's on average and 0.3 at worst.

mod common_model;

use common_model::{golden, ids, model_path};
use engine::forward::{Logits, Session, SessionConfig};
use engine::sampler::argmax;
use kernels::ops::log_softmax_at;

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn matches_llama_cpp_on_golden_prompts() {
    let Some(path) = model_path() else { return };
    let file = weights::MappedFile::open(&path).unwrap();
    let gguf = gguf::GgufFile::parse(file.bytes()).unwrap();
    let tm = engine::text::TextModel::from_gguf(&gguf).unwrap();
    let cfg = SessionConfig::new(256, 2, 512);
    let mut s = Session::unbudgeted(&tm.model, cfg).unwrap();
    let g = golden();
    let (mut sum_diff, mut n_diff, mut max_diff) = (0.0f64, 0usize, 0.0f64);
    for p in g["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
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
        let mut next = argmax(s.eval(&prompt_ids, Logits::Last).unwrap());
        let mut got = Vec::new();
        for _ in 0..gen_ids.len() {
            got.push(next);
            next = argmax(s.eval(&[next], Logits::Last).unwrap());
        }
        assert_eq!(
            &got[..must],
            &gen_ids[..must],
            "{name}: greedy tokens before the first near-tie"
        );

        // Teacher forcing over prompt + llama.cpp's continuation, in one batch.
        s.reset();
        let all: Vec<u32> = prompt_ids.iter().chain(&gen_ids).copied().collect();
        let vocab = tm.model.cfg.vocab;
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
            sum_diff += d;
            n_diff += 1;
            max_diff = max_diff.max(d);
        }
    }
    let mean = sum_diff / n_diff as f64;
    eprintln!(
        "teacher-forced |Δ logprob| vs llama.cpp: mean {mean:.4}, max {max_diff:.4} over {n_diff} positions"
    );
    assert!(mean <= 0.05, "mean |Δ logprob| {mean}");
    assert!(max_diff <= 0.3, "max |Δ logprob| {max_diff}");
}
