//! Model hyper-parameters read from GGUF metadata.

use gguf::{GgufFile, Value};
use kernels::ops::RopeStyle;

use crate::LoadError;

/// Architectures the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Arch {
    /// Llama 2/3, SmolLM, Mistral: no biases, normal RoPE.
    Llama,
    /// Qwen2: Llama plus Q/K/V biases and NeoX RoPE.
    Qwen2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Shape and constants of a decoder model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab: usize,
    pub ctx_train: usize,
    pub rope_base: f32,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
}

/// Caps on dimensions from a file: generous for real models, small enough that a hostile
/// file cannot make size arithmetic overflow or ask for absurd buffers.
const MAX_DIM: usize = 1 << 20;

pub(crate) fn meta_usize(file: &GgufFile<'_>, key: &str) -> Result<usize, LoadError> {
    let v = file
        .get(key)
        .ok_or_else(|| LoadError::MissingKey { key: key.into() })?;
    let n: Option<u64> = match v {
        Value::U8(x) => Some(u64::from(*x)),
        Value::U16(x) => Some(u64::from(*x)),
        Value::U32(x) => Some(u64::from(*x)),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    };
    match n.and_then(|n| usize::try_from(n).ok()) {
        Some(n) if n <= MAX_DIM => Ok(n),
        _ => Err(LoadError::BadValue {
            key: key.into(),
            why: format!("expected an integer ≤ {MAX_DIM}"),
        }),
    }
}

pub(crate) fn meta_f32(file: &GgufFile<'_>, key: &str) -> Result<Option<f32>, LoadError> {
    match file.get(key) {
        None => Ok(None),
        Some(Value::F32(x)) if x.is_finite() => Ok(Some(*x)),
        Some(Value::F64(x)) if x.is_finite() => Ok(Some(*x as f32)),
        Some(_) => Err(LoadError::BadValue {
            key: key.into(),
            why: "expected a finite float".into(),
        }),
    }
}

pub(crate) fn meta_str<'a>(file: &GgufFile<'a>, key: &str) -> Result<Option<&'a str>, LoadError> {
    match file.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => {
            std::str::from_utf8(s)
                .map(Some)
                .map_err(|_| LoadError::BadValue {
                    key: key.into(),
                    why: "not UTF-8".into(),
                })
        }
        Some(_) => Err(LoadError::BadValue {
            key: key.into(),
            why: "expected a string".into(),
        }),
    }
}

impl ModelConfig {
    /// Reads the configuration of the file's `general.architecture`.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Self, LoadError> {
        let arch_name =
            meta_str(file, "general.architecture")?.ok_or_else(|| LoadError::MissingKey {
                key: "general.architecture".into(),
            })?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => return Err(LoadError::UnsupportedArch(other.into())),
        };
        let k = |s: &str| format!("{arch_name}.{s}");
        let n_layers = meta_usize(file, &k("block_count"))?;
        let d_model = meta_usize(file, &k("embedding_length"))?;
        let n_heads = meta_usize(file, &k("attention.head_count"))?;
        let n_kv_heads = match file.get(&k("attention.head_count_kv")) {
            Some(_) => meta_usize(file, &k("attention.head_count_kv"))?,
            None => n_heads,
        };
        let d_ff = meta_usize(file, &k("feed_forward_length"))?;
        let ctx_train = meta_usize(file, &k("context_length")).unwrap_or(2048);
        let bad = |key: String, why: &str| LoadError::BadValue {
            key,
            why: why.into(),
        };
        if n_layers == 0 || d_model == 0 || n_heads == 0 || n_kv_heads == 0 || d_ff == 0 {
            return Err(bad(k("block_count"), "model dimensions must be non-zero"));
        }
        if d_model % n_heads != 0 {
            return Err(bad(
                k("attention.head_count"),
                "embedding length is not a multiple of heads",
            ));
        }
        if n_heads % n_kv_heads != 0 {
            return Err(bad(
                k("attention.head_count_kv"),
                "heads not a multiple of KV heads",
            ));
        }
        // Activations are quantized in 32-value blocks for every matrix product.
        for (key, v) in [("embedding_length", d_model), ("feed_forward_length", d_ff)] {
            if v % 32 != 0 {
                return Err(bad(
                    k(key),
                    "must be a multiple of 32 (the activation block size)",
                ));
            }
        }
        let head_dim = d_model / n_heads;
        if head_dim % 2 != 0 || head_dim > kernels::attention::MAX_HEAD_DIM {
            return Err(bad(
                k("embedding_length"),
                "head dimension must be even and ≤ 256",
            ));
        }
        if n_heads / n_kv_heads > kernels::attention::MAX_GROUP {
            return Err(bad(
                k("attention.head_count_kv"),
                "more than 16 query heads per KV head",
            ));
        }
        let vocab = match file.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => {
                return Err(LoadError::MissingKey {
                    key: "tokenizer.ggml.tokens".into(),
                });
            }
        };
        let rope_base = meta_f32(file, &k("rope.freq_base"))?.unwrap_or(10000.0);
        let rms_eps = meta_f32(file, &k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5);
        let rope_style = match arch {
            Arch::Llama => RopeStyle::Normal,
            Arch::Qwen2 => RopeStyle::Neox,
        };
        Ok(ModelConfig {
            arch,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            d_ff,
            vocab,
            ctx_train,
            rope_base,
            rope_style,
            rms_eps,
        })
    }

    /// Hot-tier KV bytes per token: layers × 2 × KV heads × head dim × 2 bytes.
    pub fn kv_bytes_per_token(&self) -> u64 {
        (self.n_layers * 2 * self.n_kv_heads * self.head_dim * 2) as u64
    }
}
