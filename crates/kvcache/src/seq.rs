//! Sequences over the block pool: block tables, reservation, writes, fork, removal and
//! context shift. Prefix sharing lives in `prefix`, the tier mix in `mix`.
//!
//! Verbs follow llama.cpp's memory interface (`seq_remove`, `seq_copy`, `seq_keep`,
//! `seq_shift`). Growing a sequence is all-or-nothing: [`KvCache::seq_reserve`] either
//! gets every block it needs or changes nothing and returns [`KvError::NoRoom`], a value
//! the scheduler reacts to.
//!
//! # Invariants
//! - Each block's ref count equals the number of block-table entries pointing at it.
//! - A block shared by several tables (ref count > 1) is never written: forks copy the
//!   partial last block so that each sequence writes only blocks it owns alone.
//! - A table holds exactly `ceil(reserved_tokens / block_tokens)` blocks.
//! - The prefix index maps a hash to a block in use whose `hash` is that hash, and every
//!   hashed block in use is in the index.
//! - A sequence's `horizon` (the next query position it reported, [`KvCache::seq_thin`])
//!   is at most its reserved tokens, and every thin block in its table lies wholly
//!   before the window of a query at the horizon: no query of any holder reads a thin
//!   block's missing layers.

use std::collections::{BTreeMap, HashMap};

use kernels::kvquant::{KvBlock, KvFormat};
use kvdisk::BlockStore;

use crate::layout::KvLayout;
use crate::pool::{BlockId, BlockPool};

/// A sequence's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u32);

/// What went wrong with a cache operation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvError {
    #[error("KV cache full: {needed_blocks} more blocks needed, {free_blocks} free")]
    NoRoom {
        needed_blocks: usize,
        free_blocks: usize,
    },
    #[error("unknown sequence {0:?}")]
    UnknownSeq(SeqId),
    #[error("position {pos} is outside the {reserved} tokens reserved for {seq:?}")]
    OutOfRange {
        seq: SeqId,
        pos: usize,
        reserved: usize,
    },
    #[error("layer {layer} out of range (model has {n_layers})")]
    BadLayer { layer: usize, n_layers: usize },
    #[error("K/V row has {got} values, expected {expected}")]
    BadRow { got: usize, expected: usize },
    #[error("block {0:?} is shared and cannot be written")]
    SharedBlock(BlockId),
    #[error("block {0:?} is quantized and cannot be written")]
    NotWritable(BlockId),
    #[error("block {0:?} is compressed or on disk: promote it before reading")]
    NotResident(BlockId),
    #[error("block {0:?} is lost and must be recomputed: {1}")]
    Lost(BlockId, String),
    #[error("KV format {0:?} does not fit this model's head size")]
    Unsupported(KvFormat),
    #[error("KV disk tier: {0}")]
    Disk(String),
    #[error("plan for {0:?} was made before the sequence changed: plan again")]
    StalePlan(SeqId),
    #[error("KV cache over its memory budget: {0}")]
    OverBudget(budget::OutOfBudget),
    #[error(
        "block {0:?} holds only its global layers (its windowed layers were dropped once no query could see them)"
    )]
    Thinned(BlockId),
}

