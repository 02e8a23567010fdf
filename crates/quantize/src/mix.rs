//! Which type each tensor gets: the targets (`--type`) and llama.cpp's per-tensor mix.
//!
//! The rules are those of `llama-quantize` without an importance matrix, for the targets
//! offered here:
//!
//! - Only 2-D (and larger) tensors whose name ends in `weight` are converted, except
//!   norms, MoE router gates, position and token-type embeddings, convolution kernels;
//!   everything else (1-D norms and biases) is copied as it is.
//! - A tensor already of its target type is copied, not requantized.
//! - Quantized targets only (the float targets convert every convertible tensor):
//!   - the output head, and the token embedding when the model has no separate output
//!     head (tied embeddings), get `Q6_K` (`Q8_0` for `q8_0`, and for a row length that
//!     is not a multiple of the target's block);
//!   - `q4_k_m`, `q5_k_m`: `attn_v` (or a fused `attn_qkv`) and `ffn_down` of the layers
//!     "using more bits" (the first and last eighth, and every third layer between) get
//!     `Q6_K`;
//!   - `q4_k` (llama.cpp's `Q4_K_S`): `attn_v` of the first four layers and `ffn_down`
//!     of the first eighth get `Q5_K`;
//!   - a row length that is not a multiple of the chosen type's block falls back:
//!     `Q4_K` → `Q5_0`, `Q5_K` → `Q5_1`, `Q6_K` → `Q8_0`, and to `F16` if even that does
//!     not fit.

use std::fmt;
use std::str::FromStr;

use gguf::{GgmlType, GgufFile, TensorInfo};

/// What `llmem quantize --type` produces.
#[allow(non_camel_case_types)] // the names users type and llama.cpp prints
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    Q8_0,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_K,
    Q6_K,
    Q4_K_M,
    Q5_K_M,
    BF16,
    F16,
}

/// A `--type` name that is not a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown quantization type '{0}' (known: {known})", known = Target::NAMES.join(", "))]
pub struct UnknownTarget(pub String);

impl Target {
    pub const ALL: [Target; 10] = [
        Target::Q8_0,
        Target::Q4_0,
        Target::Q4_1,
        Target::Q4_K,
        Target::Q5_K,
        Target::Q6_K,
        Target::Q4_K_M,
        Target::Q5_K_M,
        Target::BF16,
        Target::F16,
    ];

    pub const NAMES: [&'static str; 10] = [
        "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m", "bf16", "f16",
    ];

    /// The `--type` name (`q4_k_m`).
    pub fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|&t| t == self).unwrap_or(0)]
    }

    /// llama.cpp's `general.file_type` value (`enum llama_ftype`) for this mix.
    pub fn file_type(self) -> u32 {
        match self {
            Target::F16 => 1,
            Target::Q4_0 => 2,
            Target::Q4_1 => 3,
            Target::Q8_0 => 7,
            Target::Q4_K => 14, // MOSTLY_Q4_K_S
            Target::Q4_K_M => 15,
            Target::Q5_K => 16, // MOSTLY_Q5_K_S
            Target::Q5_K_M => 17,
            Target::Q6_K => 18,
            Target::BF16 => 32,
        }
    }

    /// The type most tensors get.
    pub fn base_type(self) -> GgmlType {
        match self {
            Target::Q8_0 => GgmlType::Q8_0,
            Target::Q4_0 => GgmlType::Q4_0,
            Target::Q4_1 => GgmlType::Q4_1,
            Target::Q4_K | Target::Q4_K_M => GgmlType::Q4_K,
            Target::Q5_K | Target::Q5_K_M => GgmlType::Q5_K,
            Target::Q6_K => GgmlType::Q6_K,
            Target::BF16 => GgmlType::BF16,
            Target::F16 => GgmlType::F16,
        }
    }
}

impl FromStr for Target {
    type Err = UnknownTarget;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        Self::NAMES
            .iter()
            .position(|&n| n == lower)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| UnknownTarget(s.to_string()))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a tensor is converted at all (llama.cpp leaves the others as they are).
pub fn convertible(t: &TensorInfo<'_>) -> bool {
    const KEEP: [&str; 12] = [
        "_norm.weight",
        "ffn_gate_inp.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "attn_rel_b.weight",
        "time_mix_",
        ".position_embd",
        ".patch_embd",
        ".rel_pos",
    ];
    let name = t.name();
    t.dims().len() >= 2
        && name.ends_with("weight")
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !KEEP.iter().any(|k| name.contains(k))
}

/// The tensor roles the mix treats differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Output,
    TokenEmbd,
    /// `attn_v`, and the tensors that hold it: a fused `attn_qkv`, MLA's `attn_kv_b`.
    AttnV,
    FfnDown,
    Other,
}

