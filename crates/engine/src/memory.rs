//! The engine's accounts in the memory ledger, and the sizes it will ask for.
//!
//! Every large buffer the engine holds is covered by a reservation in one of three pools:
//! `weights` (the mapped model's resident bytes and the tokenizer's tables), `kv` (KV
//! block storage, grown block by block) and `scratch` (activations, attention workspace,
//! logits). [`plan`] computes those sizes from the model's shape without loading it, with
//! the same formulas the session uses when it reserves, so a plan and a run agree.

use budget::{Budget, BudgetBuilder, Bytes, OutOfBudget, Policy, PoolId, Reservation};
use kernels::quant::{BlockQ8, QK};

use crate::config::ModelConfig;

/// Where the engine takes its reservations.
#[derive(Clone)]
pub struct Accounts {
    pub budget: Budget,
    pub weights: PoolId,
    pub kv: PoolId,
    pub scratch: PoolId,
}

/// A budget lacks a pool the engine needs.
#[derive(Debug, thiserror::Error)]
#[error("the budget has no '{0}' pool (the engine needs weights, kv and scratch)")]
pub struct MissingPool(pub &'static str);

impl Accounts {
    /// Looks up the `weights`, `kv` and `scratch` pools of `budget`.
    pub fn of(budget: &Budget) -> Result<Self, MissingPool> {
        let id = |name: &'static str| budget.pool_id(name).ok_or(MissingPool(name));
        Ok(Accounts {
            budget: budget.clone(),
            weights: id("weights")?,
            kv: id("kv")?,
            scratch: id("scratch")?,
        })
    }

    /// A ledger with no practical limit, for callers that only want the accounting.
    pub fn unlimited() -> Self {
        let big = Bytes(1 << 60);
        let b = BudgetBuilder::new(Bytes(3 << 60))
            .pool("weights", Policy::Persistent, big)
            .pool("kv", Policy::Tiered, big)
            .pool("scratch", Policy::Circular, big)
            .build()
            .expect("a fixed, valid layout");
        Accounts::of(&b).expect("pools just built")
    }

    /// An empty reservation in `pool`, to grow later.
    pub fn open(&self, pool: PoolId) -> Reservation {
        self.budget
            .reserve(pool, Bytes(0))
            .expect("an empty reservation always fits")
    }

    /// Reserves `bytes` in `pool`.
    pub fn reserve(&self, pool: PoolId, bytes: u64) -> Result<Reservation, OutOfBudget> {
        self.budget.try_reserve(pool, Bytes(bytes))
    }
}

/// Bytes of the per-micro-batch buffers a session allocates for `ubatch` tokens.
pub fn scratch_bytes(cfg: &ModelConfig, ubatch: usize) -> u64 {
    let (d, qd, kvd) = (
        cfg.d_model,
        cfg.n_heads * cfg.head_dim,
        cfg.n_kv_heads * cfg.head_dim,
    );
    let widest = d.max(qd).max(cfg.d_ff);
    let f32s = ubatch * (2 * d + 2 * qd + 2 * kvd + 2 * cfg.d_ff);
    let q8 = ubatch * widest / QK * std::mem::size_of::<BlockQ8>();
    let f16s = 2 * kvd * 2;
    let rope = ubatch * cfg.head_dim / 2 * 8;
    (f32s * 4 + q8 + f16s + rope) as u64
}

/// Largest attention workspace of a session (f32s): one partial row per work item; work
/// items are at most max(KV heads × query tiles, 4 × threads splits) over any call.
pub fn attention_scratch_bytes(
    cfg: &ModelConfig,
    ubatch: usize,
    n_ctx: usize,
    threads: usize,
) -> u64 {
    let g = cfg.n_heads / cfg.n_kv_heads;
    let shape = |n_q: usize, pos0: usize| kernels::attention::AttnShape {
        n_q,
        pos0,
        n_heads: cfg.n_heads,
        n_kv_heads: cfg.n_kv_heads,
        scale: 1.0,
    };
    let _ = g;
    // The workspace is largest either for a full micro-batch or for one token at the
    // deepest position (most key splits).
    let a = kernels::attention::scratch_len(&shape(ubatch.min(n_ctx), 0), cfg.head_dim, threads);
    let b =
        kernels::attention::scratch_len(&shape(1, n_ctx.saturating_sub(1)), cfg.head_dim, threads);
    (a.max(b) * 4) as u64
}

/// What a configuration needs, byte by byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    /// Mapped model file (tensor data plus header), all resident.
    pub weights_bytes: u64,
    /// Tokenizer tables on the heap.
    pub tokenizer_bytes: u64,
    /// KV cache for the full context of every sequence.
    pub kv_bytes: u64,
    /// Activations, attention workspace and logits.
    pub scratch_bytes: u64,
    /// The process itself: code, libraries, thread stacks, allocator (measured, see the
    /// calibration notes in docs/design/plan.md).
    pub runtime_bytes: u64,
    pub total_bytes: u64,
}

