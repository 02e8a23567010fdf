//! The pressure ladder of the [`Scheduler`]: what it does when the KV cache has no room
//! for a step ([`Scheduler::step`] walks it and retries), when a paused sequence
//! resumes, and when the ledger asks for memory back ([`Scheduler::ease`]).

use kvcache::{KvError, SeqId};

use super::{FinishReason, Phase, ReqId, Scheduler, is_room, room_short};
use crate::forward::EvalError;

impl Scheduler<'_, '_> {
    /// Gives back up to `want` bytes of KV RAM because the machine or the ledger is
    /// under pressure (the pressure ladder's entry, called between steps): free blocks'
    /// kept storage first, then paused sequences' blocks (demoted or written to disk),
    /// then the newest running sequences are preempted, one at a time, while more
    /// than one runs. Returns the bytes freed. Accepted work is kept: preempted
    /// requests resume when there is room.
    pub fn ease(&mut self, want: u64) -> u64 {
        self.stats.pressure_reclaims += 1;
        let before = self.engine.kv_bytes();
        let freed = |s: &Self| before.saturating_sub(s.engine.kv_bytes());
        self.engine.trim_free_blocks();
        while freed(self) < want {
            let short = want - freed(self);
            if self.drop_kept() {
                self.engine.trim_free_blocks();
                continue;
            }
            if matches!(self.reclaim_paused(short), Ok(true)) {
                continue;
            }
            let running = self.ranked(|p| p == Phase::Running);
            if running.len() <= 1 || !self.preempt(*running.last().expect("two or more")) {
                break;
            }
        }
        freed(self)
    }

    /// Brings a paused sequence's blocks back into RAM, other paused sequences' blocks
    /// making way (written to disk or demoted) if needed; returns whether it can run.
    /// A block that cannot be read back is computed again (the sequence is cut there).
    pub(super) fn resume(&mut self, seq: SeqId) -> Result<bool, EvalError> {
        let store = self.cfg.pressure.store.clone();
        // Running now: its own blocks are no longer candidates to make way.
        self.engine.seq_set_running(seq, true)?;
        loop {
            match self.engine.seq_prepare(seq, store.as_deref()) {
                Ok(()) => return Ok(true),
                Err(EvalError::Kv(KvError::Lost(..))) => {
                    self.stats.recomputes += 1;
                    return Ok(true);
                }
                Err(e) if is_room(&e) => {
                    // Free blocks kept for reuse hold storage a load cannot use: give
                    // it back first, then kept sequences go, then paused sequences give
                    // way.
                    if self.engine.trim_free_blocks() > 0 || self.drop_kept() {
                        continue;
                    }
                    if !self.reclaim_paused(room_short(&e).max(1))? {
                        self.engine.seq_set_running(seq, false)?;
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Rung 1 of the ladder: paused sequences' blocks give up `short` bytes of RAM
    /// (demoted if allowed, written to the store if there is one). Returns whether any
    /// block moved.
    pub(super) fn reclaim_paused(&mut self, short: u64) -> Result<bool, EvalError> {
        let store = self.cfg.pressure.store.clone();
        let demote = self.cfg.pressure.demote;
        if store.is_none() && !demote {
            return Ok(false);
        }
        let r = self.engine.reclaim(short, store.as_deref(), demote)?;
        for x in &r.decisions {
            match x.action {
                kvcache::policy::Action::Demote(..) => self.stats.demotions += 1,
                kvcache::policy::Action::Spill => self.stats.disk_writes += 1,
                kvcache::policy::Action::Compress(_) => {}
            }
        }
        Ok(!r.decisions.is_empty())
    }

    pub(super) fn fail_running(&mut self, e: &EvalError) {
        let ids: Vec<ReqId> = self
            .live
            .iter()
            .filter(|(_, l)| l.phase == Phase::Running)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.finish(id, FinishReason::Failed(e.to_string()));
        }
    }

    /// Walks the pressure ladder for a step that found no room; returns whether anything
    /// changed (then the step is tried again).
    pub(super) fn relieve(&mut self, short_bytes: u64) -> Result<bool, EvalError> {
        // 0. Kept sequences are a cache: they go first.
        if self.drop_kept() {
            return Ok(true);
        }
        // 1. Paused sequences give up RAM.
        if self.reclaim_paused(short_bytes.max(1))? {
            return Ok(true);
        }
        // 2. Preempt the lowest-ranked running sequence (when another one runs).
        let running = self.ranked(|p| p == Phase::Running);
        if running.len() <= 1 {
            // 3. The last runner stays; a paused sequence's KV is dropped instead (it is
            // computed again when it resumes).
            let paused = self
                .live
                .iter()
                .filter(|(_, l)| l.phase == Phase::Paused)
                .min_by_key(|(_, l)| l.rank())
                .map(|(&id, _)| id);
            let Some(id) = paused else {
                return Ok(false);
            };
            let l = self.live.get_mut(&id).expect("listed");
            let seq = l.seq.take().expect("paused sequences have one");
            l.phase = Phase::Waiting;
            self.engine.seq_remove(seq);
            self.stats.recomputes += 1;
            return Ok(true);
        }
        Ok(self.preempt(*running.last().expect("two or more run")))
    }

    /// Preempts running request `victim`: paused with its KV kept where the ladder can
    /// keep it (disk or fewer bits), else its KV dropped to be computed again. Returns
    /// whether it was running.
    pub(super) fn preempt(&mut self, victim: ReqId) -> bool {
        let keep = self.cfg.pressure.store.is_some() || self.cfg.pressure.demote;
        let Some(l) = self.live.get_mut(&victim) else {
            return false;
        };
        let Some(seq) = l.seq.filter(|_| l.phase == Phase::Running) else {
            return false;
        };
        self.stats.preemptions += 1;
        if keep {
            l.phase = Phase::Paused;
            // Cannot fail: the sequence is live in the engine.
            let _ = self.engine.seq_set_running(seq, false);
        } else {
            // Nowhere to keep its KV: drop it, compute it again on resume.
            l.phase = Phase::Waiting;
            l.seq = None;
            self.engine.seq_remove(seq);
            self.stats.recomputes += 1;
        }
        true
    }

    /// Nothing runs and nothing can start: the waiting requests cannot get room (a
    /// paused sequence's blocks cannot be read back). Fails the one that blocks so the
    /// rest can go on; accepted work is only ever ended this way when the cache itself
    /// cannot hold what the request was admitted with.
    pub(super) fn fail_stuck(&mut self) {
        if self.drop_kept() {
            return;
        }
        let waiting = self.ranked(|_| true);
        // Drop a paused one's KV first: it recomputes instead (nothing is lost).
        for &id in &waiting {
            let l = self.live.get_mut(&id).expect("listed");
            if let Some(seq) = l.seq.take() {
                l.phase = Phase::Waiting;
                self.engine.seq_remove(seq);
                self.stats.recomputes += 1;
                return;
            }
        }
        if let Some(&id) = waiting.first() {
            self.finish(
                id,
                FinishReason::Failed("no room in the KV cache for this request".into()),
            );
        }
    }
}
