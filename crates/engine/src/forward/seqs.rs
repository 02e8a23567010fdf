//! The session's sequences and their KV under the budget: parking and switching, shared
//! prefixes and the disk tier, read-ahead, and making room when the kv pool refuses.
//!
//! # Exact blocks
//! A reused block must hold the bytes this session would have computed for it, or the
//! answer changes. Equal tokens are not enough, because a token's KV depends on how it
//! was evaluated:
//! - with a quantized cache a prompt is read in micro-batches (`ubatch` tokens), each
//!   written f16 and quantized after it, so a token attends to f16 copies of the tokens
//!   before it in its micro-batch and to quantized ones before that;
//! - attention splits a query row's keys across threads when a call has few query rows
//!   ([`kernels::attention::splits_keys`]), and a split sums in another order.
//!
//! So the session counts the leading tokens whose KV is *exact* — what an evaluation
//! from position 0, in micro-batches of `ubatch` tokens on the same threads, computes: a
//! micro-batch is exact when everything before it is, it starts on a multiple of
//! `ubatch`, every earlier full block is still in the cache type's format (pressure has
//! demoted none), and it is whole or its rows are computed alone. Only exact blocks are
//! published (shared in RAM, written to disk), and a reuse stops on a multiple of
//! `ubatch` tokens, after which this session's micro-batches fall exactly where a fresh
//! evaluation's would. Decoded tokens (one at a time, keys split) are never exact.
//!
//! A cache mixed by age (`tiered`, `tiered-4bit`) is not reused at all: a block's format
//! depends on the sequence's length when it was demoted and on the path it took (f16 →
//! int8 → int4 → int2 rounds differently from f16 → int2), so a stored block is not the
//! block a run reaching that point would hold.
//!
//! The disk tier's directory ([`Session::kv_store_identity`]) covers everything else
//! that decides the bytes: every byte of the model file, the build, the cache type, the
//! block size, the micro-batch, the thread count and the kernels' instruction set.

use std::sync::Arc;

use kernels::attention::{AttnShape, splits_keys};
use kvcache::policy::{Decision, Rates, ReclaimStats, Trimmed};
use kvcache::{
    Access, BlockStore, Compression, KvError, PrefetchStats, Prefetcher, ReuseRule, SeqId, TierMix,
};

use super::{BLOCK_TOKENS, EvalError, Logits, Session};
use crate::memory::Accounts;

/// A sequence that is not current: its length, token ids and exact prefix.
#[derive(Debug)]
pub(super) struct Parked {
    n_past: usize,
    tokens: Vec<u32>,
    exact: usize,
}

/// Whether `LLMEM_LOG` asks for the KV debug log (`kv` in its comma-separated list):
/// every reclaim decision is printed to stderr with its score's factors.
fn debug_kv() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("LLMEM_LOG").is_ok_and(|v| v.split(',').any(|x| x.trim() == "kv"))
    })
}

impl Session<'_, '_> {
    /// Sets the rates the eviction score's cost factor uses (measured ones, from `llmem
    /// bench`, where they exist).
    pub fn set_rates(&mut self, rates: Rates) {
        self.rates = rates;
    }

    /// Counts of the demotions, compressions and spills made so far to stay in budget.
    pub fn reclaim_stats(&self) -> ReclaimStats {
        self.reclaim_stats
    }

    /// The last reclaim's decisions, each with the factors of its score.
    pub fn last_reclaim(&self) -> &[Decision] {
        &self.reclaim_log
    }

    /// Grows the current sequence to `total` tokens. When the kv pool's budget refuses,
    /// the other (parked) sequences give up the shortfall — demoted, compressed or
    /// spilled to the disk tier as the eviction score chooses — and the growth is tried
    /// again; the current sequence's blocks are never chosen. Refused (nothing changed)
    /// when nothing more can give.
    pub(super) fn reserve_kv(&mut self, total: usize) -> Result<(), EvalError> {
        loop {
            match self.kv.seq_reserve(self.seq, total) {
                Err(KvError::OverBudget(e)) => {
                    if self.make_room(e.shortfall().0, true)? == 0 {
                        return Err(KvError::OverBudget(e).into());
                    }
                }
                r => return Ok(r?),
            }
        }
    }

