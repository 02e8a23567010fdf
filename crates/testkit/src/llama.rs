//! [`tiny_llama`]: a small synthetic Llama-architecture GGUF with a byte-level GPT-2
//! style vocabulary, for tests that need a whole model but not a real one.
//!
//! Tensors, in ggml order (ne0 = input dimension of a matrix), for `d` = `d_model`,
//! `kv` = `n_kv_heads · d / n_heads`, `f` = `ffn_dim`, `V` = vocabulary size:
//!
//! ```text
//! token_embd.weight        [d, V]    weight type   (row t = embedding of token t)
//! blk.N.attn_norm.weight   [d]       f32
//! blk.N.attn_q.weight      [d, d]    weight type
//! blk.N.attn_k.weight      [d, kv]   weight type
//! blk.N.attn_v.weight      [d, kv]   weight type
//! blk.N.attn_output.weight [d, d]    weight type
//! blk.N.ffn_norm.weight    [d]       f32
//! blk.N.ffn_gate.weight    [d, f]    weight type
//! blk.N.ffn_up.weight      [d, f]    weight type
//! blk.N.ffn_down.weight    [f, d]    weight type
//! output_norm.weight       [d]       f32
//! output.weight            [d, V]    weight type   (only with OutputHead::Separate)
//! ```
//!
//! Vocabulary: ids 0–2 are `<|endoftext|>`, `<|im_start|>` (bos), `<|im_end|>` (eos); ids
//! 3–258 the 256 bytes in byte order, spelled with GPT-2's `bytes_to_unicode` (space is
//! `Ġ`); then one token per merge of [`MERGES`], in merge order.

use crate::quant::{ggml, quantize_q4_0, quantize_q4_1, quantize_q8_0};
use crate::{GgufWriter, MetaArray, MetaValue, SplitMix64};

/// The element type of the weight matrices (norms are always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    F32,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl WeightType {
    /// The ggml type id.
    pub fn ggml_id(self) -> u32 {
        match self {
            WeightType::F32 => ggml::F32,
            WeightType::Q8_0 => ggml::Q8_0,
            WeightType::Q4_0 => ggml::Q4_0,
            WeightType::Q4_1 => ggml::Q4_1,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`) for a model of this type.
    pub fn file_type(self) -> u32 {
        match self {
            WeightType::F32 => 0,
            WeightType::Q4_0 => 2,
            WeightType::Q4_1 => 3,
            WeightType::Q8_0 => 7,
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            WeightType::F32 => crate::f32_bytes(values),
            WeightType::Q8_0 => quantize_q8_0(values),
            WeightType::Q4_0 => quantize_q4_0(values),
            WeightType::Q4_1 => quantize_q4_1(values),
        }
    }
}

/// Whether the model has its own `output.weight` or reuses `token_embd.weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputHead {
    Tied,
    Separate,
}

/// Shape and contents of the synthetic model. `d_model` and `ffn_dim` must be multiples
/// of 32 for the quantized weight types, and `d_model` a multiple of `n_heads`.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyLlamaConfig {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn_dim: usize,
    pub context_length: usize,
    pub rope_freq_base: f32,
    pub rms_norm_eps: f32,
    pub weight_type: WeightType,
    pub output: OutputHead,
    pub seed: u64,
    /// GGUF version to write: 2 or 3.
    pub gguf_version: u32,
}

impl Default for TinyLlamaConfig {
    /// 2 layers, d = 64, 4 heads, 2 KV heads, ffn 128, context 256, f32, tied output.
    fn default() -> Self {
        Self {
            n_layers: 2,
            d_model: 64,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_dim: 128,
            context_length: 256,
            rope_freq_base: 10_000.0,
            rms_norm_eps: 1e-5,
            weight_type: WeightType::F32,
            output: OutputHead::Tied,
            seed: 0x5EED,
            gguf_version: 3,
        }
    }
}

/// One tensor of the synthetic model, with the f32 values it was made from (before
/// quantization), so tests can compare against a reference.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyTensor {
    pub name: String,
    /// ggml order.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub values: Vec<f32>,
}

/// The synthetic model: its file bytes and what went into them.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyLlama {
    pub bytes: Vec<u8>,
    pub tensors: Vec<TinyTensor>,
    /// Token strings by id, as written to `tokenizer.ggml.tokens`.
    pub vocab: Vec<String>,
    pub config: TinyLlamaConfig,
}

