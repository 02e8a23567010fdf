//! The forward pass: a [`Session`] holds one sequence's KV cache and the scratch buffers,
//! and turns tokens into logits.
//!
//! Prompts are processed in micro-batches of up to `ubatch` tokens (every weight row is
//! then read once per batch instead of once per token); generation feeds one token at a
//! time. All buffers are allocated when the session is created, sized for one
//! micro-batch, so memory does not grow with the prompt except through the KV cache.

pub(crate) mod seqs;

use std::sync::Arc;

use budget::OutOfBudget;
use kernels::attention::{AttnShape, PagedKv, attention, scratch_len};
use kernels::pool::ThreadPool;
use kvcache::policy::{Decision, Rates, ReclaimStats, Weights};
use kvcache::{
    BlockStore, KvBlock, KvCache, KvError, KvLayout, Prefetcher, SeqId, TierMix, WriteRun,
};

use crate::config::ModelConfig;
use crate::layers::{self, Ropes, Workspace};
use crate::memory::Accounts;

use crate::model::Model;

/// Tokens per KV block.
pub const BLOCK_TOKENS: usize = 16;

/// The KV layout of `cfg`'s model: its sliding-window layers ([`ModelConfig::layer_window`])
/// are marked, so the cache keeps only their window (docs/design/kv.md, "Sliding
/// windows").
pub fn kv_layout(cfg: &ModelConfig) -> KvLayout {
    let layout = KvLayout::new(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, BLOCK_TOKENS)
        .expect("model dimensions were validated at load");
    let windowed: Vec<bool> = (0..cfg.n_layers)
        .map(|il| cfg.layer_window(il).is_some())
        .collect();
    match cfg.hooks.sliding_window {
        Some(w) => layout
            .with_window(w, &windowed)
            .expect("one flag per layer, a positive window"),
        None => layout,
    }
}

/// Which positions of an [`Session::eval`] call need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every token's (scoring, teacher forcing).
    All,
}

/// Settings of a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    /// Most tokens the sequence may hold.
    pub n_ctx: usize,
    pub n_threads: usize,
    /// Tokens per prompt micro-batch.
    pub ubatch: usize,
    /// Precision of each KV block by age (default: all f16).
    pub kv_mix: TierMix,
    /// Most sequences the session's cache serves at once (blocks = n_ctx × this).
    pub n_seqs: usize,
}

/// Most prompt tokens per micro-batch with a mixed cache: each micro-batch is written as
/// f16 and demoted after it, so this bounds the f16 a long prompt holds beyond its mix.
/// Measured (1,946-token prompt, `tiered`): 128 instead of 512 read 3.5% slower and
/// peaked 15 MiB lower (KV ledger peak 12.7 instead of 18.1 MB).
pub const MIXED_UBATCH: usize = 128;

/// The micro-batch a session with `mix` uses when asked for `ubatch` (at most 4096;
/// at most [`MIXED_UBATCH`] when the mix transcodes blocks).
pub fn effective_ubatch(ubatch: usize, mix: &TierMix) -> usize {
    let u = ubatch.clamp(1, 4096);
    if mix.is_all_f16() {
        u
    } else {
        u.min(MIXED_UBATCH)
    }
}

impl SessionConfig {
    /// One sequence of `n_ctx` tokens with an all-f16 cache.
    pub fn new(n_ctx: usize, n_threads: usize, ubatch: usize) -> Self {
        SessionConfig {
            n_ctx,
            n_threads,
            ubatch,
            kv_mix: TierMix::uniform(kvcache::KvFormat::F16),
            n_seqs: 1,
        }
    }
}

/// Why an evaluation failed. Nothing is half-applied: on error the sequence is as before.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    #[error("context full: {have} tokens held + {adding} new > context size {n_ctx}")]
    ContextFull {
        have: usize,
        adding: usize,
        n_ctx: usize,
    },
    #[error("token id {id} is outside the vocabulary ({vocab} tokens)")]
    BadToken { id: u32, vocab: usize },
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("cannot start compute threads: {0}")]
    Threads(std::io::Error),
    #[error("scratch buffers over budget: {0}")]
    OverBudget(OutOfBudget),
    /// A batch item out of its sequence's order (batched engine).
    #[error("batch item of {seq:?} at position {pos}, expected {expected}")]
    BadPosition {
        seq: SeqId,
        pos: usize,
        expected: usize,
    },
    /// The KV cache cannot hold a batch now (batched engine); nothing changed.
    #[error(transparent)]
    NoRoom(#[from] kvcache::NoRoom),
}

