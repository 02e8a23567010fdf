//! CPU compute kernels for llmem: quantized matrix products, paged attention and the
//! element-wise operations of a Llama-family decoder, run on one persistent thread pool.
//!
//! llmem owns its compute so that every buffer is visible to its memory ledger: these
//! kernels never allocate large buffers themselves; callers hand them slices.
//!
//! - [`quant`]: weight block formats (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`, the k-quants
//!   `Q2_K`..`Q6_K`, `F16`, `BF16`, `F32`) read in place from mapped GGUF bytes, and
//!   8-bit activation blocks ([`quant::BlockQ8`]).
//! - [`matmul`]: matrix × activations for one token (decode) or many (prefill), tiled,
//!   with integer dot products on quantized weights.
//! - [`attention`]: causal attention reading K/V straight from paged f16 blocks.
//! - [`ops`]: RMSNorm, RoPE, SwiGLU, softmax helpers.
//! - [`pool`]: the persistent thread pool (spins briefly, then sleeps).
//!
//! Every kernel has a portable path; AVX2+FMA+F16C (x86-64, detected at run time) and
//! NEON (aarch64) paths must give the same results, which the tests check.
//!
//! ```
//! use kernels::{matmul::{matmul, MatJob, QMatrix}, pool::ThreadPool, quant::{quantize_row_q8, BlockQ8, WType}};
//! let pool = ThreadPool::new(2).unwrap();
//! // A 2×32 F32 weight matrix, stored as raw little-endian bytes like a GGUF tensor.
//! let w: Vec<u8> = (0..64).flat_map(|i| (i as f32 / 64.0).to_le_bytes()).collect();
//! let w = QMatrix::new(WType::F32, 2, 32, &w).unwrap();
//! let x = vec![1.0f32; 32];
//! let mut xq = vec![BlockQ8::default(); 1];
//! quantize_row_q8(&x, &mut xq);
//! let mut out = vec![0.0f32; 2];
//! matmul(&pool, &mut [MatJob::new(w, &mut out)], &x, &xq, 1);
//! assert!((out[0] - (0..32).map(|i| i as f32 / 64.0).sum::<f32>()).abs() < 1e-4);
//! ```

pub mod attention;
pub mod isa;
pub mod kvquant;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod quant;
mod simd;

pub use isa::Isa;
