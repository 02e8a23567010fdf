//! Correctness against llama.cpp on the other reference models: Qwen2.5-Coder 0.5B
//! (`qwen2`, AWQ, Q4_K_M), Gemma 3 270M (`gemma3`, Q4_K_M) and Qwen2.5-Coder 1.5B. The
//! criteria are those of `golden.rs` (prompt ids equal, greedy tokens equal up to
//! `must_match`, teacher-forced |Δ log-prob| ≤ 0.05 mean and ≤ 0.3 max).
//!
//! The project does not fetch these models: each test runs where its file is in
//! `$LLMEM_MODELS` or `~/.cache/llmem/models` at build time and is reported as ignored
//! elsewhere (see `scripts/model_cfg.rs`).

mod common_model;

use common_model::{compare, golden_file, with_reference_model};

fn run(
    path: Option<&'static str>,
    file: &str,
    golden: &str,
    keep: impl Fn(&str) -> bool,
    full: bool,
) {
    with_reference_model(path, file, |tm| {
        compare(tm, &golden_file(golden), keep, full).check(file);
    });
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

/// Gemma 3 meets every golden criterion. How it got there: compared tensor by tensor
/// with llama.cpp's (its eval callback) on chat-kv-cache, the graph is llama.cpp's
/// (norms, RoPE bases, scales, GeGLU, tied head: no structural difference); what differed
/// was rounding. Activations are now quantized as ggml does on x86 (codes from
/// `127 / amax` rounded ties to even, one scale per 256 values for k-quant weights, GELU
/// through f16), k-quant super-blocks are summed in integers with one float step each,
/// and the 32-value kinds take one `fma(isum, d·d_a)` per block. Measured: mean 0.035,
/// max 0.24 (it was 0.041 / 0.42, and greedy chat-kv-cache 11 of 32 tokens before the
/// rounding work). The model is that sensitive to rounding: llama.cpp scoring the same
/// sequences one token at a time (its decode path) is 0.030 mean and 0.34 max from its
/// own batched reference, and with flash attention on 0.039 / 0.38.
#[test]
#[cfg_attr(
    not(llmem_model_gemma3),
    ignore = "needs gemma-3-270m-q4_k_m.gguf in $LLMEM_MODELS or ~/.cache/llmem/models"
)]
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