// By hand, not `#[from]`: that would also return the cause from `source()`, and an error
// chain printed whole (`llmem: error: …`) would show it twice.
impl From<std::io::Error> for EvalError {
    fn from(e: std::io::Error) -> Self {
        EvalError::Threads(e)
    }
}

impl From<OutOfBudget> for EvalError {
    fn from(e: OutOfBudget) -> Self {
        EvalError::OverBudget(e)
    }
}

/// One sequence being evaluated against a model.
pub struct Session<'a, 'm> {
    model: &'a Model<'m>,
    cfg: SessionConfig,
    pool: ThreadPool,
    kv: KvCache,
    seq: SeqId,
    n_past: usize,
    /// Token ids of the current sequence (prefix hashing and recompute need them).
    tokens: Vec<u32>,
    /// Leading tokens of the current sequence whose KV is exactly what an evaluation from
    /// position 0 computes (see `seqs.rs`, "Exact blocks"); only those are shared.
    exact: usize,
    /// Other sequences' state, while another one is current.
    parked: std::collections::HashMap<SeqId, seqs::Parked>,
    /// Tokens run through the model (prefill and decode), for sharing statistics.
    computed_tokens: u64,
    /// Whether blocks out of every sliding window drop their windowed layers (on unless
    /// [`Session::set_thinning`] turned it off).
    thinning: bool,
    /// Most KV storage bytes held at once.
    peak_kv_bytes: u64,
    store: Option<Arc<BlockStore>>,
    /// Why the disk store stopped being written (a full disk, a failing write): from then
    /// on it is only read.
    store_failure: Option<String>,
    /// Reads disk-tier blocks ahead on its own thread (with a store).
    prefetch: Option<Prefetcher>,
    /// What the eviction score weighs.
    weights: Weights,
    /// The rates the eviction score's cost factor uses.
    rates: Rates,
    /// Demotions, compressions and spills made to fit this session's KV in its budget.
    reclaim_stats: ReclaimStats,
    /// The most recent of them, with their factors (for the debug log).
    reclaim_log: Vec<Decision>,
    ropes: Ropes,
    /// Scratch, logits and attention workspace, with their account in the ledger.
    w: Workspace,
}

impl<'a, 'm> Session<'a, 'm> {
    /// Creates a session with its own unlimited ledger: accounting only, nothing is ever
    /// refused for memory. An explicit opt-out of the budget for tests and benches; a
    /// command that runs under a budget uses [`Session::with_accounts`].
    pub fn unbudgeted(model: &'a Model<'m>, cfg: SessionConfig) -> Result<Self, EvalError> {
        Self::with_accounts(model, cfg, &Accounts::unlimited())
    }

    /// Creates a session whose buffers are reserved in `accounts`; KV blocks are
    /// allocated (and reserved) as the sequence grows, up to `n_ctx`.
    pub fn with_accounts(
        model: &'a Model<'m>,
        cfg: SessionConfig,
        accounts: &Accounts,
    ) -> Result<Self, EvalError> {
        let layout = kv_layout(&model.cfg);
        let mut kv = KvCache::new(layout, cfg.n_ctx.div_ceil(BLOCK_TOKENS) * cfg.n_seqs.max(1));
        kv.pool_mut().set_reservation(accounts.open(accounts.kv))?;
        // Windowed layers in a ring of their window (an all-f16 cache; see kvcache's ring).
        kv.set_ring(cfg.kv_mix.is_all_f16());
        let seq = kv.seq_new();
        let ubatch = effective_ubatch(cfg.ubatch, &cfg.kv_mix);
        let w = Workspace::new(model, ubatch, accounts)?;
        Ok(Session {
            model,
            cfg: SessionConfig { ubatch, ..cfg },
            pool: ThreadPool::new(cfg.n_threads)?,
            kv,
            seq,
            n_past: 0,
            tokens: Vec::new(),
            exact: 0,
            parked: std::collections::HashMap::new(),
            computed_tokens: 0,
            thinning: true,
            peak_kv_bytes: 0,
            store: None,
            store_failure: None,
            prefetch: None,
            weights: Weights::default(),
            rates: Rates::default(),
            reclaim_stats: ReclaimStats::default(),
            reclaim_log: Vec::new(),
            ropes: Ropes::new(model),
            w,
        })
    }

