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

/// Bytes of the per-micro-batch buffers a session allocates for `ubatch` tokens (with the
/// token rows the tile kernels keep on the thread that runs the products).
pub fn scratch_bytes(cfg: &ModelConfig, ubatch: usize) -> u64 {
    let (d, qd, kvd) = (
        cfg.d_model,
        cfg.n_heads * cfg.head_dim,
        cfg.n_kv_heads * cfg.head_dim,
    );
    let widest = d.max(qd).max(cfg.d_ff);
    let f32s = ubatch * (2 * d + 2 * qd + 2 * kvd + 2 * cfg.d_ff);
    let q8 = ubatch * widest / QK * std::mem::size_of::<BlockQ8>();
    // RoPE angles per row: the global table's, and the local layers' where they differ.
    let tables = if cfg.hooks.sliding_window.is_some() {
        2
    } else {
        1
    };
    let rope = tables * ubatch * cfg.head_dim / 2 * 8;
    (f32s * 4 + q8 + rope) as u64 + kernels::matmul::token_rows_bytes(ubatch * widest)
}

/// Largest attention workspace of a session, in bytes: one partial row per work item.
/// The most items come either from a full micro-batch (one per KV head and query tile) or
/// from the most tokens that still split their keys, at the deepest position (the
/// splits grow with the depth, the rows with the tokens).
pub fn attention_scratch_bytes(cfg: &ModelConfig, ubatch: usize, n_ctx: usize) -> u64 {
    let shape = |n_q: usize, pos0: usize| kernels::attention::AttnShape {
        n_q,
        pos0,
        n_heads: cfg.n_heads,
        n_kv_heads: cfg.n_kv_heads,
        scale: 1.0,
        window: None,
    };
    let hd = cfg.head_dim;
    let full = kernels::attention::scratch_len(&shape(ubatch.min(n_ctx), 0), hd);
    let n = ubatch.min(n_ctx).min(kernels::attention::SPLIT_MAX_Q);
    let deep = kernels::attention::scratch_len(&shape(n, n_ctx - n), hd);
    (full.max(deep) * 4) as u64
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
    /// The process itself, outside the ledger: code, libraries, thread stacks, the
    /// allocator's arenas and page rounding, KV re-encoding in flight ([`runtime_bytes`]).
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
    /// Bytes one compute thread holds outside the ledger while it re-encodes one KV block
    /// (a decoded f16 copy and the new encoding, before the pool installs it); 0 for a
    /// cache whose blocks all stay f16.
    pub kv_transcode_bytes: u64,
    /// The OS page size: a buffer of 64 KiB or more is its own mapping, rounded up to it.
    pub page_bytes: u64,
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

/// The part of the process outside the ledger that does not depend on the configuration:
/// resident code and data of the binary and its libraries (6.6 MiB for a release build,
/// 7.9 MiB for the test profile's, whose dependencies are less optimized; both grew by
/// about 1.5 MiB with the ring and the NEON-era kernels since first measured), the main
/// thread's stack (under 0.1 MiB), the small blocks of the allocator's main heap beyond the
/// tokenizer's tables (under 0.1 MiB). Measured on x86-64 Linux with glibc; 10 MiB leaves
/// 2.1 MiB over the larger (docs/design/plan.md, "Runtime").
pub const RUNTIME_BASE_BYTES: u64 = 10 << 20;

/// What each thread beyond the main one may hold of its malloc arena: glibc gives threads
/// arenas of their own (up to 8 per CPU), which keep their small blocks and up to the trim
/// threshold (128 KiB) of free memory resident. Measured: 8 to 144 KiB per arena (64
/// threads, ctx 4096, tiered KV).
pub const THREAD_ARENA_BYTES: u64 = 192 << 10;

/// Buffers of 64 KiB or more other than KV blocks (scratch, logits, attention workspace,
/// tokenizer tables), each of which may round up to one more page.
const OTHER_LARGE_BUFFERS: u64 = 64;

/// Process memory outside the ledger for `input`, an upper bound:
///
/// - [`RUNTIME_BASE_BYTES`];
/// - each compute-pool worker (`threads - 1`: the calling thread is the main one) and the
///   KV read-ahead thread: its whole stack (`kernels::pool::WORKER_STACK_BYTES`,
///   `kvcache::PREFETCH_STACK_BYTES`: the most it can have resident) and
///   [`THREAD_ARENA_BYTES`];
/// - KV blocks re-encoded at once, one per thread and at most one per block
///   (`kv_transcode_bytes` each, plus two pages for the two buffers);
/// - one page per large buffer: the allocator maps each one on its own (the binary sets
///   glibc's mmap threshold to 64 KiB), and its header pushes a page-sized block into
///   one more page.
pub fn runtime_bytes(input: &PlanInput<'_>) -> u64 {
    // Saturating throughout: counts past MAX_CTX_TOKENS or MAX_SEQS plan as "more than
    // any budget", never as a wrapped small number.
    let threads = input.threads.max(1) as u64;
    let workers = threads - 1;
    let stacks = workers
        .saturating_mul(kernels::pool::WORKER_STACK_BYTES as u64)
        .saturating_add(kvcache::PREFETCH_STACK_BYTES as u64);
    let arenas = (workers + 1).saturating_mul(THREAD_ARENA_BYTES);
    let blocks = (input.n_ctx.div_ceil(crate::forward::BLOCK_TOKENS) as u64)
        .saturating_mul(input.n_seqs.max(1) as u64);
    let transcoding = if input.kv_transcode_bytes == 0 {
        0
    } else {
        threads.min(blocks).saturating_mul(
            input
                .kv_transcode_bytes
                .saturating_add(2 * input.page_bytes),
        )
    };
    let rounding = blocks
        .saturating_add(OTHER_LARGE_BUFFERS)
        .saturating_mul(input.page_bytes);
    [stacks, arenas, transcoding, rounding]
        .into_iter()
        .fold(RUNTIME_BASE_BYTES, u64::saturating_add)
}

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
        attention_scratch_bytes(cfg, input.ubatch, input.n_ctx)
    } else {
        u64::MAX
    };
    // A micro-batch's own rows of a sliding-window layer, read from scratch
    // (`layers::own_rows`), at the worst alignment: one sequence's micro-batch.
    let own_rows =
        crate::layers::own_rows_len(cfg, crate::forward::BLOCK_TOKENS - 1, input.ubatch) as u64 * 2;
    let scratch_bytes = scratch_bytes(cfg, input.ubatch)
        .saturating_add(attention)
        .saturating_add(own_rows)
        .saturating_add(cfg.vocab as u64 * 4);
    let runtime_bytes = runtime_bytes(input);
    let total_bytes = [
        input.tokenizer_bytes,
        kv_bytes,
        scratch_bytes,
        runtime_bytes,
    ]
    .into_iter()
    .fold(input.file_bytes, u64::saturating_add);
    Plan {
        weights_bytes: input.file_bytes,
        tokenizer_bytes: input.tokenizer_bytes,
        kv_bytes,
        scratch_bytes,
        runtime_bytes,
        total_bytes,
    }
}
