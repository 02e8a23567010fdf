//! `testkit` makes the files and fakes that llmem's tests need; it is a dev-dependency
//! only and never ships in the binary.
//!
//! - [`GgufWriter`] writes valid GGUF v3 or v2 files with metadata of every type
//!   ([`MetaValue`], [`MetaArray`]) and tensors of any ggml type, honouring alignment, and
//!   reports a [`Layout`] of every field it wrote.
//! - [`corrupt`] breaks files on purpose: truncations at every offset, byte flips, patched
//!   counts and lengths, seeded random mutations.
//! - [`tiny_llama`] writes a small synthetic Llama-architecture model with a byte-level
//!   GPT-2 style vocabulary, in f32, Q8_0, Q4_0 or Q4_1, from a seeded [`SplitMix64`].
//! - [`quant`] holds the reference quantizers it uses.
//!
//! ```
//! use testkit::{GgufWriter, MetaValue, ggml};
//!
//! let (bytes, layout) = GgufWriter::new()
//!     .metadata("general.architecture", MetaValue::string("llama"))
//!     .tensor("w", ggml::F32, &[2, 2], testkit::f32_bytes(&[1.0, 2.0, 3.0, 4.0]))
//!     .to_bytes_with_layout();
//! assert_eq!(&bytes[..4], b"GGUF");
//! assert_eq!(layout.data_offset % 32, 0);
//!
//! let mut broken = bytes.clone();
//! testkit::corrupt::patch_u64(&mut broken, layout.tensor_count_at, 1 << 40);
//! ```

pub mod corrupt;
mod llama;
pub mod quant;
mod rng;
mod writer;

pub use llama::{
    BOS_ID, CHAT_TEMPLATE, ENDOFTEXT_ID, EOS_ID, MERGES, OutputHead, TinyLlama, TinyLlamaConfig,
    TinyTensor, WeightType, byte_to_unicode, tiny_llama, vocab,
};
pub use quant::{f16_bytes, f32_bytes, ggml};
pub use rng::SplitMix64;
pub use writer::{GgufWriter, KvLayout, Layout, MetaArray, MetaValue, TensorLayout, TensorSpec};