// By hand, not `#[from]`: that would also return the cause from `source()`, and an error
// chain printed whole would show it twice.
impl From<budget::OutOfBudget> for KvError {
    fn from(e: budget::OutOfBudget) -> Self {
        KvError::OverBudget(e)
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Sequence {
    pub(crate) blocks: Vec<BlockId>,
    pub(crate) reserved_tokens: usize,
    /// Leading blocks already hashed (published).
    pub(crate) hashed_blocks: usize,
    /// A running sequence's blocks are never chosen by pressure.
    pub(crate) running: bool,
    /// The position of the next query this sequence runs (as last reported to
    /// [`KvCache::seq_thin`]; 0 until then): blocks wholly before its window may be thin.
    pub(crate) horizon: usize,
    /// Table indices of its guests: thin blocks whose windowed rows are written into the
    /// block one window earlier (`ring`), ascending.
    pub(crate) guests: Vec<usize>,
}

/// The KV cache: a block pool, the block tables of live sequences, and the index of
/// full blocks by chained prefix hash.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) pool: BlockPool,
    pub(crate) seqs: BTreeMap<SeqId, Sequence>,
    next_seq: u32,
    pub(crate) index: HashMap<u64, BlockId>,
    /// Tokens whose KV was taken from shared blocks instead of being computed.
    pub(crate) reused_tokens: u64,
    /// New blocks may be guests of a host one window earlier ([`KvCache::set_ring`]).
    pub(crate) ring: bool,
}

impl KvCache {
    /// A cache of at most `capacity_blocks` blocks of `layout`.
    pub fn new(layout: KvLayout, capacity_blocks: usize) -> Self {
        KvCache {
            pool: BlockPool::new(layout, capacity_blocks),
            seqs: BTreeMap::new(),
            next_seq: 0,
            index: HashMap::new(),
            reused_tokens: 0,
            ring: false,
        }
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }
    pub fn pool_mut(&mut self) -> &mut BlockPool {
        &mut self.pool
    }
    pub fn layout(&self) -> &KvLayout {
        self.pool.layout()
    }
    /// Live sequences.
    pub fn seq_ids(&self) -> Vec<SeqId> {
        self.seqs.keys().copied().collect()
    }
    /// Tokens reused from shared prefix blocks so far.
    pub fn reused_tokens(&self) -> u64 {
        self.reused_tokens
    }
    /// Full blocks in the prefix index.
    pub fn indexed_blocks(&self) -> usize {
        self.index.len()
    }

    /// Starts an empty sequence.
    pub fn seq_new(&mut self) -> SeqId {
        let id = SeqId(self.next_seq);
        self.next_seq += 1;
        self.seqs.insert(
            id,
            Sequence {
                running: true,
                ..Sequence::default()
            },
        );
        id
    }

    /// Marks `seq` running (its blocks are left alone by pressure) or parked.
    pub fn seq_set_running(&mut self, seq: SeqId, running: bool) -> Result<(), KvError> {
        self.seqs
            .get_mut(&seq)
            .ok_or(KvError::UnknownSeq(seq))?
            .running = running;
        Ok(())
    }

    /// Whether `seq` is running (unknown sequences are not).
    pub fn is_running(&self, seq: SeqId) -> bool {
        self.seqs.get(&seq).is_some_and(|s| s.running)
    }

    /// Whether any running sequence's table holds `id`.
    pub fn shared_with_running(&self, id: BlockId) -> bool {
        self.seqs
            .values()
            .any(|s| s.running && s.blocks.contains(&id))
    }

    /// Tokens reserved for `seq`.
    pub fn seq_len(&self, seq: SeqId) -> Result<usize, KvError> {
        Ok(self.get(seq)?.reserved_tokens)
    }

    /// The block table of `seq`.
    pub fn seq_blocks(&self, seq: SeqId) -> Result<&[BlockId], KvError> {
        Ok(&self.get(seq)?.blocks)
    }

    /// Blocks needed to grow `seq` to `tokens` reserved tokens (plan, no mutation).
    pub fn blocks_needed(&self, seq: SeqId, tokens: usize) -> Result<usize, KvError> {
        let s = self.get(seq)?;
        Ok(tokens
            .div_ceil(self.layout().block_tokens())
            .saturating_sub(s.blocks.len()))
    }

    /// Grows `seq` to hold `tokens` tokens in all; all-or-nothing.
    pub fn seq_reserve(&mut self, seq: SeqId, tokens: usize) -> Result<(), KvError> {
        let needed = self.blocks_needed(seq, tokens)?;
        if needed > self.pool.free_blocks() {
            return Err(KvError::NoRoom {
                needed_blocks: needed,
                free_blocks: self.pool.free_blocks(),
            });
        }
        self.append_blocks(seq, needed)?;
        let s = self.seqs.get_mut(&seq).ok_or(KvError::UnknownSeq(seq))?;
        s.reserved_tokens = s.reserved_tokens.max(tokens);
        self.debug_check();
        Ok(())
    }

