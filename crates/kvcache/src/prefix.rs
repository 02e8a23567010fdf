//! Chained block hashes for prefix sharing.
//!
//! A full block's hash is `xxh3(parent hash ‖ model digest ‖ its token ids)`: equal hashes
//! mean equal token prefixes from position 0 under the same model, so the block's KV is
//! the same and may be shared (and found again on disk in a later run). The cache's
//! sharing verbs — publish, attach (from RAM or disk), persist — are here too.

use kvdisk::BlockStore;

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

impl KvCache {
    /// Publishes `seq`'s full blocks for sharing: `tokens` are the sequence's token ids
    /// from position 0 (at least its full blocks), `digest` identifies the model. Each
    /// full block gets the chained hash H(parent, its tokens, digest). If an identical
    /// block is already indexed, this sequence switches to it (deduplication) and its own
    /// copy is freed.
    pub fn seq_publish(&mut self, seq: SeqId, tokens: &[u32], digest: u64) -> Result<(), KvError> {
        let bt = self.layout().block_tokens();
        let s = self.get(seq)?;
        let full = s.reserved_tokens.min(tokens.len()) / bt;
        let mut b = s.hashed_blocks;
        let mut parent = if b == 0 {
            0
        } else {
            self.pool.meta(s.blocks[b - 1]).hash.unwrap_or(0)
        };
        while b < full {
            let id = self.seqs[&seq].blocks[b];
            if (self.pool.meta(id).filled as usize) < bt {
                break;
            }
            let h = block_hash(parent, &tokens[b * bt..(b + 1) * bt], digest);
            match self.index.get(&h).copied() {
                Some(other) if other != id => {
                    self.pool.retain(other);
                    self.seqs.get_mut(&seq).expect("checked").blocks[b] = other;
                    self.release(id);
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

    /// For an empty `seq`: attaches the longest run of indexed blocks matching `tokens`
    /// from position 0 (at most `max_tokens`), so those tokens need no prefill. Returns
    /// the tokens attached.
    pub fn seq_attach_prefix(
        &mut self,
        seq: SeqId,
        tokens: &[u32],
        digest: u64,
        max_tokens: usize,
    ) -> Result<usize, KvError> {
        let bt = self.layout().block_tokens();
        if self.get(seq)?.reserved_tokens != 0 {
            return Ok(0);
        }
        let mut parent = 0;
        let mut got = Vec::new();
        for chunk in tokens[..max_tokens.min(tokens.len())].chunks_exact(bt) {
            let h = block_hash(parent, chunk, digest);
            let Some(&id) = self.index.get(&h) else { break };
            got.push(id);
            parent = h;
        }
        for &id in &got {
            self.pool.retain(id);
            self.pool.touch(id);
        }
        let n = got.len() * bt;
        let s = self.seqs.get_mut(&seq).expect("checked");
        s.hashed_blocks = got.len();
        s.blocks = got;
        s.reserved_tokens = n;
        self.reused_tokens += n as u64;
        self.debug_check();
        Ok(n)
    }

    /// Like [`KvCache::seq_attach_prefix`], continuing from the disk store: blocks whose
    /// chained hash has a verified file are loaded into fresh blocks and indexed. A
    /// corrupt file ends the match (it is removed by the store and recomputed).
    pub fn seq_attach_from_disk(
        &mut self,
        seq: SeqId,
        tokens: &[u32],
        digest: u64,
        max_tokens: usize,
        store: &BlockStore,
    ) -> Result<usize, KvError> {
        let bt = self.layout().block_tokens();
        let mut n = self.seq_attach_prefix(seq, tokens, digest, max_tokens)?;
        let mut parent = match self.get(seq)?.blocks.last() {
            Some(&id) => self.pool.meta(id).hash.unwrap_or(0),
            None => 0,
        };
        while n + bt <= max_tokens.min(tokens.len()) {
            let h = block_hash(parent, &tokens[n..n + bt], digest);
            let Ok(Some(payload)) = store.get(h) else {
                break;
            };
            if self.pool.free_blocks() == 0 {
                break;
            }
            self.pool.account_for(1)?;
            let id = self.pool.alloc().expect("checked free");
            if self.pool.fill_from_payload(id, &payload).is_err() {
                self.release(id);
                break;
            }
            self.pool.meta_mut(id).hash = Some(h);
            self.index.insert(h, id);
            let s = self.seqs.get_mut(&seq).expect("checked");
            s.blocks.push(id);
            s.reserved_tokens += bt;
            s.hashed_blocks += 1;
            self.reused_tokens += bt as u64;
            parent = h;
            n += bt;
        }
        self.debug_check();
        Ok(n)
    }

    /// Writes `seq`'s published blocks to `store` (those not already there), so a later
    /// run with the same prefix can skip its prefill. Returns blocks written.
    pub fn seq_persist(&mut self, seq: SeqId, store: &BlockStore) -> Result<usize, KvError> {
        let blocks = self.get(seq)?.blocks.clone();
        let mut written = 0;
        for id in blocks {
            let Some(h) = self.pool.meta(id).hash else {
                break;
            };
            if store.contains(h) {
                continue;
            }
            let payload = self.pool.payload(id)?;
            store
                .put(h, &payload)
                .map_err(|e| KvError::Disk(e.to_string()))?;
            written += 1;
        }
        Ok(written)
    }
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
