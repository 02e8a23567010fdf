//! Chained block hashes for prefix sharing.
//!
//! A full block's hash is `xxh3(parent hash ‖ model digest ‖ its token ids)`: equal hashes
//! mean equal token prefixes from position 0 under the same model. The cache's sharing
//! verbs — publish, attach (from RAM or disk), persist — are here too.
//!
//! Equal tokens are not enough for equal bytes: a block's KV also depends on the format
//! it is kept in and on how the tokens were evaluated (which neighbours were already
//! quantized, how attention split its work). The engine decides which blocks are exact
//! (it publishes only those) and hands every reuse a [`ReuseRule`]: the format a reused
//! block must have and the token boundary a reuse must stop on. On disk, a block's file
//! name is [`disk_key`], which covers its format as well; the directory covers the rest
//! (model bytes, KV type, evaluation schedule: see the engine's store identity).

use kernels::kvquant::KvFormat;
use kvdisk::{BlockStore, Link};

use crate::pool::BlockId;
use crate::seq::{KvCache, KvError, SeqId};

/// The chained hash of one full block.
pub fn block_hash(parent: u64, tokens: &[u32], model_digest: u64) -> u64 {
    let mut buf = Vec::with_capacity(16 + tokens.len() * 4);
    buf.extend_from_slice(&parent.to_le_bytes());
    buf.extend_from_slice(&model_digest.to_le_bytes());
    for t in tokens {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&buf)
}

/// The disk store's key for a block of prefix hash `hash` kept in `format`: a file of
/// another format can never answer for it.
pub fn disk_key(hash: u64, format: KvFormat) -> u64 {
    let mut buf = [0u8; 9];
    buf[..8].copy_from_slice(&hash.to_le_bytes());
    buf[8] = format.bits() as u8;
    xxhash_rust::xxh3::xxh3_64(&buf)
}

/// What a reused block must match, beyond its tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReuseRule {
    /// Identifies the model in the chained hashes ([`block_hash`]).
    pub digest: u64,
    /// Every reused block must be in this format (a block demoted further under
    /// pressure, or kept in another, is not what a fresh evaluation would hold).
    pub format: KvFormat,
    /// A reuse stops on a multiple of this many tokens (itself a multiple of the block
    /// size): the evaluation that continues after it then splits its work exactly as an
    /// evaluation from position 0 would.
    pub align_tokens: usize,
}

impl ReuseRule {
    /// `n` rounded down to the rule's boundary (`bt`: tokens per block).
    fn round(&self, n: usize, bt: usize) -> usize {
        let align = self.align_tokens.max(bt).div_ceil(bt) * bt;
        n / align * align
    }
}

impl KvCache {
    /// Publishes `seq`'s full blocks for sharing: `tokens` are the sequence's token ids
    /// from position 0 whose KV is exact (only full blocks inside them are published),
    /// `digest` identifies the model and `format` is the one a shared block of this cache
    /// type has. Each full block gets the chained hash H(parent, its tokens, digest). If
    /// an identical block in `format` is already indexed, this sequence switches to it
    /// (deduplication) and its own copy is freed; one in another format (demoted under
    /// pressure: not the bytes this block will have) gives up its place in the index.
    pub fn seq_publish(
        &mut self,
        seq: SeqId,
        tokens: &[u32],
        digest: u64,
        format: KvFormat,
    ) -> Result<(), KvError> {
        let bt = self.layout().block_tokens();
        self.settle(seq);
        let s = self.get(seq)?;
        let full = s.reserved_tokens.min(tokens.len()) / bt;
        let mut b = s.hashed_blocks;
        let mut parent = 0;
        if b > 0 {
            // A parent that lost its hash (given up to an exact block) ends the chain
            // here: hashing on from another parent would name the wrong prefix.
            match self.pool.meta(s.blocks[b - 1]).hash {
                Some(h) => parent = h,
                None => return Ok(()),
            }
        }
        while b < full {
            let id = self.seqs[&seq].blocks[b];
            if (self.pool.meta(id).filled as usize) < bt {
                break;
            }
            let h = block_hash(parent, &tokens[b * bt..(b + 1) * bt], digest);
            // A thin block answers for a whole one only where this sequence's own block
            // could be thin too.
            // A block with rows lent to a guest (`ring`) answers for a whole one no more
            // than a thin one does; a hosting one answers for none (its guest will swap
            // it thin), and a host stays where its guest writes.
            let fits = |other: BlockId| {
                let (o, own) = (self.pool.meta(other), self.pool.meta(id));
                let o_whole = !o.thin && o.lent == 0;
                o.format == format && (o_whole || own.thin) && !o.hosting && !own.hosting
            };
            match self.index.get(&h).copied() {
                Some(other) if other != id && fits(other) => {
                    self.pool.retain(other);
                    self.seqs.get_mut(&seq).expect("checked").blocks[b] = other;
                    self.release(id);
                }
                Some(other) if other != id => {
                    self.pool.meta_mut(other).hash = None;
                    self.index.insert(h, id);
                    self.pool.meta_mut(id).hash = Some(h);
                }
                Some(_) => {}
                None => {
                    if self.pool.meta(id).hash.is_none() {
                        self.pool.meta_mut(id).hash = Some(h);
                        self.index.insert(h, id);
                    }
                }
            }
            parent = h;
            b += 1;
            self.seqs.get_mut(&seq).expect("checked").hashed_blocks = b;
        }
        self.debug_check();
        Ok(())
    }