    /// Writes one token's keys and values (`n_kv_heads × head_dim` f16 each) for `layer`
    /// at position `pos` of `seq`. Only hot blocks that `seq` owns alone are writable.
    pub fn write(
        &mut self,
        seq: SeqId,
        layer: usize,
        pos: usize,
        k: &[u16],
        v: &[u16],
    ) -> Result<(), KvError> {
        let l = *self.layout();
        self.check_layer(layer)?;
        let row = l.n_kv_heads() * l.head_dim();
        for got in [k.len(), v.len()] {
            if got != row {
                return Err(KvError::BadRow { got, expected: row });
            }
        }
        let s = self.get(seq)?;
        if pos >= s.reserved_tokens {
            return Err(KvError::OutOfRange {
                seq,
                pos,
                reserved: s.reserved_tokens,
            });
        }
        let b = pos / l.block_tokens();
        let own = s.blocks[b];
        // A guest's windowed rows go to its host (`ring`), which no one else reads there.
        if self.pool.meta(own).thin && !s.guests.contains(&b) {
            return Err(KvError::Thinned(own));
        }
        let (id, hosted) = self.row_home(s, layer, b)?;
        if !hosted && self.pool.meta(id).ref_count > 1 {
            return Err(KvError::SharedBlock(id));
        }
        let t = pos % l.block_tokens();
        let data = self.pool.data_mut(id).ok_or(KvError::NotWritable(id))?;
        let hd = l.head_dim();
        for h in 0..l.n_kv_heads() {
            let ko = l.k_base(layer) + h * l.head_stride() + t * hd;
            let vo = l.v_base(layer) + h * l.head_stride() + t * hd;
            data[ko..ko + hd].copy_from_slice(&k[h * hd..(h + 1) * hd]);
            data[vo..vo + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
        }
        if hosted {
            self.lend(seq, b, t);
        }
        let m = self.pool.meta_mut(own);
        m.filled = m.filled.max(t as u16 + 1);
        Ok(())
    }

    /// Fills `out` with a view of each block of `seq`, in order (for attention). Fails
    /// with `NotResident` if a block must first be promoted ([`KvCache::seq_prepare`]).
    pub fn block_views<'a>(
        &'a self,
        seq: SeqId,
        out: &mut Vec<KvBlock<'a>>,
    ) -> Result<(), KvError> {
        out.clear();
        for &id in &self.get(seq)?.blocks {
            out.push(self.pool.view(id)?);
        }
        Ok(())
    }

    /// Makes every block of `seq` readable by attention: decompresses cold blocks and
    /// loads disk blocks (verified). A block whose file is missing or corrupt is
    /// reported as `Lost` with the sequence cut back to before it (it must be recomputed);
    /// any other error (no room in the budget) leaves the sequence as it was.
    pub fn seq_prepare(&mut self, seq: SeqId, store: Option<&BlockStore>) -> Result<(), KvError> {
        self.seq_prepare_with(seq, store, None)
    }

    /// Marks every block of `seq` as used now.
    pub fn seq_touch(&mut self, seq: SeqId) -> Result<(), KvError> {
        let blocks = self.get(seq)?.blocks.clone();
        for id in blocks {
            self.pool.touch(id);
        }
        Ok(())
    }

    /// Forks `src`: the new sequence shares every full block and gets its own copy of a
    /// partial last block (so neither writes into a shared block).
    pub fn seq_copy(&mut self, src: SeqId) -> Result<SeqId, KvError> {
        // The fork would share the hosts the source's guests still write into.
        self.seq_unfold(src)?;
        let s = self.get(src)?.clone();
        let bt = self.layout().block_tokens();
        let partial = s.reserved_tokens % bt != 0;
        if partial && self.pool.free_blocks() == 0 {
            return Err(KvError::NoRoom {
                needed_blocks: 1,
                free_blocks: 0,
            });
        }
        if partial {
            self.pool.account_for(1)?;
        }
        let mut blocks = s.blocks.clone();
        let n_full = if partial {
            blocks.len() - 1
        } else {
            blocks.len()
        };
        if partial {
            let last = *blocks.last().expect("partial implies a block");
            let fresh = self.pool.alloc().expect("a free block was checked");
            if let Err(e) = self.pool.copy_block(last, fresh) {
                self.pool.release(fresh);
                return Err(e);
            }
            *blocks.last_mut().expect("non-empty") = fresh;
        }
        for &id in &blocks[..n_full] {
            self.pool.retain(id);
        }
        let id = self.seq_new();
        self.seqs.insert(
            id,
            Sequence {
                blocks,
                reserved_tokens: s.reserved_tokens,
                hashed_blocks: s.hashed_blocks.min(n_full),
                running: true,
                horizon: s.horizon,
                guests: Vec::new(),
            },
        );
        self.debug_check();
        Ok(id)
    }