    /// Frees `short` bytes of KV RAM from the parked sequences (never the current one),
    /// then, if still short and `drop_read_ahead`, drops what was read ahead; returns the
    /// bytes freed (0 when nothing more can give).
    fn make_room(&mut self, short: u64, drop_read_ahead: bool) -> Result<u64, EvalError> {
        let store = self.writable_store();
        let r = self.kv.reclaim(
            short,
            store.as_deref(),
            Compression::None,
            &self.weights,
            &self.rates,
        )?;
        // A disk that refuses a spill is a cache gone bad, not a failed step: the block
        // stayed in RAM, and the store is only read from now on.
        if let Some(e) = r.spill_failure {
            self.store_failure.get_or_insert(e.to_string());
        }
        self.reclaim_log = r.decisions;
        self.reclaim_stats.add(&self.reclaim_log);
        if debug_kv() {
            eprintln!("llmem kv: short by {short} B");
            for d in &self.reclaim_log {
                eprintln!("llmem kv: {d}");
            }
        }
        let mut freed: u64 = self.reclaim_log.iter().map(|d| d.bytes_freed).sum();
        // Blocks read ahead but not yet taken are the last to go: dropped, re-read later.
        if freed < short
            && drop_read_ahead
            && let Some(pf) = self.prefetch.as_mut()
        {
            let held = pf.reserved_bytes();
            pf.clear();
            freed += held;
        }
        Ok(freed)
    }

    /// The store, if one is open that may still be written.
    fn writable_store(&self) -> Option<Arc<BlockStore>> {
        self.store
            .clone()
            .filter(|st| st.access() == Access::Exclusive && self.store_failure.is_none())
    }

    /// Why the disk store stopped being written, if it did (a full disk, a failing
    /// write); the session then only reads it. `None` while all is well.
    pub fn store_failure(&self) -> Option<&str> {
        self.store_failure.as_deref()
    }

    /// The directory name (digest) for this session's blocks in a disk store: covers
    /// `model_file_digest` (a digest of every byte of the model file, which the caller
    /// computes: [`crate::model::Model::digest`] is only a cheap identity for sharing in
    /// RAM), `build_digest` (identifies the code computing the blocks, e.g. a digest of
    /// the executable: a kernel that rounds differently makes other bytes) and everything
    /// else that decides a block's bytes — the cache type, block size, micro-batch,
    /// thread count and the kernels' instruction set (see the module doc).
    pub fn kv_store_identity(&self, model_file_digest: u64, build_digest: u64) -> u64 {
        store_identity(
            "session",
            [model_file_digest, build_digest],
            &self.cfg.kv_mix,
            self.cfg.ubatch,
            self.pool.n_threads(),
        )
    }

    /// What a reused block must match, or `None` when this cache type offers no reuse
    /// (a mix by age; see the module doc).
    pub fn reuse_rule(&self) -> Option<ReuseRule> {
        let format = self.cfg.kv_mix.uniform_format()?;
        Some(ReuseRule {
            digest: self.model.digest,
            format,
            align_tokens: lcm(self.cfg.ubatch, BLOCK_TOKENS),
        })
    }

    /// Publishes the current sequence's exact full blocks for sharing (none for a cache
    /// type that offers no reuse).
    pub(super) fn publish(&mut self) -> Result<(), EvalError> {
        if let Some(rule) = self.reuse_rule() {
            self.kv.seq_publish(
                self.seq,
                &self.tokens[..self.exact],
                rule.digest,
                rule.format,
            )?;
        }
        Ok(())
    }

    /// Whether the micro-batch of `n` tokens about to be evaluated at `n_past` computes
    /// exact KV (see the module doc).
    pub(super) fn chunk_is_exact(&self, n: usize) -> bool {
        let start = self.n_past;
        let Some(rule) = self.reuse_rule() else {
            return false;
        };
        if self.exact != start || !start.is_multiple_of(self.cfg.ubatch) {
            return false;
        }
        let c = &self.model.cfg;
        let shape = AttnShape {
            n_q: n,
            pos0: start,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            scale: 1.0,
            window: None,
        };
        if n != self.cfg.ubatch && splits_keys(&shape) {
            return false;
        }
        let Ok(blocks) = self.kv.seq_blocks(self.seq) else {
            return false;
        };
        blocks[..start / BLOCK_TOKENS]
            .iter()
            .all(|&id| self.kv.pool().meta(id).format == rule.format)
    }

