//! Model hyper-parameters read from GGUF metadata.

use gguf::{GgufFile, Value};
use kernels::ops::RopeStyle;

use crate::LoadError;

/// Architectures the engine runs. They share one graph; what differs is in
/// [`ArchHooks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Arch {
    /// Llama 2/3, SmolLM, Mistral: no biases, normal RoPE.
    Llama,
    /// Qwen2: Llama plus Q/K/V biases and NeoX RoPE.
    Qwen2,
    /// Qwen3: Llama plus per-head RMSNorm on queries and keys, NeoX RoPE.
    Qwen3,
    /// Gemma 3: scaled embeddings, Q/K norms, norms after attention and the feed-forward
    /// block as well as before, GELU, sliding-window layers.
    Gemma3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            _ => return None,
        })
    }
}

/// The feed-forward block's activation on the gate, multiplied by the up projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) · up` (SwiGLU).
    Silu,
    /// `gelu(gate) · up`, GELU in its tanh form (GeGLU).
    GeluTanh,
}

/// How RoPE angles are scaled beyond the plain `base^(-2i/d)` frequencies.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// `rope.scaling.type = "linear"`: positions divided by `factor`.
    Linear {
        factor: f32,
    },
}

/// What one architecture does differently in the shared graph, all read from metadata
/// (or fixed by the architecture where llama.cpp fixes it).
#[derive(Clone, Debug, PartialEq)]
pub struct ArchHooks {
    /// Q/K/V projections have biases (`attn_q.bias`, …).
    pub qkv_bias: bool,
    /// Per-head RMSNorm with weights on queries and keys before RoPE (`attn_q_norm`,
    /// `attn_k_norm`).
    pub qk_norm: bool,
    /// RMSNorm on the attention and feed-forward outputs before their residual adds
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// Embeddings are multiplied by this (Gemma: √d_model).
    pub embed_scale: Option<f32>,
    pub activation: Activation,
    /// Attention logits are `q·k · attn_scale` (`1/√head_dim` unless the metadata says).
    pub attn_scale: f32,
    /// Logits become `cap · tanh(logits / cap)` (`final_logit_softcapping`).
    pub final_softcap: Option<f32>,
    /// Sliding-window attention: a local layer attends to the last `window` positions
    /// (itself included).
    pub sliding_window: Option<usize>,
    /// With a window: every `swa_pattern`-th layer (the last of each group) is global,
    /// the others local; 0 means every layer is local.
    pub swa_pattern: usize,
    /// RoPE base of the local layers (global ones use [`ModelConfig::rope_base`]).
    pub rope_base_local: f32,
    pub rope_scaling: RopeScaling,
}

impl ArchHooks {
    /// Llama's graph: nothing extra.
    pub fn llama(head_dim: usize, rope_base: f32) -> Self {
        ArchHooks {
            qkv_bias: false,
            qk_norm: false,
            post_norms: false,
            embed_scale: None,
            activation: Activation::Silu,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            final_softcap: None,
            sliding_window: None,
            swa_pattern: 0,
            rope_base_local: rope_base,
            rope_scaling: RopeScaling::None,
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
    /// What the architecture adds to the shared graph.
    pub hooks: ArchHooks,
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

/// The hooks of `arch`, from the file's `{arch}.*` keys.
fn hooks(
    file: &GgufFile<'_>,
    arch: Arch,
    k: &dyn Fn(&str) -> String,
    head_dim: usize,
    d_model: usize,
    rope_base: f32,
) -> Result<ArchHooks, LoadError> {
    let bad = |key: String, why: &str| LoadError::BadValue {
        key,
        why: why.into(),
    };
    let mut h = ArchHooks::llama(head_dim, rope_base);
    match arch {
        Arch::Llama => {}
        Arch::Qwen2 => h.qkv_bias = true,
        Arch::Qwen3 => h.qk_norm = true,
        Arch::Gemma3 => {
            h.qk_norm = true;
            h.post_norms = true;
            h.embed_scale = Some((d_model as f32).sqrt());
            h.activation = Activation::GeluTanh;
            // As llama.cpp: every 6th layer global, local layers on RoPE base 10,000.
            h.sliding_window = Some(meta_usize(file, &k("attention.sliding_window"))?);
            h.swa_pattern = 6;
            h.rope_base_local = 10_000.0;
        }
    }
    if let Some(s) = meta_f32(file, &k("attention.scale"))? {
        h.attn_scale = s;
    }
    if let Some(c) = meta_f32(file, &k("final_logit_softcapping"))? {
        if c <= 0.0 {
            return Err(bad(k("final_logit_softcapping"), "must be positive"));
        }
        h.final_softcap = Some(c);
    }
    if h.sliding_window == Some(0) {
        return Err(bad(k("attention.sliding_window"), "must be positive"));
    }
    h.rope_scaling = match meta_str(file, &k("rope.scaling.type"))? {
        None | Some("none") => RopeScaling::None,
        Some("linear") => {
            let factor = meta_f32(file, &k("rope.scaling.factor"))?.unwrap_or(1.0);
            if factor <= 0.0 {
                return Err(bad(k("rope.scaling.factor"), "must be positive"));
            }
            RopeScaling::Linear { factor }
        }
        Some(other) => {
            return Err(bad(
                k("rope.scaling.type"),
                &format!("'{other}' is not supported (none, linear)"),
            ));
        }
    };
    Ok(h)
}

impl ModelConfig {
    /// Reads the configuration of the file's `general.architecture`.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Self, LoadError> {
        let arch_name =
            meta_str(file, "general.architecture")?.ok_or_else(|| LoadError::MissingKey {
                key: "general.architecture".into(),
            })?;
        let arch = Arch::from_name(arch_name)
            .ok_or_else(|| LoadError::UnsupportedArch(arch_name.into()))?;
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
        // The head size is `attention.key_length` where the file states it (Gemma 3 and
        // Qwen3 heads are wider than d_model / heads), else d_model / heads.
        let head_dim = match file.get(&k("attention.key_length")) {
            Some(_) => meta_usize(file, &k("attention.key_length"))?,
            None => {
                if d_model % n_heads != 0 {
                    return Err(bad(
                        k("attention.head_count"),
                        "embedding length is not a multiple of heads",
                    ));
                }
                d_model / n_heads
            }
        };
        if file.get(&k("attention.value_length")).is_some()
            && meta_usize(file, &k("attention.value_length"))? != head_dim
        {
            return Err(bad(
                k("attention.value_length"),
                "value heads of another size than key heads",
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
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > kernels::attention::MAX_HEAD_DIM {
            return Err(bad(
                k("attention.key_length"),
                "head dimension must be even and ≤ 256",
            ));
        }
        if (n_heads * head_dim) % 32 != 0 {
            return Err(bad(
                k("attention.key_length"),
                "heads × head dimension must be a multiple of 32 (the activation block size)",
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
            Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => RopeStyle::Neox,
        };
        let hooks = hooks(file, arch, &k, head_dim, d_model, rope_base)?;
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
            hooks,
        })
    }

    /// The attention window of layer `il`: `Some(window)` for a sliding-window layer.
    pub fn layer_window(&self, il: usize) -> Option<usize> {
        let w = self.hooks.sliding_window?;
        let p = self.hooks.swa_pattern;
        (p == 0 || il % p < p - 1).then_some(w)
    }
}