    pub(crate) fn release(&mut self, id: BlockId) {
        if let Some(h) = self.pool.release(id)
            && self.index.get(&h) == Some(&id)
        {
            self.index.remove(&h);
        }
    }

    /// Drops `seq` and its references; unknown ids are ignored (removal is idempotent).
    pub fn seq_remove(&mut self, seq: SeqId) {
        self.drop_guests_from(seq, 0);
        if let Some(s) = self.seqs.remove(&seq) {
            for id in s.blocks {
                self.release(id);
            }
        }
        self.debug_check();
    }

    /// Removes every sequence but `seq`.
    pub fn seq_keep(&mut self, seq: SeqId) -> Result<(), KvError> {
        self.get(seq)?;
        for other in self.seq_ids() {
            if other != seq {
                self.seq_remove(other);
            }
        }
        Ok(())
    }

    /// Shrinks `seq` to its first `tokens` tokens, releasing whole blocks past them, and
    /// returns the tokens it keeps. That is fewer when a query at `tokens` would see a
    /// thin block (its windowed layers were dropped): the sequence is then cut back to
    /// the start of that block, and again until no kept thin block is in sight — the
    /// tokens past the cut must be computed again.
    pub fn seq_truncate(&mut self, seq: SeqId, tokens: usize) -> Result<usize, KvError> {
        let l = *self.layout();
        let bt = l.block_tokens();
        let s = self.get(seq)?;
        let mut tokens = tokens.min(s.reserved_tokens);
        while let Some(b) = (0..tokens.div_ceil(bt))
            .find(|&b| self.missing_in_sight(Some(s), s.blocks[b], b, tokens))
        {
            tokens = b * bt;
        }
        let keep = tokens.div_ceil(bt);
        self.drop_guests_from(seq, keep);
        let s = self.seqs.get_mut(&seq).expect("checked");
        let dropped: Vec<BlockId> = s.blocks.drain(keep.min(s.blocks.len())..).collect();
        s.reserved_tokens = s.reserved_tokens.min(tokens);
        s.hashed_blocks = s.hashed_blocks.min(s.reserved_tokens / bt);
        s.horizon = s.horizon.min(tokens);
        for id in dropped {
            self.release(id);
        }
        self.debug_check();
        Ok(tokens)
    }

    /// Reports that `seq`'s next query is at position `next` (or later): blocks wholly
    /// before that query's window no longer need their windowed layers, and those no
    /// other holder needs either are thinned ([`BlockPool::thin`]). A block shared with
    /// other sequences is thinned only when it is out of every holder's window; a
    /// compressed or spilled block stays as it is. Returns the RAM bytes freed (0 for a
    /// layout without windowed layers).
    pub fn seq_thin(&mut self, seq: SeqId, next: usize) -> Result<u64, KvError> {
        let l = *self.layout();
        self.settle(seq);
        let s = self.seqs.get_mut(&seq).ok_or(KvError::UnknownSeq(seq))?;
        s.horizon = s.horizon.max(next.min(s.reserved_tokens));
        if l.window().is_none() {
            return Ok(0);
        }
        let h = s.horizon;
        let s = &self.seqs[&seq];
        let mut freed = 0;
        let candidates: Vec<BlockId> = s
            .blocks
            .iter()
            .enumerate()
            .take_while(|&(b, _)| !l.window_sees(b, h))
            .map(|(_, &id)| id)
            .filter(|&id| !self.pool.meta(id).thin)
            .collect();
        for id in candidates {
            let shared = self.pool.meta(id).ref_count > 1;
            if shared
                && self.seqs.iter().any(|(&other, o)| {
                    other != seq
                        && o.blocks
                            .iter()
                            .enumerate()
                            .any(|(b, &x)| x == id && l.window_sees(b, o.horizon))
                })
            {
                continue;
            }
            // A host stays whole while its guest writes into it.
            if self.pool.meta(id).hosting {
                continue;
            }
            freed += self.pool.thin(id);
        }
        self.debug_check();
        Ok(freed)
    }