    /// Opens a disk tier for this session's KV blocks (prefixes persist across runs),
    /// with a thread that reads spilled blocks ahead when asked ([`Session::prefetch`]).
    /// Open it under [`Session::kv_store_identity`] for prefixes to be found again.
    pub fn set_store(&mut self, store: BlockStore) -> Result<(), EvalError> {
        let store = Arc::new(store);
        let res = self.kv.pool().sibling_reservation().unwrap_or_else(|| {
            let a = Accounts::unlimited();
            a.open(a.kv)
        });
        self.prefetch = Some(Prefetcher::new(store.clone(), res)?);
        self.store = Some(store);
        Ok(())
    }

    /// Starts reading parked sequence `seq`'s spilled blocks back on the read-ahead
    /// thread, so that switching to it does not wait on the disk (a scheduler calls this
    /// a step ahead). Room for them is made first from the *other* parked sequences, as
    /// for any growth; blocks there is still no room for are loaded when `seq` runs.
    /// Returns the blocks asked for.
    pub fn prefetch(&mut self, seq: SeqId) -> Result<usize, EvalError> {
        let Some(pf) = &mut self.prefetch else {
            return Ok(0);
        };
        let mut n = self.kv.seq_prefetch(seq, pf)?;
        let short = self.kv.seq_unfetched_bytes(seq, pf)?;
        if short > 0 && seq != self.seq {
            let was = self.kv.is_running(seq);
            self.kv.seq_set_running(seq, true)?;
            let made = self.make_room(short, false);
            self.kv.seq_set_running(seq, was)?;
            if made? > 0 {
                let pf = self.prefetch.as_mut().expect("checked above");
                n += self.kv.seq_prefetch(seq, pf)?;
            }
        }
        Ok(n)
    }

    /// Read-ahead counts (all zero without a disk tier).
    pub fn prefetch_stats(&self) -> PrefetchStats {
        self.prefetch
            .as_ref()
            .map(Prefetcher::stats)
            .unwrap_or_default()
    }

    /// Starts a new, empty sequence in the same cache and makes it current; the previous
    /// one is kept (switch back with [`Session::switch_seq`]).
    pub fn new_seq(&mut self) -> SeqId {
        let s = self.kv.seq_new();
        self.park_current();
        self.seq = s;
        s
    }

    /// Parks the current sequence: its blocks become candidates for pressure.
    fn park_current(&mut self) {
        let _ = self.kv.seq_set_running(self.seq, false);
        let parked = Parked {
            n_past: self.n_past,
            tokens: std::mem::take(&mut self.tokens),
            exact: self.exact,
        };
        self.parked.insert(self.seq, parked);
        self.n_past = 0;
        self.exact = 0;
    }

    /// Makes `seq` current.
    pub fn switch_seq(&mut self, seq: SeqId) -> Result<(), EvalError> {
        if seq == self.seq {
            return Ok(());
        }
        let Some(p) = self.parked.remove(&seq) else {
            return Err(KvError::UnknownSeq(seq).into());
        };
        self.park_current();
        self.kv.seq_set_running(seq, true)?;
        self.seq = seq;
        self.n_past = p.n_past;
        self.tokens = p.tokens;
        self.exact = p.exact;
        Ok(())
    }

    /// Removes a sequence other than the current one.
    pub fn remove_seq(&mut self, seq: SeqId) {
        if seq != self.seq && self.parked.remove(&seq).is_some() {
            self.kv.seq_remove(seq);
            // Its blocks read ahead (if any) must not stay reserved.
            if let Some(pf) = self.prefetch.as_mut() {
                pf.clear();
            }
        }
    }

    /// For an empty current sequence: attaches the cached KV of the longest indexed (or,
    /// with a disk tier, stored) prefix of `prompt` that is exactly what evaluating it
    /// would compute (see the module doc: it ends on a multiple of the micro-batch, and a
    /// cache mixed by age reuses nothing), leaving at least its last token to evaluate.
    /// Returns the tokens reused; evaluate `prompt[reused..]` next.
    pub fn attach_prefix(&mut self, prompt: &[u32]) -> Result<usize, EvalError> {
        if self.n_past != 0 || prompt.is_empty() {
            return Ok(0);
        }
        let Some(rule) = self.reuse_rule() else {
            return Ok(0);
        };
        let max = (prompt.len() - 1).min(self.cfg.n_ctx);
        let n = match &self.store {
            Some(st) => self
                .kv
                .seq_attach_from_disk(self.seq, prompt, max, &rule, st)?,
            None => self.kv.seq_attach_prefix(self.seq, prompt, max, &rule)?,
        };
        self.n_past = n;
        self.exact = n;
        self.tokens.extend_from_slice(&prompt[..n]);
        Ok(n)
    }