/// Inputs of a [`plan`].
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    pub cfg: &'a ModelConfig,
    pub file_bytes: u64,
    pub tokenizer_bytes: u64,
    pub n_ctx: usize,
    pub n_seqs: usize,
    /// KV bytes per token per sequence.
    pub kv_bytes_per_token: u64,
    pub threads: usize,
    pub ubatch: usize,
}

/// Longest context a plan or a session is sized for, in tokens: 2^24 (16,777,216).
///
/// Sixteen times the longest context the supported architectures are trained for (1M
/// tokens); the f16 KV of even the smallest supported model (SmolLM2-135M, 23,040 bytes a
/// token) is 360 GiB there. Every context a user names is checked against it before any
/// work, so that the sizes derived from it (blocks, bytes, attention splits) stay far
/// from overflow: 2^24 tokens × 2^16 sequences × 2^22 bytes a token is 2^62.
pub const MAX_CTX_TOKENS: usize = 1 << 24;

/// Most sequences a plan is sized for (2^16): see [`MAX_CTX_TOKENS`].
pub const MAX_SEQS: usize = 1 << 16;

/// Process overhead outside the ledger: the binary's code and data, libc, thread stacks
/// and the allocator's own use. Measured on x86-64 Linux (docs/design/plan.md).
pub const RUNTIME_BYTES: u64 = 4 << 20;

/// Computes what `input` needs.
///
/// Sizes saturate at `u64::MAX` instead of wrapping: a context or sequence count past
/// [`MAX_CTX_TOKENS`] or [`MAX_SEQS`] (which callers refuse first) plans as "more than any
/// budget", never as a small number that fits. A wrapped product once planned
/// 8,796,093,022,208 sequences as `kv_bytes: 0, fits: true`.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let cfg = input.cfg;
    let bt = crate::forward::BLOCK_TOKENS as u64;
    let kv_bytes = (input.n_ctx as u64)
        .div_ceil(bt)
        .checked_mul(bt)
        .and_then(|tokens| tokens.checked_mul(input.kv_bytes_per_token))
        .and_then(|per_seq| per_seq.checked_mul(input.n_seqs as u64))
        .unwrap_or(u64::MAX);
    let attention = if input.n_ctx <= MAX_CTX_TOKENS {
        attention_scratch_bytes(cfg, input.ubatch, input.n_ctx, input.threads)
    } else {
        u64::MAX
    };
    let scratch_bytes = scratch_bytes(cfg, input.ubatch)
        .saturating_add(attention)
        .saturating_add(cfg.vocab as u64 * 4);
    let total_bytes = [
        input.tokenizer_bytes,
        kv_bytes,
        scratch_bytes,
        RUNTIME_BYTES,
    ]
    .into_iter()
    .fold(input.file_bytes, u64::saturating_add);
    Plan {
        weights_bytes: input.file_bytes,
        tokenizer_bytes: input.tokenizer_bytes,
        kv_bytes,
        scratch_bytes,
        runtime_bytes: RUNTIME_BYTES,
        total_bytes,
    }
}
