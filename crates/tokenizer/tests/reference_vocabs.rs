//! The vocabularies of Qwen2.5-Coder (byte-level BPE, `qwen2` pre-tokenizer, 151,936
//! tokens) and Gemma 3 (SentencePiece, 262,144 tokens, BOS added, no prefix space)
//! against llama.cpp: every golden prompt encodes to llama.cpp's ids, and every golden
//! continuation decodes to llama.cpp's text.

mod common;

use common::{read_json, reference_tokenizer, testdata_file, u32s};
use tokenizer::{BosEos, ModelKind, PreTokenizer, Render, Special, TokenId, Tokenizer};

fn check_golden(tok: &Tokenizer, golden: &str) {
    let golden = read_json(&testdata_file(golden));
    let prompts = golden["prompts"].as_array().unwrap();
    assert!(prompts.len() >= 5);
    for p in prompts {
        let name = p["name"].as_str().unwrap();
        let text = p["text"].as_str().unwrap();
        let got: Vec<u32> = tok
            .encode(text, BosEos::Add, Special::Parse)
            .iter()
            .map(|t| t.0)
            .collect();
        assert_eq!(got, u32s(&p["prompt_ids"]), "{name}: prompt ids");
        let gen_ids: Vec<TokenId> = u32s(&p["gen_ids"]).into_iter().map(TokenId).collect();
        let gen_text = tok.decode(&gen_ids, Render::Text).unwrap();
        assert_eq!(
            gen_text,
            p["gen_text"].as_str().unwrap(),
            "{name}: gen text"
        );
    }
}

#[test]
#[cfg_attr(
    not(llmem_model_qwen05),
    ignore = "needs qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf in $LLMEM_MODELS or ~/.cache/llmem/models"
)]
fn qwen05_golden_prompts_encode_to_llama_cpp_ids() {
    let Some(tok) = reference_tokenizer(option_env!("LLMEM_MODEL_QWEN05"), "qwen05") else {
        return;
    };
    assert_eq!(tok.vocab_size(), 151_936);
    assert_eq!(tok.model_kind(), ModelKind::BytePairGpt2);
    assert_eq!(tok.pre_tokenizer(), PreTokenizer::Qwen2);
    assert!(!tok.adds_bos());
    check_golden(&tok, "golden/qwen05-greedy.json");
}

#[test]
#[cfg_attr(
    not(llmem_model_qwen15),
    ignore = "needs qwen2.5-coder-1.5b-instruct-q4_k_m.gguf in $LLMEM_MODELS or ~/.cache/llmem/models"
)]
fn qwen15_golden_prompts_encode_to_llama_cpp_ids() {
    let Some(tok) = reference_tokenizer(option_env!("LLMEM_MODEL_QWEN15"), "qwen15") else {
        return;
    };
    assert_eq!(tok.vocab_size(), 151_936);
    assert_eq!(tok.pre_tokenizer(), PreTokenizer::Qwen2);
    check_golden(&tok, "golden/qwen15-greedy.json");
}

#[test]
#[cfg_attr(
    not(llmem_model_gemma3),
    ignore = "needs gemma-3-270m-q4_k_m.gguf in $LLMEM_MODELS or ~/.cache/llmem/models"
)]
fn gemma3_golden_prompts_encode_to_llama_cpp_ids() {
    let Some(tok) = reference_tokenizer(option_env!("LLMEM_MODEL_GEMMA3"), "gemma3") else {
        return;
    };
    assert_eq!(tok.vocab_size(), 262_144);
    assert_eq!(tok.model_kind(), ModelKind::SentencePiece);
    assert!(tok.adds_bos());
    check_golden(&tok, "golden/gemma3-greedy.json");
}