    /// The indexed blocks matching `tokens` from position 0, at most `max_tokens`' worth,
    /// in `rule.format`; and the hash of the last.
    fn indexed_run(&self, tokens: &[u32], max_tokens: usize, rule: &ReuseRule) -> Vec<BlockId> {
        let bt = self.layout().block_tokens();
        let mut parent = 0;
        let mut got = Vec::new();
        for chunk in tokens[..max_tokens.min(tokens.len())].chunks_exact(bt) {
            let h = block_hash(parent, chunk, rule.digest);
            let Some(&id) = self.index.get(&h) else { break };
            if self.pool.meta(id).format != rule.format {
                break;
            }
            got.push(id);
            parent = h;
        }
        got
    }

    /// How many of `blocks` (a matched prefix, from position 0) a reuse may take: the
    /// most that `rule` allows whose next query's window sees no thin block (one whose
    /// windowed layers were dropped by the sequence that wrote it); 0 when none.
    fn reusable(&self, blocks: &[BlockId], rule: &ReuseRule) -> usize {
        let l = *self.layout();
        let bt = l.block_tokens();
        let mut n = rule.round(blocks.len() * bt, bt) / bt;
        while n > 0 {
            let blind = blocks[..n]
                .iter()
                .enumerate()
                .all(|(b, &id)| !self.missing_in_sight(None, id, b, n * bt));
            if blind {
                return n;
            }
            n = rule.round(n * bt - 1, bt) / bt;
        }
        0
    }

    /// Makes the empty `seq` hold `blocks` (already referenced for it) as its first ones;
    /// its next query follows them.
    fn adopt(&mut self, seq: SeqId, blocks: Vec<BlockId>) {
        let bt = self.layout().block_tokens();
        let n = blocks.len() * bt;
        let s = self.seqs.get_mut(&seq).expect("checked by the caller");
        s.hashed_blocks = blocks.len();
        s.blocks = blocks;
        s.reserved_tokens = n;
        s.horizon = n;
        self.reused_tokens += n as u64;
    }

    /// For an empty `seq`: attaches the longest run of indexed blocks matching `tokens`
    /// from position 0 that `rule` allows (at most `max_tokens`, in `rule.format`, ending
    /// on `rule.align_tokens`), so those tokens need no prefill. Returns the tokens
    /// attached.
    pub fn seq_attach_prefix(
        &mut self,
        seq: SeqId,
        tokens: &[u32],
        max_tokens: usize,
        rule: &ReuseRule,
    ) -> Result<usize, KvError> {
        let bt = self.layout().block_tokens();
        if self.get(seq)?.reserved_tokens != 0 {
            return Ok(0);
        }
        let mut got = self.indexed_run(tokens, max_tokens, rule);
        got.truncate(self.reusable(&got, rule));
        for &id in &got {
            self.pool.retain(id);
            self.pool.touch(id);
        }
        let n = got.len() * bt;
        self.adopt(seq, got);
        self.debug_check();
        Ok(n)
    }

    /// Like [`KvCache::seq_attach_prefix`], continuing from the disk store: blocks whose
    /// file ([`disk_key`] of their chained hash and `rule.format`) verifies are loaded
    /// into fresh blocks and indexed. A corrupt file, or one holding another format, ends
    /// the match (the store removes it; it is recomputed and written again by
    /// [`KvCache::seq_persist`]). Files are checked to exist first, so no block past the
    /// last `rule.align_tokens` boundary is read for nothing.
    pub fn seq_attach_from_disk(
        &mut self,
        seq: SeqId,
        tokens: &[u32],
        max_tokens: usize,
        rule: &ReuseRule,
        store: &BlockStore,
    ) -> Result<usize, KvError> {
        let bt = self.layout().block_tokens();
        if self.get(seq)?.reserved_tokens != 0 {
            return Ok(0);
        }
        let max_blocks = max_tokens.min(tokens.len()) / bt;
        let in_ram = self.indexed_run(tokens, max_tokens, rule);
        let mut parent = in_ram
            .last()
            .map_or(0, |&id| self.pool.meta(id).hash.unwrap_or(0));
        // The blocks after the RAM run, each in RAM already (indexed, in the format) or
        // with a file, as far as they go.
        let mut rest: Vec<(u64, Option<BlockId>)> = Vec::new();
        for b in in_ram.len()..max_blocks {
            let h = block_hash(parent, &tokens[b * bt..(b + 1) * bt], rule.digest);
            let ram = self
                .index
                .get(&h)
                .copied()
                .filter(|&id| self.pool.meta(id).format == rule.format);
            if ram.is_none() && !store.contains(disk_key(h, rule.format)) {
                break;
            }
            rest.push((h, ram));
            parent = h;
        }
        let target = rule.round((in_ram.len() + rest.len()) * bt, bt) / bt;
        let mut blocks: Vec<BlockId> = in_ram.into_iter().take(target).collect();
        for &id in &blocks {
            self.pool.retain(id);
            self.pool.touch(id);
        }
        for &(h, ram) in &rest[..target.saturating_sub(blocks.len())] {
            if let Some(id) = ram {
                self.pool.retain(id);
                self.pool.touch(id);
                blocks.push(id);
                continue;
            }
            match self.load_prefix_block(h, rule.format, store) {
                Ok(Some(id)) => blocks.push(id),
                Ok(None) => break,
                Err(e) => {
                    for id in blocks {
                        self.release(id);
                    }
                    return Err(e);
                }
            }
        }
        // A block that failed to load moves the boundary back, as does a thin one in the
        // window of the next query.
        let keep = self.reusable(&blocks, rule);
        for id in blocks.drain(keep..).collect::<Vec<_>>() {
            self.release(id);
        }
        let n = blocks.len() * bt;
        self.adopt(seq, blocks);
        self.debug_check();
        Ok(n)
    }