    /// Index of `seq`'s first block from which on every block is whole (none thin): a
    /// windowed layer's query must not see blocks before it.
    pub fn seq_first_whole(&self, seq: SeqId) -> Result<usize, KvError> {
        let s = self.get(seq)?;
        Ok(s.blocks
            .iter()
            .enumerate()
            .rposition(|(b, &id)| self.pool.meta(id).thin && !s.guests.contains(&b))
            .map_or(0, |b| b + 1))
    }

    /// Context shift: drops `n_drop` whole blocks that follow the first `n_sink` blocks
    /// (the attention sink), so the sequence can keep growing in a fixed window. Returns
    /// the number of tokens removed; the caller re-rotates the keys of the blocks that
    /// moved (positions shift down by that many) with [`KvCache::seq_keys_mut`].
    pub fn seq_shift(
        &mut self,
        seq: SeqId,
        n_sink: usize,
        n_drop: usize,
    ) -> Result<usize, KvError> {
        let bt = self.layout().block_tokens();
        // Moving blocks would move hosts away from their guests.
        self.seq_unfold(seq)?;
        let s = self.seqs.get(&seq).ok_or(KvError::UnknownSeq(seq))?;
        let full = s.reserved_tokens / bt;
        let n_drop = n_drop.min(full.saturating_sub(n_sink));
        // The moved blocks keep their distance to the next query; the sink blocks come
        // nearer to it, and one that is thin must not come into a window.
        let horizon = s.horizon.saturating_sub(n_drop * bt);
        if n_drop > 0
            && let Some(&id) = s.blocks[..n_sink.min(s.blocks.len())]
                .iter()
                .enumerate()
                .find(|&(b, &id)| self.missing_in_sight(Some(s), id, b, horizon))
                .map(|(_, id)| id)
        {
            return Err(KvError::Thinned(id));
        }
        let s = self.seqs.get_mut(&seq).expect("checked");
        let dropped: Vec<BlockId> = s.blocks.drain(n_sink..n_sink + n_drop).collect();
        s.reserved_tokens -= n_drop * bt;
        s.horizon = horizon;
        // The chain of hashes no longer describes the moved blocks' positions.
        s.hashed_blocks = s.hashed_blocks.min(n_sink);
        for id in dropped {
            self.release(id);
        }
        self.debug_check();
        Ok(n_drop * bt)
    }

    /// Calls `f(layer, key_row)` on every written key (f16, one KV head's `head_dim`
    /// values) of `seq`'s blocks from block `from` on — after a shift, to re-rotate them.
    /// Shared or quantized blocks are first copied / promoted to f16 (they are rewritten,
    /// so sharing would be wrong), then put back in their format.
    pub fn seq_keys_mut(
        &mut self,
        seq: SeqId,
        from: usize,
        mut f: impl FnMut(usize, &mut [u16]),
    ) -> Result<(), KvError> {
        let l = *self.layout();
        // A guest's keys live in its host: give it its own first.
        self.seq_unfold(seq)?;
        let blocks = self.get(seq)?.blocks.clone();
        for (b, mut id) in blocks.into_iter().enumerate().skip(from) {
            if self.pool.meta(id).ref_count > 1 {
                self.pool.account_for(1)?;
                let fresh = self.pool.alloc().ok_or(KvError::NoRoom {
                    needed_blocks: 1,
                    free_blocks: 0,
                })?;
                self.pool.copy_block(id, fresh)?;
                self.release(id);
                self.seqs.get_mut(&seq).expect("checked").blocks[b] = fresh;
                id = fresh;
            }
            let meta = self.pool.meta(id);
            let (format, filled, thin) = (meta.format, meta.filled as usize, meta.thin);
            self.pool.meta_mut(id).hash = None;
            self.pool.set_format(id, KvFormat::F16)?;
            let data = self.pool.data_mut(id).expect("promoted to f16");
            // A thin block holds its global layers only.
            for layer in (0..l.n_layers()).filter(|&la| !thin || !l.is_windowed(la)) {
                for h in 0..l.n_kv_heads() {
                    for t in 0..filled {
                        let o = l.k_base(layer) + h * l.head_stride() + t * l.head_dim();
                        f(layer, &mut data[o..o + l.head_dim()]);
                    }
                }
            }
            self.pool.set_format(id, format)?;
        }
        self.index
            .retain(|_, id| self.pool.meta(*id).hash.is_some());
        Ok(())
    }

