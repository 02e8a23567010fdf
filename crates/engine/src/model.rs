//! A loaded model: configuration and weight views borrowed from the mapped GGUF bytes.

use gguf::{GgmlType, GgufFile};
use kernels::matmul::QMatrix;
use kernels::quant::{WType, dequantize_row};

use crate::LoadError;
use crate::config::ModelConfig;

/// One decoder block's weights.
pub struct Layer<'m> {
    pub attn_norm: Vec<f32>,
    pub wq: QMatrix<'m>,
    pub wk: QMatrix<'m>,
    pub wv: QMatrix<'m>,
    pub wo: QMatrix<'m>,
    /// Q/K/V biases (Qwen2).
    pub bias_qkv: Option<[Vec<f32>; 3]>,
    /// Per-head RMSNorm weights of queries and keys, `head_dim` each (Qwen3, Gemma 3).
    pub qk_norm: Option<[Vec<f32>; 2]>,
    /// RMSNorm weights applied to the attention output and the feed-forward output
    /// before their residual adds (Gemma 3).
    pub post_norms: Option<[Vec<f32>; 2]>,
    pub ffn_norm: Vec<f32>,
    pub gate: QMatrix<'m>,
    pub up: QMatrix<'m>,
    pub down: QMatrix<'m>,
}

/// A model ready to run: every matrix is a view into the mapped file (no copy); only the
/// small f32 norm vectors are copied out, to get aligned `f32` slices.
pub struct Model<'m> {
    pub cfg: ModelConfig,
    pub tok_embd: QMatrix<'m>,
    /// The output head (the token embedding itself when the model ties them).
    pub output: QMatrix<'m>,
    pub output_norm: Vec<f32>,
    /// Per-pair RoPE frequency divisors (`rope_freqs.weight`, Llama 3.1's long-context
    /// scaling), `head_dim / 2` values.
    pub rope_freqs: Option<Vec<f32>>,
    pub layers: Vec<Layer<'m>>,
    /// Bytes of the file's tensor data (what a full residency maps in).
    pub weight_bytes: u64,
    /// Identifies the model for KV reuse: xxh3 of the file's length, its whole header
    /// (metadata and tensor table) and the first 4 KiB of every tensor. Cached KV blocks
    /// (prefix hashes, disk files) are only reused under the same digest.
    pub digest: u64,
}

/// See [`Model::digest`].
pub fn model_digest(file: &GgufFile<'_>) -> u64 {
    let bytes = file.bytes();
    let header = (file.data_offset() as usize).min(bytes.len());
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(&bytes[..header]);
    for t in file.tensors() {
        let d = file.tensor_data(t);
        h.update(&d[..d.len().min(4096)]);
    }
    h.digest()
}

pub(crate) fn wtype_of(name: &str, t: GgmlType) -> Result<WType, LoadError> {
    Ok(match t {
        GgmlType::F32 => WType::F32,
        GgmlType::F16 => WType::F16,
        GgmlType::Q4_0 => WType::Q4_0,
        GgmlType::Q4_1 => WType::Q4_1,
        GgmlType::Q8_0 => WType::Q8_0,
        GgmlType::Q5_0 => WType::Q5_0,
        GgmlType::Q5_1 => WType::Q5_1,
        GgmlType::Q2_K => WType::Q2_K,
        GgmlType::Q3_K => WType::Q3_K,
        GgmlType::Q4_K => WType::Q4_K,
        GgmlType::Q5_K => WType::Q5_K,
        GgmlType::Q6_K => WType::Q6_K,
        GgmlType::BF16 => WType::BF16,
        other => {
            return Err(LoadError::UnsupportedType {
                tensor: name.into(),
                ggml_type: other.name().into(),
            });
        }
    })
}

