//! Plan, then apply: what a batch's growth needs, answered before anything changes.
//!
//! A batched step grows many sequences at once. [`KvCache::plan`] computes, without
//! mutating anything, what every sequence needs — new blocks, a copy of a shared partial
//! last block (copy on write), a quantized partial block brought back to f16 so it can be
//! written — and checks the total against the pool's free blocks and the ledger's `kv`
//! pool. "No room" is a value ([`NoRoom`], with the shortfall in blocks and bytes) that a
//! scheduler reacts to (evict, demote, preempt, queue). [`KvCache::apply`] is the only
//! mutation: it makes the reservations of a plan made against the current state, all or
//! nothing, and refuses a plan made against a state that has since changed.

use std::collections::BTreeMap;

use kernels::kvquant::KvFormat;

use crate::pool::{BlockId, Tier};
use crate::seq::{KvCache, KvError, SeqId};

/// A growth the cache cannot hold now: what it needed and what there was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "no room in the KV cache: {needed_blocks} blocks needed, {free_blocks} free; \
     {needed_bytes} bytes needed, {} available",
    available_bytes.map_or_else(|| "unlimited".to_string(), |b| b.to_string())
)]
pub struct NoRoom {
    /// Blocks the plan takes from the free queue.
    pub needed_blocks: usize,
    /// Blocks the pool could still hand out.
    pub free_blocks: usize,
    /// Bytes of storage the ledger would have to grant.
    pub needed_bytes: u64,
    /// What the ledger's `kv` pool could grant now (`None` without a ledger).
    pub available_bytes: Option<u64>,
}

impl NoRoom {
    /// Blocks short (0 when blocks are not what is missing).
    pub fn short_blocks(&self) -> usize {
        self.needed_blocks.saturating_sub(self.free_blocks)
    }

    /// Bytes short (0 when bytes are not what is missing).
    pub fn short_bytes(&self) -> u64 {
        self.available_bytes
            .map_or(0, |a| self.needed_bytes.saturating_sub(a))
    }
}

/// Why a plan could not be made. Exhaustive on purpose: a plan fails for exactly these
/// two reasons, and a scheduler matches on them (room is its business, the rest a bug).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The growth does not fit now; nothing changed.
    #[error(transparent)]
    NoRoom(#[from] NoRoom),
    /// A sequence is unknown, or its last block is not resident.
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// What has to happen to a sequence's partial last block before it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Partial {
    /// Nothing: no partial block, or one this sequence owns alone in f16.
    Writable,
    /// Shared with another sequence: copied into a block of its own.
    CopyOnWrite,
    /// Owned but quantized (a truncated, demoted block): re-encoded as f16.
    Promote,
}

/// One sequence's share of a [`Plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Growth {
    seq: SeqId,
    /// Reserved tokens when planned; applying to a sequence that changed is refused.
    from_tokens: usize,
    to_tokens: usize,
    /// The sequence's last block when planned.
    last: Option<BlockId>,
    /// Blocks appended to its table.
    append_blocks: usize,
    partial: Partial,
}

/// A checked growth of some sequences, made by [`KvCache::plan`] and carried out by
/// [`KvCache::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    growths: Vec<Growth>,
    blocks: usize,
    bytes: u64,
    /// `bytes` less what promoting partial blocks takes (granted as they are promoted).
    grow_bytes: u64,
}

impl Plan {
    /// Blocks the plan takes from the free queue (appended blocks and copies).
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Bytes of storage the ledger grants when it is applied.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Copies of shared partial blocks it makes.
    pub fn copies(&self) -> usize {
        self.growths
            .iter()
            .filter(|g| g.partial == Partial::CopyOnWrite)
            .count()
    }
}