    /// `BadLayer` unless `layer` is one of the layout's.
    pub(crate) fn check_layer(&self, layer: usize) -> Result<(), KvError> {
        let n_layers = self.layout().n_layers();
        if layer >= n_layers {
            return Err(KvError::BadLayer { layer, n_layers });
        }
        Ok(())
    }

    pub(crate) fn get(&self, seq: SeqId) -> Result<&Sequence, KvError> {
        self.seqs.get(&seq).ok_or(KvError::UnknownSeq(seq))
    }

    pub(crate) fn debug_check(&self) {
        #[cfg(debug_assertions)]
        self.check_invariants();
    }

    /// Checks the invariants of this type and of its pool.
    ///
    /// # Panics
    /// If any invariant is broken.
    pub fn check_invariants(&self) {
        self.pool.check_invariants();
        let mut refs: BTreeMap<BlockId, u32> = BTreeMap::new();
        let bt = self.layout().block_tokens();
        for (id, s) in &self.seqs {
            assert_eq!(
                s.blocks.len(),
                s.reserved_tokens.div_ceil(bt),
                "{id:?}: table length"
            );
            assert!(
                s.horizon <= s.reserved_tokens,
                "{id:?}: horizon past its tokens"
            );
            for (i, b) in s.blocks.iter().enumerate() {
                *refs.entry(*b).or_default() += 1;
                assert!(
                    !self.missing_in_sight(Some(s), *b, i, s.horizon),
                    "{id:?}: block {b:?} (#{i}) lacks rows inside the window of its next query"
                );
            }
            for &g in &s.guests {
                let wb = self.layout().window().unwrap_or(0) / bt;
                assert!(
                    g >= wb && g < s.blocks.len(),
                    "{id:?}: guest #{g} has no host"
                );
                let guest = self.pool.meta(s.blocks[g]);
                assert!(guest.thin, "{id:?}: guest #{g} is whole");
                let home = self.home(s, g).map(|h| self.pool.meta(h));
                assert!(
                    home.is_some_and(|h| h.hosting && !h.thin),
                    "{id:?}: guest #{g} has no whole hosting home"
                );
            }
        }
        for (b, n) in &refs {
            let m = self.pool.meta(*b);
            assert_eq!(m.ref_count, *n, "block {b:?}: ref count vs tables");
            if let Some(h) = m.hash {
                assert_eq!(
                    self.index.get(&h),
                    Some(b),
                    "hashed block {b:?} not indexed"
                );
            }
        }
        for (h, b) in &self.index {
            assert_eq!(self.pool.meta(*b).hash, Some(*h), "index entry {h:x} stale");
        }
        assert_eq!(
            refs.len(),
            self.pool.used_blocks(),
            "a used block is in no table"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout() -> KvLayout {
        KvLayout::new(2, 2, 4, 4).unwrap()
    }

    #[test]
    fn reserve_is_all_or_nothing() {
        let mut kv = KvCache::new(layout(), 3);
        let s = kv.seq_new();
        assert_eq!(
            kv.seq_reserve(s, 13),
            Err(KvError::NoRoom {
                needed_blocks: 4,
                free_blocks: 3
            })
        );
        assert_eq!(kv.pool().used_blocks(), 0);
        kv.seq_reserve(s, 12).unwrap();
        assert_eq!(kv.pool().used_blocks(), 3);
    }

    #[test]
    fn writes_land_in_the_documented_layout_and_forks_copy_partial_blocks() {
        let l = layout();
        let mut kv = KvCache::new(l, 8);
        let s = kv.seq_new();
        kv.seq_reserve(s, 6).unwrap();
        let k: Vec<u16> = (0..8).collect();
        let v: Vec<u16> = (100..108).collect();
        kv.write(s, 1, 5, &k, &v).unwrap();
        let b = kv.seq_blocks(s).unwrap()[1];
        let d = kv.pool().data(b);
        // layer 1, head 1, token 1 of block 1.
        assert_eq!(&d[l.k_base(1) + l.head_stride() + 4..][..4], &[4, 5, 6, 7]);
        assert_eq!(&d[l.v_base(1) + 4..][..4], &[100, 101, 102, 103]);
        let f = kv.seq_copy(s).unwrap();
        assert_eq!(kv.seq_blocks(f).unwrap()[0], kv.seq_blocks(s).unwrap()[0]);
        assert_ne!(kv.seq_blocks(f).unwrap()[1], b);
        assert_eq!(
            kv.pool().data(kv.seq_blocks(f).unwrap()[1]),
            kv.pool().data(b)
        );
        assert!(matches!(
            kv.write(f, 0, 0, &k, &v),
            Err(KvError::SharedBlock(_))
        ));
        kv.write(f, 0, 5, &k, &v).unwrap();
        kv.check_invariants();
    }

    #[test]
    fn block_storage_is_accounted_in_the_ledger_and_refused_past_it() {
        let l = layout();
        let bb = l.block_bytes();
        let budget = budget::BudgetBuilder::new(budget::Bytes(3 * bb))
            .pool("kv", budget::Policy::Tiered, budget::Bytes(3 * bb))
            .build()
            .unwrap();
        let kvp = budget.pool_id("kv").unwrap();
        let mut kv = KvCache::new(l, 100);
        kv.pool_mut()
            .set_reservation(budget.reserve(kvp, budget::Bytes(0)).unwrap())
            .unwrap();
        let s = kv.seq_new();
        kv.seq_reserve(s, 8).unwrap();
        assert_eq!(budget.used(kvp).0, 2 * bb);
        // Two more blocks would exceed the ledger: refused whole, nothing allocated.
        assert!(matches!(kv.seq_reserve(s, 16), Err(KvError::OverBudget(_))));
        assert_eq!(kv.seq_len(s).unwrap(), 8);
        assert_eq!(budget.used(kvp).0, 2 * bb);
        kv.seq_remove(s);
        kv.pool_mut().trim();
        assert_eq!(budget.used(kvp).0, 0);
        kv.check_invariants();
    }

    #[derive(Debug, Clone)]
    enum Op {
        New,
        Reserve(usize, usize),
        Copy(usize),
        Remove(usize),
        Truncate(usize, usize),
        Trim,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::New),
            (0..8usize, 0..40usize).prop_map(|(s, n)| Op::Reserve(s, n)),
            (0..8usize).prop_map(Op::Copy),
            (0..8usize).prop_map(Op::Remove),
            (0..8usize, 0..40usize).prop_map(|(s, n)| Op::Truncate(s, n)),
            Just(Op::Trim),
        ]
    }