    /// Writes the current sequence's exact full blocks to the disk tier, if one is open
    /// for writing and the cache type offers reuse, repairing any damaged file among them.
    /// Returns the blocks written. A write that fails (a full disk) is not an error of
    /// the session: it is recorded ([`Session::store_failure`]) and the store is only
    /// read from then on.
    pub fn persist(&mut self) -> Result<usize, EvalError> {
        let (Some(st), Some(rule)) = (self.writable_store(), self.reuse_rule()) else {
            return Ok(0);
        };
        let done = self.kv.seq_persist(self.seq, &st, rule.format)?;
        if let Some(e) = done.failure {
            self.store_failure = Some(e.to_string());
        }
        Ok(done.written)
    }

    /// Holds the disk store's root (this store's directory and the others beside it
    /// that no one holds) to `cap_bytes` of block files, least valuable first by the
    /// eviction score ([`kvcache::KvCache::trim_store`]). `None` without a writable
    /// store; a failure is recorded as for [`Session::persist`].
    pub fn trim_store(&mut self, cap_bytes: u64) -> Option<Trimmed> {
        let st = self.writable_store()?;
        let siblings = st.siblings();
        match self
            .kv
            .trim_store(&st, &siblings, cap_bytes, &self.weights, &self.rates)
        {
            Ok(t) => Some(t),
            Err(e) => {
                self.store_failure = Some(e.to_string());
                None
            }
        }
    }

    /// Brings every block of the current sequence back to a readable tier. A block lost
    /// on disk (missing or failing its checksum) is recomputed from the token history.
    pub(super) fn prepare(&mut self) -> Result<(), EvalError> {
        loop {
            let (store, pf) = (self.store.as_deref(), self.prefetch.as_mut());
            match self.kv.seq_prepare_with(self.seq, store, pf) {
                Ok(()) => return Ok(()),
                // Promoting a cold block needs RAM: other sequences make room first.
                Err(KvError::OverBudget(e)) => {
                    if self.make_room(e.shortfall().0, true)? == 0 {
                        return Err(KvError::OverBudget(e).into());
                    }
                }
                Err(KvError::Lost(..)) => {
                    let kept = self.kv.seq_len(self.seq)?;
                    let redo = self.tokens[kept..self.n_past].to_vec();
                    self.n_past = kept;
                    self.exact = self.exact.min(kept);
                    self.tokens.truncate(kept);
                    self.eval(&redo, Logits::Last)?;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Least common multiple (both positive).
fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a.max(1), b.max(1));
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a.max(1) / x * b.max(1)
}

/// A disk store's directory name for KV blocks computed by `path` ("session" or "batch":
/// the two evaluate in different orders, so their blocks are kept apart) of the model
/// and build `digests` identify, in cache type `mix`, with micro-batches of `ubatch` on
/// `n_threads` threads — everything that decides a block's bytes, with this crate's
/// version and the kernels' instruction set.
pub(crate) fn store_identity(
    path: &str,
    digests: [u64; 2],
    mix: &TierMix,
    ubatch: usize,
    n_threads: usize,
) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(b"llmem kv blocks 1");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(kernels::Isa::detect().name().as_bytes());
    // The session's directories were named before the batched path wrote any: its tag
    // stays out of the hash so they are found again.
    if path != "session" {
        h.update(path.as_bytes());
    }
    for x in [
        digests[0],
        digests[1],
        mix.sink_blocks as u64,
        mix.sink_format.bits() as u64,
        mix.hot_tokens as u64,
        mix.warm_tokens as u64,
        mix.cool_tokens as u64,
        mix.cold_format.bits() as u64,
        BLOCK_TOKENS as u64,
        ubatch as u64,
        n_threads as u64,
    ] {
        h.update(&x.to_le_bytes());
    }
    h.digest()
}