/// Token ids of the special tokens.
pub const ENDOFTEXT_ID: u32 = 0;
pub const BOS_ID: u32 = 1;
pub const EOS_ID: u32 = 2;
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// The BPE merges, in rank order, spelled in GPT-2 byte characters (`Ġ` is a space).
pub const MERGES: [(&str, &str); 40] = [
    ("Ġ", "t"),
    ("Ġ", "a"),
    ("h", "e"),
    ("i", "n"),
    ("r", "e"),
    ("o", "n"),
    ("Ġt", "he"),
    ("e", "r"),
    ("Ġ", "s"),
    ("a", "t"),
    ("Ġ", "w"),
    ("Ġ", "o"),
    ("e", "n"),
    ("Ġ", "c"),
    ("i", "t"),
    ("i", "s"),
    ("a", "n"),
    ("o", "r"),
    ("e", "s"),
    ("Ġ", "b"),
    ("e", "d"),
    ("Ġ", "f"),
    ("in", "g"),
    ("Ġ", "p"),
    ("o", "u"),
    ("Ġa", "n"),
    ("a", "l"),
    ("a", "r"),
    ("Ġ", "m"),
    ("Ġo", "f"),
    ("Ġ", "h"),
    ("l", "l"),
    ("Ġ", "d"),
    ("Ġan", "d"),
    ("Ġ", "i"),
    ("Ġ", "l"),
    ("Ġi", "s"),
    ("Ġ", "H"),
    ("e", "l"),
    ("H", "e"),
];

/// ChatML, as SmolLM2-Instruct ships it (without the default system prompt).
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] \
+ '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt \
%}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the other 68
/// bytes to U+0100 upward in byte order (so space, the 33rd, is U+0120 `Ġ`).
pub fn byte_to_unicode(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        return char::from(byte);
    }
    let rank = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The vocabulary: specials, 256 byte tokens, then one token per merge.
pub fn vocab() -> Vec<String> {
    let mut v: Vec<String> = SPECIALS.iter().map(|s| (*s).to_owned()).collect();
    v.extend((0..=255u8).map(|b| byte_to_unicode(b).to_string()));
    v.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    v
}

/// Writes the synthetic model described by `config`.
pub fn tiny_llama(config: &TinyLlamaConfig) -> TinyLlama {
    let c = config;
    let vocab = vocab();
    let n_vocab = vocab.len();
    let head_dim = c.d_model / c.n_heads.max(1);
    let kv_dim = head_dim * c.n_kv_heads;
    let mut rng = SplitMix64::new(c.seed);
    let mut tensors = Vec::new();
    let matrix = |rng: &mut SplitMix64, name: String, n_in: usize, n_out: usize| {
        // Uniform in ±1/√n_in keeps activations of a random model near unit scale.
        let scale = 1.0 / (n_in as f32).sqrt();
        let values = (0..n_in * n_out).map(|_| rng.symmetric(scale)).collect();
        TinyTensor {
            name,
            dims: vec![n_in as u64, n_out as u64],
            ggml_type: c.weight_type.ggml_id(),
            values,
        }
    };
    let norm = |rng: &mut SplitMix64, name: String| TinyTensor {
        name,
        dims: vec![c.d_model as u64],
        ggml_type: ggml::F32,
        values: (0..c.d_model).map(|_| 1.0 + rng.symmetric(0.1)).collect(),
    };
    tensors.push(matrix(
        &mut rng,
        "token_embd.weight".into(),
        c.d_model,
        n_vocab,
    ));
    for l in 0..c.n_layers {
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        tensors.push(norm(&mut rng, p("attn_norm")));
        tensors.push(matrix(&mut rng, p("attn_q"), c.d_model, c.d_model));
        tensors.push(matrix(&mut rng, p("attn_k"), c.d_model, kv_dim));
        tensors.push(matrix(&mut rng, p("attn_v"), c.d_model, kv_dim));
        tensors.push(matrix(&mut rng, p("attn_output"), c.d_model, c.d_model));
        tensors.push(norm(&mut rng, p("ffn_norm")));
        tensors.push(matrix(&mut rng, p("ffn_gate"), c.d_model, c.ffn_dim));
        tensors.push(matrix(&mut rng, p("ffn_up"), c.d_model, c.ffn_dim));
        tensors.push(matrix(&mut rng, p("ffn_down"), c.ffn_dim, c.d_model));
    }
    tensors.push(norm(&mut rng, "output_norm.weight".into()));
    if c.output == OutputHead::Separate {
        tensors.push(matrix(&mut rng, "output.weight".into(), c.d_model, n_vocab));
    }

    let mut w = metadata(c, &vocab, head_dim);
    for t in &tensors {
        let data = if t.ggml_type == ggml::F32 {
            crate::f32_bytes(&t.values)
        } else {
            c.weight_type.encode(&t.values)
        };
        w = w.tensor(&t.name, t.ggml_type, &t.dims, data);
    }
    TinyLlama {
        bytes: w.to_bytes(),
        tensors,
        vocab,
        config: c.clone(),
    }
}