    proptest! {
        /// Random operations against a reference model of sequence lengths: the cache
        /// agrees on every length, never exceeds capacity, and keeps its invariants.
        #[test]
        fn model_based(ops in proptest::collection::vec(op(), 1..120)) {
            let cap = 12;
            let mut kv = KvCache::new(layout(), cap);
            let mut model: Vec<(SeqId, usize)> = Vec::new();
            for op in ops {
                match op {
                    Op::New => model.push((kv.seq_new(), 0)),
                    Op::Reserve(i, n) if !model.is_empty() => {
                        let m = model.len();
                        let (s, len) = &mut model[i % m];
                        let want = (*len).max(n);
                        let need = want.div_ceil(4) - len.div_ceil(4);
                        let free = kv.pool().free_blocks();
                        match kv.seq_reserve(*s, n) {
                            Ok(()) => { prop_assert!(need <= free); *len = want; }
                            Err(KvError::NoRoom { .. }) => prop_assert!(need > free),
                            Err(e) => prop_assert!(false, "{e}"),
                        }
                    }
                    Op::Copy(i) if !model.is_empty() => {
                        let (s, len) = model[i % model.len()];
                        if let Ok(f) = kv.seq_copy(s) { model.push((f, len)); }
                    }
                    Op::Remove(i) if !model.is_empty() => {
                        let (s, _) = model.remove(i % model.len());
                        kv.seq_remove(s);
                    }
                    Op::Truncate(i, n) if !model.is_empty() => {
                        let m = model.len();
                        let (s, len) = &mut model[i % m];
                        kv.seq_truncate(*s, n).unwrap();
                        *len = (*len).min(n);
                    }
                    Op::Trim => kv.pool_mut().trim(),
                    _ => {}
                }
                kv.check_invariants();
                prop_assert!(kv.pool().used_blocks() <= cap);
                for (s, len) in &model {
                    prop_assert_eq!(kv.seq_len(*s).unwrap(), *len);
                }
            }
            for (s, _) in model { kv.seq_remove(s); }
            prop_assert_eq!(kv.pool().used_blocks(), 0);
        }
    }
}
