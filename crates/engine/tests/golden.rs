//! Correctness against llama.cpp: the golden prompts of SmolLM2-135M-Instruct Q4_1.
//!
//! For every prompt: the tokenizer gives llama.cpp's prompt ids; greedy decoding matches
//! llama.cpp's continuation for at least `must_match` tokens (after that a near-tie may go
//! either way); and teacher-forced over prompt + continuation, the log-probability of
//! llama.cpp's next token is within 0.05 of llama.cpp's on average and 0.3 at worst.

mod common_model;

use common_model::{compare, golden, model_path};

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn matches_llama_cpp_on_golden_prompts() {
    let Some(path) = model_path() else { return };
    let file = weights::MappedFile::open(&path).unwrap();
    let gguf = gguf::GgufFile::parse(file.bytes()).unwrap();
    let tm = engine::text::TextModel::from_gguf(&gguf).unwrap();
    compare(&tm, &golden(), |_| true, true).check("SmolLM2-135M");
}