fn metadata(c: &TinyLlamaConfig, vocab: &[String], head_dim: usize) -> GgufWriter {
    let u32_of = |n: usize| MetaValue::U32(n as u32);
    let token_types = (0..vocab.len())
        .map(|i| if i < SPECIALS.len() { 3 } else { 1 })
        .collect();
    let merges = MERGES
        .iter()
        .map(|(a, b)| format!("{a} {b}").into_bytes())
        .collect();
    GgufWriter::new()
        .version(c.gguf_version)
        .metadata("general.architecture", MetaValue::string("llama"))
        .metadata("general.name", MetaValue::string("tiny-llama"))
        .metadata(
            "general.file_type",
            MetaValue::U32(c.weight_type.file_type()),
        )
        .metadata("llama.block_count", u32_of(c.n_layers))
        .metadata("llama.context_length", u32_of(c.context_length))
        .metadata("llama.embedding_length", u32_of(c.d_model))
        .metadata("llama.feed_forward_length", u32_of(c.ffn_dim))
        .metadata("llama.attention.head_count", u32_of(c.n_heads))
        .metadata("llama.attention.head_count_kv", u32_of(c.n_kv_heads))
        .metadata("llama.rope.freq_base", MetaValue::F32(c.rope_freq_base))
        .metadata("llama.rope.dimension_count", u32_of(head_dim))
        .metadata(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(c.rms_norm_eps),
        )
        .metadata("llama.vocab_size", u32_of(vocab.len()))
        .metadata("tokenizer.ggml.model", MetaValue::string("gpt2"))
        .metadata("tokenizer.ggml.pre", MetaValue::string("smollm"))
        .metadata("tokenizer.ggml.tokens", MetaValue::strings(vocab))
        .metadata(
            "tokenizer.ggml.token_type",
            MetaValue::Array(MetaArray::I32(token_types)),
        )
        .metadata(
            "tokenizer.ggml.merges",
            MetaValue::Array(MetaArray::String(merges)),
        )
        .metadata("tokenizer.ggml.bos_token_id", MetaValue::U32(BOS_ID))
        .metadata("tokenizer.ggml.eos_token_id", MetaValue::U32(EOS_ID))
        .metadata(
            "tokenizer.ggml.unknown_token_id",
            MetaValue::U32(ENDOFTEXT_ID),
        )
        .metadata("tokenizer.ggml.padding_token_id", MetaValue::U32(EOS_ID))
        .metadata("tokenizer.ggml.add_space_prefix", MetaValue::Bool(false))
        .metadata("tokenizer.ggml.add_bos_token", MetaValue::Bool(false))
        .metadata("tokenizer.chat_template", MetaValue::string(CHAT_TEMPLATE))
}

impl TinyLlama {
    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TinyTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_to_unicode_matches_gpt2() {
        assert_eq!(byte_to_unicode(b' '), 'Ġ');
        assert_eq!(byte_to_unicode(b'\n'), 'Ċ');
        assert_eq!(byte_to_unicode(b'a'), 'a');
        assert_eq!(byte_to_unicode(0), '\u{100}');
        assert_eq!(byte_to_unicode(0x7f), '\u{121}');
        assert_eq!(byte_to_unicode(0xAD), '\u{143}');
        let all: std::collections::HashSet<char> = (0..=255).map(byte_to_unicode).collect();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn merges_build_on_earlier_tokens() {
        let v = vocab();
        assert_eq!(v.len(), 3 + 256 + MERGES.len());
        let unique: std::collections::HashSet<&String> = v.iter().collect();
        assert_eq!(unique.len(), v.len(), "tokens are unique");
        for (i, (a, b)) in MERGES.iter().enumerate() {
            let id = 3 + 256 + i;
            let known = &v[..id];
            assert!(
                known.iter().any(|t| t == a) && known.iter().any(|t| t == b),
                "{a} {b}"
            );
        }
    }

    #[test]
    fn deterministic_per_seed() {
        let c = TinyLlamaConfig {
            weight_type: WeightType::Q4_1,
            ..TinyLlamaConfig::default()
        };
        assert_eq!(tiny_llama(&c).bytes, tiny_llama(&c).bytes);
        let other = TinyLlamaConfig {
            seed: 1,
            ..c.clone()
        };
        assert_ne!(tiny_llama(&c).bytes, tiny_llama(&other).bytes);
    }
}