impl KvCache {
    /// Plans growing each `(seq, new_tokens)` by that many tokens (a sequence named twice
    /// grows by the sum), without changing anything. Fails with [`NoRoom`] when the pool's
    /// free blocks or the ledger's available bytes cannot cover it.
    pub fn plan(&self, grows: &[(SeqId, usize)]) -> Result<Plan, PlanError> {
        let bt = self.layout().block_tokens();
        let f16_bytes = self.layout().block_bytes();
        let mut by_seq: BTreeMap<SeqId, usize> = BTreeMap::new();
        for &(seq, n) in grows {
            *by_seq.entry(seq).or_default() += n;
        }
        let (mut growths, mut blocks, mut promote_bytes) = (Vec::new(), 0, 0);
        // Appended blocks: whole ones (and copies), thin guests (`ring`).
        let (mut whole, mut thin) = (0, 0);
        for (seq, n) in by_seq {
            let s = self.get(seq)?;
            if n == 0 {
                continue;
            }
            let from = s.reserved_tokens;
            let to = from + n;
            let last = s.blocks.last().copied();
            let partial = match last {
                Some(id) if from % bt != 0 => {
                    let m = self.pool.meta(id);
                    if m.ref_count > 1 {
                        self.pool.view(id)?; // must be resident to be copied
                        Partial::CopyOnWrite
                    } else if m.format != KvFormat::F16 || m.tier != Tier::Hot {
                        self.pool.view(id)?; // must be resident to be re-encoded
                        promote_bytes += f16_bytes.saturating_sub(self.pool.block_ram_bytes(id));
                        Partial::Promote
                    } else {
                        Partial::Writable
                    }
                }
                _ => Partial::Writable,
            };
            let append_blocks = to.div_ceil(bt).saturating_sub(s.blocks.len());
            blocks += append_blocks + usize::from(partial == Partial::CopyOnWrite);
            let (w, t) = self.append_shape(seq, append_blocks)?;
            whole += w + usize::from(partial == Partial::CopyOnWrite);
            thin += t;
            growths.push(Growth {
                seq,
                from_tokens: from,
                to_tokens: to,
                last,
                append_blocks,
                partial,
            });
        }
        let grow_bytes = self.pool.new_blocks_bytes(whole, thin);
        let bytes = grow_bytes + promote_bytes;
        let free_blocks = self.pool.free_blocks();
        let available_bytes = self.pool.available_bytes();
        if blocks > free_blocks || available_bytes.is_some_and(|a| bytes > a) {
            return Err(NoRoom {
                needed_blocks: blocks,
                free_blocks,
                needed_bytes: bytes,
                available_bytes,
            }
            .into());
        }
        Ok(Plan {
            growths,
            blocks,
            bytes,
            grow_bytes,
        })
    }

    /// Carries out `plan`: reserves its blocks in the ledger, appends them to the tables,
    /// copies shared partial blocks and promotes quantized ones. Refused with
    /// [`KvError::StalePlan`] if a sequence changed since the plan was made, and with
    /// [`KvError::NoRoom`] / [`KvError::OverBudget`] if the pool or the ledger gave its room
    /// to someone else meanwhile. On error no table changes; the one change that can
    /// remain is a partial block already promoted back to f16 (the same tokens, more bytes).
    pub fn apply(&mut self, plan: Plan) -> Result<(), KvError> {
        for g in &plan.growths {
            let s = self.get(g.seq)?;
            if s.reserved_tokens != g.from_tokens || s.blocks.last().copied() != g.last {
                return Err(KvError::StalePlan(g.seq));
            }
            if let (Some(id), Partial::CopyOnWrite | Partial::Promote) = (g.last, g.partial) {
                self.pool.view(id)?; // demoted to a compressed tier since it was planned
            }
        }
        if plan.blocks > self.pool.free_blocks() {
            return Err(KvError::NoRoom {
                needed_blocks: plan.blocks,
                free_blocks: self.pool.free_blocks(),
            });
        }
        for g in plan
            .growths
            .iter()
            .filter(|g| g.partial == Partial::Promote)
        {
            let id = g.last.expect("a partial block was planned");
            self.pool.set_format(id, KvFormat::F16)?;
        }
        // All of it at once (each growth below then finds it granted): all or nothing.
        self.pool.grow_account(plan.grow_bytes)?;
        for g in plan.growths {
            if g.partial == Partial::CopyOnWrite {
                let old = g.last.expect("a partial block was planned");
                let copy = self.pool.alloc().expect("free blocks counted above");
                self.pool.copy_into_f16(old, copy)?;
                let s = self.seqs.get_mut(&g.seq).expect("checked above");
                *s.blocks.last_mut().expect("a partial block was planned") = copy;
                self.release(old);
            }
            // Cannot fail for want of blocks: they were counted above.
            self.append_blocks(g.seq, g.append_blocks)?;
            let s = self.seqs.get_mut(&g.seq).expect("checked above");
            s.reserved_tokens = g.to_tokens;
        }
        self.debug_check();
        Ok(())
    }
}