/// Looks up a 2-D tensor `[cols, rows]` (ggml order) and checks its shape.
fn matrix<'m>(
    file: &GgufFile<'m>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<QMatrix<'m>, LoadError> {
    let info = file
        .tensor(name)
        .ok_or_else(|| LoadError::MissingTensor { name: name.into() })?;
    let dims = info.dims();
    let want = [cols as u64, rows as u64];
    if dims != want {
        return Err(LoadError::Shape {
            tensor: name.into(),
            expected: want.to_vec(),
            got: dims.to_vec(),
        });
    }
    let wtype = wtype_of(name, info.ggml_type())?;
    QMatrix::new(wtype, rows, cols, file.tensor_data(info)).map_err(|e| LoadError::BadTensor {
        tensor: name.into(),
        why: e.to_string(),
    })
}

/// Looks up a 1-D tensor of `len` values and returns it as f32.
fn vector(file: &GgufFile<'_>, name: &str, len: usize) -> Result<Vec<f32>, LoadError> {
    let info = file
        .tensor(name)
        .ok_or_else(|| LoadError::MissingTensor { name: name.into() })?;
    if info.dims() != [len as u64] {
        return Err(LoadError::Shape {
            tensor: name.into(),
            expected: vec![len as u64],
            got: info.dims().to_vec(),
        });
    }
    let wtype = wtype_of(name, info.ggml_type())?;
    let data = file.tensor_data(info);
    if wtype.row_bytes(len) != Some(data.len()) {
        return Err(LoadError::BadTensor {
            tensor: name.into(),
            why: "size does not match its type".into(),
        });
    }
    let mut out = vec![0.0f32; len];
    dequantize_row(wtype, data, &mut out);
    Ok(out)
}

impl<'m> Model<'m> {
    /// Builds the model from a parsed GGUF file whose bytes outlive it.
    pub fn from_gguf(file: &GgufFile<'m>) -> Result<Self, LoadError> {
        let cfg = ModelConfig::from_gguf(file)?;
        let (d, hd) = (cfg.d_model, cfg.head_dim);
        let tok_embd = matrix(file, "token_embd.weight", cfg.vocab, d)?;
        let output = if file.tensor("output.weight").is_some() {
            matrix(file, "output.weight", cfg.vocab, d)?
        } else {
            tok_embd
        };
        let output_norm = vector(file, "output_norm.weight", d)?;
        let rope_freqs = match file.tensor("rope_freqs.weight") {
            Some(_) => Some(vector(file, "rope_freqs.weight", hd / 2)?),
            None => None,
        };
        let h = &cfg.hooks;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let b = |s: &str| format!("blk.{i}.{s}.bias");
            let bias_qkv = if h.qkv_bias {
                Some([
                    vector(file, &b("attn_q"), cfg.n_heads * hd)?,
                    vector(file, &b("attn_k"), cfg.n_kv_heads * hd)?,
                    vector(file, &b("attn_v"), cfg.n_kv_heads * hd)?,
                ])
            } else {
                None
            };
            let qk_norm = if h.qk_norm {
                Some([
                    vector(file, &n("attn_q_norm"), hd)?,
                    vector(file, &n("attn_k_norm"), hd)?,
                ])
            } else {
                None
            };
            let post_norms = if h.post_norms {
                Some([
                    vector(file, &n("post_attention_norm"), d)?,
                    vector(file, &n("post_ffw_norm"), d)?,
                ])
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: vector(file, &n("attn_norm"), d)?,
                wq: matrix(file, &n("attn_q"), cfg.n_heads * hd, d)?,
                wk: matrix(file, &n("attn_k"), cfg.n_kv_heads * hd, d)?,
                wv: matrix(file, &n("attn_v"), cfg.n_kv_heads * hd, d)?,
                wo: matrix(file, &n("attn_output"), d, cfg.n_heads * hd)?,
                bias_qkv,
                qk_norm,
                post_norms,
                ffn_norm: vector(file, &n("ffn_norm"), d)?,
                gate: matrix(file, &n("ffn_gate"), cfg.d_ff, d)?,
                up: matrix(file, &n("ffn_up"), cfg.d_ff, d)?,
                down: matrix(file, &n("ffn_down"), d, cfg.d_ff)?,
            });
        }
        let weight_bytes = file.tensors().iter().map(|t| t.size_bytes()).sum();
        Ok(Model {
            cfg,
            tok_embd,
            output,
            output_norm,
            rope_freqs,
            layers,
            weight_bytes,
            digest: model_digest(file),
        })
    }
}
