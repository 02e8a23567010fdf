//! llmem's inference engine: runs Llama-family decoder models from GGUF files on llmem's
//! own CPU kernels, with a paged KV cache.
//!
//! - [`config::ModelConfig`]: hyper-parameters from GGUF metadata.
//! - [`model::Model`]: weight views borrowed from the mapped file (no copies).
//! - [`forward::Session`]: one sequence — tokens in, logits out.
//! - [`batch::Engine`]: many sequences in one forward pass — a [`batch::Batch`] of
//!   `{seq, pos, token, wants_logits}` in, the logits asked for out.
//! - [`sched::Scheduler`]: continuous batching of many requests on one engine, with
//!   the pressure ladder; [`sched::service::Service`] runs one on its own thread.
//! - [`shared::SharedModel`]: a model owning its mapping, `Send + Sync`, for threads.
//! - [`sampler::Sampler`]: greedy or temperature/top-k/top-p sampling; it refuses logits
//!   that are NaN or infinite, and [`finite`] finds the weight behind them.
//! - [`chat`]: the model's own chat template, rendered.
//! - [`text::TextModel`]: a model plus its tokenizer and end-of-generation tokens.
//! - [`phases`]: where a forward pass's time goes, when asked.
//!
//! ```no_run
//! let file = weights::MappedFile::open("model.gguf".as_ref()).unwrap();
//! let gguf = gguf::GgufFile::parse(file.bytes()).unwrap();
//! let tm = engine::text::TextModel::from_gguf(&gguf).unwrap();
//! let cfg = engine::forward::SessionConfig::new(2048, 2, 512);
//! let mut session = engine::forward::Session::unbudgeted(&tm.model, cfg).unwrap();
//! let ids = tm.encode("The capital of France is");
//! let logits = session.eval(&ids, engine::forward::Logits::Last).unwrap();
//! println!("next: {}", engine::sampler::argmax(logits));
//! ```

pub mod batch;
pub mod chat;
pub mod config;
pub mod finite;
pub mod forward;
mod layers;
pub mod memory;
pub mod model;
pub mod phases;
pub mod sampler;
pub mod sched;
pub mod shared;
pub mod text;

/// Why a model could not be loaded. Each variant names the key or tensor at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error("unsupported architecture '{0}' (supported: llama, qwen2, qwen3, gemma3)")]
    UnsupportedArch(String),
    #[error("missing metadata key '{key}'")]
    MissingKey { key: String },
    #[error("metadata key '{key}': {why}")]
    BadValue { key: String, why: String },
    #[error("missing tensor '{name}'")]
    MissingTensor { name: String },
    #[error(
        "tensor '{tensor}' has unsupported type {ggml_type} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"
    )]
    UnsupportedType { tensor: String, ggml_type: String },
    #[error("tensor '{tensor}' has shape {got:?}, expected {expected:?}")]
    Shape {
        tensor: String,
        expected: Vec<u64>,
        got: Vec<u64>,
    },
    #[error("tensor '{tensor}': {why}")]
    BadTensor { tensor: String, why: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}
