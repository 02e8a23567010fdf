//! The session's sequences and their KV under the budget: parking and switching, shared
//! prefixes and the disk tier, read-ahead, and making room when the kv pool refuses.

use std::sync::Arc;

use kvcache::policy::{Decision, Rates, ReclaimStats};
use kvcache::{BlockStore, Compression, KvError, PrefetchStats, Prefetcher, SeqId};

use super::{EvalError, Logits, Session};
use crate::memory::Accounts;

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
        let store = self.store.as_deref();
        self.reclaim_log =
            self.kv
                .reclaim(short, store, Compression::None, &self.weights, &self.rates)?;
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

    /// Opens a disk tier for this session's KV blocks (prefixes persist across runs),
    /// with a thread that reads spilled blocks ahead when asked ([`Session::prefetch`]).
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
        let toks = std::mem::take(&mut self.tokens);
        self.parked.insert(self.seq, (self.n_past, toks));
        self.n_past = 0;
    }

    /// Makes `seq` current.
    pub fn switch_seq(&mut self, seq: SeqId) -> Result<(), EvalError> {
        if seq == self.seq {
            return Ok(());
        }
        let Some((n, toks)) = self.parked.remove(&seq) else {
            return Err(KvError::UnknownSeq(seq).into());
        };
        self.park_current();
        self.kv.seq_set_running(seq, true)?;
        self.seq = seq;
        self.n_past = n;
        self.tokens = toks;
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
    /// with a disk tier, stored) prefix of `prompt`, leaving at least its last token to
    /// evaluate. Returns the tokens reused; evaluate `prompt[reused..]` next.
    pub fn attach_prefix(&mut self, prompt: &[u32]) -> Result<usize, EvalError> {
        if self.n_past != 0 || prompt.is_empty() {
            return Ok(0);
        }
        let digest = self.model.digest;
        let max = (prompt.len() - 1).min(self.cfg.n_ctx);
        let n = match &self.store {
            Some(st) => self
                .kv
                .seq_attach_from_disk(self.seq, prompt, digest, max, st)?,
            None => self.kv.seq_attach_prefix(self.seq, prompt, digest, max)?,
        };
        self.n_past = n;
        self.tokens.extend_from_slice(&prompt[..n]);
        Ok(n)
    }

    /// Writes the current sequence's full blocks to the disk tier (if one is open).
    /// Returns the blocks written.
    pub fn persist(&mut self) -> Result<usize, EvalError> {
        let Some(st) = &self.store else { return Ok(0) };
        Ok(self.kv.seq_persist(self.seq, st)?)
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
                    self.tokens.truncate(kept);
                    self.eval(&redo, Logits::Last)?;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