    /// Tokens held in the cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    pub fn model(&self) -> &Model<'m> {
        self.model
    }

    /// Bytes of KV blocks allocated now.
    pub fn kv_bytes(&self) -> u64 {
        self.kv.pool().storage_bytes()
    }

    /// The most KV storage bytes held at once so far.
    pub fn peak_kv_bytes(&self) -> u64 {
        self.peak_kv_bytes.max(self.kv_bytes())
    }

    /// Turns the dropping of windowed layers out of their window on (the default) or
    /// off. Off, every layer keeps every token, as an attention mask alone would: the
    /// logits are the same (attention never reads what thinning drops), the memory is
    /// not. For comparisons; nothing thinned before is restored.
    pub fn set_thinning(&mut self, on: bool) {
        self.thinning = on;
        self.kv.set_ring(on && self.cfg.kv_mix.is_all_f16());
    }

    /// Thins the current sequence's blocks out of every window of its next query (a
    /// model without sliding-window layers has none).
    fn thin(&mut self) -> Result<(), EvalError> {
        if self.thinning {
            self.kv.seq_thin(self.seq, self.n_past)?;
        }
        Ok(())
    }

    /// The KV cache (tiers, block counts, prefix index).
    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    /// Tokens run through the model so far (shared prefixes are not counted: they were
    /// not computed).
    pub fn computed_tokens(&self) -> u64 {
        self.computed_tokens
    }

    /// The current sequence.
    pub fn seq(&self) -> SeqId {
        self.seq
    }

    /// Bytes of scratch and logits buffers (as reserved in the ledger).
    pub fn scratch_bytes(&self) -> u64 {
        self.w.reserved_bytes()
    }

    /// Forgets the sequence (the cache's blocks return to the pool).
    pub fn reset(&mut self) {
        self.kv.seq_remove(self.seq);
        self.seq = self.kv.seq_new();
        self.n_past = 0;
        self.exact = 0;
        self.tokens.clear();
    }

    /// Drops cached tokens past `n` (to rewind or re-score). Fewer remain when a
    /// sliding-window layer's window at `n` would reach tokens whose windowed layers were
    /// dropped: [`Session::n_past`] says how many.
    pub fn truncate(&mut self, n: usize) -> Result<(), EvalError> {
        let n = self.kv.seq_truncate(self.seq, n)?;
        self.n_past = self.n_past.min(n);
        self.exact = self.exact.min(n);
        self.tokens.truncate(self.n_past);
        Ok(())
    }

    /// Appends `tokens` to the sequence and returns logits: `vocab` values for
    /// [`Logits::Last`], `tokens.len() × vocab` for [`Logits::All`].
    ///
    /// With an all-f16 cache a step the budget cannot hold is refused before anything is
    /// computed. With a mixed cache, or a model with sliding-window layers (thinned after
    /// each micro-batch), the step grows one micro-batch at a time; if the budget refuses
    /// part-way, the micro-batches already computed stay in the cache
    /// ([`Session::n_past`] says how far it got) and the error says why.
    pub fn eval(&mut self, tokens: &[u32], which: Logits) -> Result<&[f32], EvalError> {
        let vocab = self.model.cfg.vocab;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(EvalError::BadToken { id, vocab });
        }
        let n_ctx = self.cfg.n_ctx;
        if self.n_past + tokens.len() > n_ctx {
            return Err(EvalError::ContextFull {
                have: self.n_past,
                adding: tokens.len(),
                n_ctx,
            });
        }
        let n_out = match which {
            Logits::Last => 1.min(tokens.len()),
            Logits::All => tokens.len(),
        };
        let c = &self.model.cfg;
        let attn_need = tokens
            .chunks(self.cfg.ubatch)
            .enumerate()
            .map(|(i, ch)| {
                let shape = AttnShape {
                    n_q: ch.len(),
                    pos0: self.n_past + i * self.cfg.ubatch,
                    n_heads: c.n_heads,
                    n_kv_heads: c.n_kv_heads,
                    scale: 1.0,
                    window: None,
                };
                scratch_len(&shape, c.head_dim)
            })
            .max()
            .unwrap_or(0);
        let own_need = tokens
            .chunks(self.cfg.ubatch)
            .enumerate()
            .map(|(i, ch)| layers::own_rows_len(c, self.n_past + i * self.cfg.ubatch, ch.len()))
            .max()
            .unwrap_or(0);
        self.w.account(n_out * vocab, attn_need, own_need)?;
        self.prepare()?;
        // An all-f16 cache reserves the whole step up front (all or nothing); a mixed one
        // grows a micro-batch at a time and demotes as it goes, so a long prompt never
        // holds more than one micro-batch of f16 beyond its mix. So does a model with
        // sliding-window layers, thinned after each micro-batch: its windowed layers hold
        // their window (a ring, all-f16) or at most their window and one micro-batch.
        let stepwise = !self.cfg.kv_mix.is_all_f16() || self.kv.layout().window().is_some();
        self.thin()?;
        if !stepwise {
            self.reserve_kv(self.n_past + tokens.len())?;
        }
        self.w.fit(n_out * vocab, attn_need, own_need);
        let mut done = 0;
        for chunk in tokens.chunks(self.cfg.ubatch) {
            let last_chunk = done + chunk.len() == tokens.len();
            let out = match which {
                Logits::All => Some(done),
                Logits::Last if last_chunk => Some(usize::MAX),
                Logits::Last => None,
            };
            if stepwise {
                self.reserve_kv(self.n_past + chunk.len())?;
            }
            self.peak_kv_bytes = self.peak_kv_bytes.max(self.kv_bytes());
            let exact = self.chunk_is_exact(chunk.len());
            self.forward(chunk, out)?;
            self.thin()?;
            if exact {
                self.exact = self.n_past;
            }
            self.tokens.extend_from_slice(chunk);
            self.computed_tokens += chunk.len() as u64;
            done += chunk.len();
            if stepwise || last_chunk {
                self.publish()?;
                self.kv
                    .seq_apply_mix(self.seq, &self.cfg.kv_mix, Some(&self.pool))?;
            }
        }
        // Recency and frequency of use, for the eviction score.
        self.kv.seq_touch(self.seq)?;
        Ok(&self.w.logits)
    }

    /// Runs one micro-batch at positions `n_past..`. `out`: where its logits go — `None`
    /// for none, `Some(usize::MAX)` for only the last token's (into row 0), `Some(i)` for
    /// all of them starting at output row `i`.
    fn forward(&mut self, tokens: &[u32], out: Option<usize>) -> Result<(), EvalError> {
        let m = self.model;
        let c = &m.cfg;
        let n = tokens.len();
        let pos0 = self.n_past;
        let kvd = c.n_kv_heads * c.head_dim;
        let qd = c.n_heads * c.head_dim;
        let pool = &self.pool;
        let s = &mut self.w.s;

        layers::embed(m, &self.ropes, s, n, |t| (tokens[t], pos0 + t));
        let shape = AttnShape {
            n_q: n,
            pos0,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            scale: c.hooks.attn_scale,
            window: None,
        };
        let layout = *self.kv.layout();

        for (li, l) in m.layers.iter().enumerate() {
            layers::project_qkv(pool, c, l, li, &self.ropes, s, n, li > 0);
            let shape = AttnShape {
                window: c.layer_window(li),
                ..shape
            };
            // Thin blocks lack the windowed layers: attention must start past them.
            debug_assert!(
                shape.window.is_none_or(|w| {
                    let first = (pos0 + 1).saturating_sub(w) / BLOCK_TOKENS;
                    self.kv.seq_first_whole(self.seq).is_ok_and(|f| f <= first)
                }),
                "layer {li} would read a thin block"
            );
            // A sliding-window layer's step of several tokens reads its own rows from
            // scratch and writes them after (they may replace rows it reads: the ring).
            let own = layers::reads_own_rows(shape.window, n);
            let write = |kv: &mut KvCache, s: &layers::Scratch| {
                let run = WriteRun {
                    seq: self.seq,
                    pos0,
                    len: n,
                    row0: 0,
                };
                kv.write_runs(li, &[run], (&s.k[..n * kvd], &s.v[..n * kvd]), pool)
                    .expect("positions were reserved");
            };
            if own {
                s.own.clear();
                layers::own_rows(
                    &self.kv,
                    self.seq,
                    li,
                    pos0,
                    (&s.k[..n * kvd], &s.v[..n * kvd]),
                    &mut s.own,
                )?;
            } else {
                write(&mut self.kv, s);
            }
            {
                let mut views: Vec<KvBlock<'_>> = Vec::with_capacity(pos0 / BLOCK_TOKENS + 2);
                self.kv.layer_views(self.seq, li, &mut views)?;
                if own {
                    views.truncate(pos0 / BLOCK_TOKENS);
                    views.extend(layers::own_views(&s.own, kvd));
                }
                let paged = PagedKv {
                    blocks: &views,
                    geom: layout.geom(),
                    layer: layout.slot(li),
                };
                attention(
                    pool,
                    &s.q[..n * qd],
                    &paged,
                    &shape,
                    &mut s.attn,
                    &mut s.att[..n * qd],
                );
            }
            if own {
                write(&mut self.kv, s);
            }
            layers::finish_layer(pool, c, (l, m.layers.get(li + 1)), s, n);
        }
        self.n_past += n;

        let Some(out_row) = out else { return Ok(()) };
        let (first, n_out, row0) = if out_row == usize::MAX {
            (n - 1, 1, 0)
        } else {
            (0, n, out_row)
        };
        let vocab = c.vocab;
        layers::output_logits(
            pool,
            m,
            s,
            |j| first + j,
            n_out,
            &mut self.w.logits[row0 * vocab..(row0 + n_out) * vocab],
        );
        Ok(())
    }
}