    /// Loads the stored block of prefix hash `h` into a fresh, indexed block; `None` when
    /// there is no room or its file is missing, damaged or of another format. A block
    /// indexed under `h` in another format (demoted under pressure) gives up its place.
    fn load_prefix_block(
        &mut self,
        h: u64,
        format: KvFormat,
        store: &BlockStore,
    ) -> Result<Option<BlockId>, KvError> {
        let key = disk_key(h, format);
        let Ok(Some(payload)) = store.get(key) else {
            return Ok(None);
        };
        if self.pool.free_blocks() == 0 {
            return Ok(None);
        }
        if self.pool.account_for(1).is_err() {
            return Ok(None);
        }
        let id = self.pool.alloc().expect("checked free");
        if self.pool.fill_prefix_payload(id, &payload, format).is_err() {
            self.release(id);
            // Sound checksums over the wrong bytes (another format under this name):
            // removed, so the next persist writes the right block.
            let _ = store.remove(key);
            return Ok(None);
        }
        if let Some(old) = self.index.insert(h, id) {
            self.pool.meta_mut(old).hash = None;
        }
        self.pool.meta_mut(id).hash = Some(h);
        Ok(Some(id))
    }

    /// Writes `seq`'s published blocks that are in `format` to `store` under their
    /// [`disk_key`], so a later run with the same prefix can skip its prefill. A file
    /// already there is kept if it verifies ([`BlockStore::verify`]: one this store read
    /// or wrote is trusted, any other is read and checked) and rewritten if not, so every
    /// damaged block of the prefix is repaired in one run.
    ///
    /// Stops at the first write that fails (a full disk, a read-only store) and says why
    /// in [`Persisted::failure`]; the blocks written before it stay, valid.
    pub fn seq_persist(
        &mut self,
        seq: SeqId,
        store: &BlockStore,
        format: KvFormat,
    ) -> Result<Persisted, KvError> {
        let blocks = self.get(seq)?.blocks.clone();
        let mut done = Persisted::default();
        let mut parent = None;
        for (depth, id) in blocks.into_iter().enumerate() {
            let m = self.pool.meta(id);
            let Some(h) = m.hash else {
                break;
            };
            let key = disk_key(h, format);
            let link = Link {
                parent,
                depth: u32::try_from(depth).unwrap_or(u32::MAX),
            };
            parent = Some(key);
            // A thin block lacks its windowed layers: a later run reusing this prefix
            // needs them wherever its window reaches, so only whole blocks are written.
            if m.format != format || m.thin || m.lent > 0 || m.hosting {
                continue;
            }
            match store.verify(key) {
                Ok(true) => {
                    store.link(key, link);
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    done.failure = Some(KvError::Disk(e.to_string()));
                    break;
                }
            }
            // Compressed or spilled blocks are not written (they are not this run's).
            let Ok(payload) = self.pool.payload(id) else {
                continue;
            };
            if let Err(e) = store.put(key, &payload) {
                done.failure = Some(KvError::Disk(e.to_string()));
                break;
            }
            store.link(key, link);
            done.written += 1;
        }
        Ok(done)
    }
}

/// What [`KvCache::seq_persist`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Persisted {
    /// Block files written.
    pub written: usize,
    /// The write that failed, if one did (nothing was tried after it).
    pub failure: Option<KvError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_depends_on_parent_tokens_and_model() {
        let a = block_hash(0, &[1, 2, 3], 9);
        assert_eq!(a, block_hash(0, &[1, 2, 3], 9));
        assert_ne!(a, block_hash(1, &[1, 2, 3], 9));
        assert_ne!(a, block_hash(0, &[1, 2, 4], 9));
        assert_ne!(a, block_hash(0, &[1, 2, 3], 8));
    }
}