fn role(name: &str) -> Role {
    if name == "output.weight" {
        Role::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Role::TokenEmbd
    } else if ["attn_qkv.weight", "attn_v.weight", "attn_kv_b.weight"]
        .iter()
        .any(|k| name.contains(k))
    {
        Role::AttnV
    } else if name.contains("ffn_down") {
        Role::FfnDown
    } else {
        Role::Other
    }
}

fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64) % 3 == 2
}

/// The layer a `blk.N.` tensor belongs to.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The per-tensor choice for one file: counts the mix needs, gathered once.
pub(crate) struct Mixer {
    target: Target,
    tied_embeddings: bool,
    n_attn_v: usize,
    n_layers: usize,
    i_attn_v: usize,
    i_ffn_down: usize,
}

impl Mixer {
    pub(crate) fn new(file: &GgufFile<'_>, target: Target) -> Self {
        let n_attn_v = file
            .tensors()
            .iter()
            .filter(|t| role(t.name()) == Role::AttnV)
            .count();
        let n_layers = file
            .tensors()
            .iter()
            .filter_map(|t| layer_of(t.name()))
            .max()
            .map_or(0, |l| l + 1);
        Mixer {
            target,
            tied_embeddings: file.tensor("output.weight").is_none(),
            n_attn_v,
            n_layers,
            i_attn_v: 0,
            i_ffn_down: 0,
        }
    }

    /// The type tensor `t` gets; call once per tensor, in file order.
    pub(crate) fn choose(&mut self, t: &TensorInfo<'_>) -> GgmlType {
        if !convertible(t) {
            return t.ggml_type();
        }
        let base = self.target.base_type();
        if !base.is_quantized() {
            return base;
        }
        let ty = self.mixed(t, base);
        fallback(ty, t.dims()[0])
    }

    fn mixed(&mut self, t: &TensorInfo<'_>, base: GgmlType) -> GgmlType {
        let name = t.name();
        let r = role(name);
        let target = self.target;
        if r == Role::Output || (self.tied_embeddings && r == Role::TokenEmbd) {
            return if !t.dims()[0].is_multiple_of(base.block_size()) || base == GgmlType::Q8_0 {
                GgmlType::Q8_0
            } else {
                GgmlType::Q6_K
            };
        }
        match r {
            Role::AttnV => {
                let i = layer_of(name).unwrap_or(self.i_attn_v);
                self.i_attn_v += 1;
                match target {
                    Target::Q4_K_M | Target::Q5_K_M if use_more_bits(i, self.n_attn_v) => {
                        GgmlType::Q6_K
                    }
                    Target::Q4_K if i < 4 => GgmlType::Q5_K,
                    _ => base,
                }
            }
            Role::FfnDown => {
                let i = layer_of(name).unwrap_or(self.i_ffn_down);
                self.i_ffn_down += 1;
                let n = self.n_layers;
                match target {
                    Target::Q4_K_M | Target::Q5_K_M if use_more_bits(i, n) => GgmlType::Q6_K,
                    Target::Q4_K if i < n / 8 => GgmlType::Q5_K,
                    _ => base,
                }
            }
            _ => base,
        }
    }
}

/// llama.cpp's fallback for a row of `cols` values that is not a whole number of `ty`'s
/// blocks.
fn fallback(ty: GgmlType, cols: u64) -> GgmlType {
    if cols.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let next = match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if cols.is_multiple_of(next.block_size()) {
        next
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_names_are_refused() {
        for t in Target::ALL {
            assert_eq!(t.name().parse::<Target>(), Ok(t));
        }
        assert_eq!("Q4_K_M".parse::<Target>(), Ok(Target::Q4_K_M));
        let e = "q3_k".parse::<Target>().unwrap_err();
        assert!(
            e.to_string().contains("q3_k") && e.to_string().contains("q4_k_m"),
            "{e}"
        );
    }

    #[test]
    fn more_bits_layers_are_llama_cpps() {
        // 24 layers: the first 3, the last 3, and every third from layer 5.
        let picked: Vec<usize> = (0..24).filter(|&i| use_more_bits(i, 24)).collect();
        assert_eq!(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]);
    }

    #[test]
    fn rows_off_the_block_fall_back_like_llama_cpp() {
        assert_eq!(fallback(GgmlType::Q4_K, 576), GgmlType::Q5_0);
        assert_eq!(fallback(GgmlType::Q5_K, 576), GgmlType::Q5_1);
        assert_eq!(fallback(GgmlType::Q6_K, 576), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q4_K, 1536), GgmlType::Q4_K);
        assert_eq!(fallback(GgmlType::Q6_K, 100), GgmlType::F16);
    }
}
