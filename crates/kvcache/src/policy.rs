//! Demotion and eviction under the kv pool's limit: which blocks give up bytes, and why.
//!
//! Every candidate block gets a score from factors each normalized to [0, 1] (higher =
//! give it up sooner), weighted as DESIGN.md sets them:
//!
//! | factor | weight | 1.0 means |
//! |---|---:|---|
//! | recency | 0.3 | least recently used of the candidates |
//! | frequency | 0.2 | least often used |
//! | size | 0.2 | most RAM bytes |
//! | cost | 0.2 | cheapest to get back: min(recompute = prefix tokens ÷ prefill rate, reload = bytes ÷ the tier's measured bandwidth) |
//! | incompleteness | 0.1 | fewest tokens written (a partial block serves no prefix) |
//!
//! Candidates are blocks of sequences that are not running, not pinned. Each chosen
//! block moves one step down the ladder f16 → int8 → 4-bit → 2-bit → compressed → disk
//! (when a store is open); rounds repeat in score order until the shortfall is freed and
//! no further. Nothing is dropped: a sequence whose blocks went to disk is promoted (or,
//! if a file proves corrupt, recomputed) when it runs again. Every step is returned as a
//! [`Decision`] with its factors, for metrics and the debug log. A spill the disk refuses
//! (full, read-only) leaves the block where it was and ends spilling for that call
//! ([`Reclaimed::spill_failure`]).
//!
//! The disk store has a cap too ([`KvCache::trim_store`]): over it, block files go in
//! the same score's order, its factors taken from what the store remembers of each file
//! (last use, reads, size, the recompute cost of its prefix; every stored block is
//! full). Only the last block of a stored chain is a candidate, so a chain shrinks from
//! its end and no block is left behind that could never be reached.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use kernels::kvquant::KvFormat;
use kvdisk::{BlockStore, Compression};

use crate::pool::{BlockId, Tier};
use crate::seq::{KvCache, KvError};

/// Weights of the score's factors (they sum to 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    pub recency: f64,
    pub frequency: f64,
    pub size: f64,
    pub cost: f64,
    pub incompleteness: f64,
}

impl Weights {
    /// The weighted sum of factors in the module doc's order (recency, frequency, size,
    /// cost, incompleteness), each in [0, 1].
    pub fn score(&self, f: &[f64; 5]) -> f64 {
        self.recency * f[0]
            + self.frequency * f[1]
            + self.size * f[2]
            + self.cost * f[3]
            + self.incompleteness * f[4]
    }
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            recency: 0.3,
            frequency: 0.2,
            size: 0.2,
            cost: 0.2,
            incompleteness: 0.1,
        }
    }
}

/// Measured rates the cost factor uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    /// Prefill tokens per second (recompute cost).
    pub prefill_tok_s: f64,
    /// Bytes per second to bring a block back from compressed RAM.
    pub decompress_b_s: f64,
    /// Bytes per second to read a block back from disk.
    pub disk_read_b_s: f64,
    /// Bytes per second to dequantize (promote) a block.
    pub dequant_b_s: f64,
}

impl Default for Rates {
    /// Conservative figures for a laptop-class machine; replaced by `llmem bench memory`
    /// and `llmem bench kv` measurements where they exist.
    fn default() -> Self {
        Rates {
            prefill_tok_s: 200.0,
            decompress_b_s: 1.0e9,
            disk_read_b_s: 0.5e9,
            dequant_b_s: 2.0e9,
        }
    }
}

/// What happened to one block.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub block: BlockId,
    pub action: Action,
    pub score: f64,
    /// recency, frequency, size, cost, incompleteness (each in [0, 1]).
    pub factors: [f64; 5],
    pub bytes_freed: u64,
}

impl std::fmt::Display for Decision {
    /// One line for the debug log: what happened to which block, and why (the factors).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.action {
            Action::Demote(from, to) => format!("demote {} -> {}", from.name(), to.name()),
            Action::Compress(fmt) => format!("compress {}", fmt.name()),
            Action::Spill => "spill to disk".to_string(),
        };
        let [r, fq, sz, c, inc] = self.factors;
        write!(
            f,
            "block {}: {what}, freed {} B; score {:.3} = recency {r:.2}, frequency {fq:.2}, \
             size {sz:.2}, cost {c:.2}, incompleteness {inc:.2}",
            self.block.0, self.bytes_freed, self.score
        )
    }
}

/// One step down the ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Demote(KvFormat, KvFormat),
    Compress(KvFormat),
    Spill,
}

/// Counts of actions taken, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReclaimStats {
    pub demoted: u64,
    pub compressed: u64,
    pub spilled: u64,
    pub bytes_freed: u64,
}

impl ReclaimStats {
    pub fn add(&mut self, d: &[Decision]) {
        for x in d {
            match x.action {
                Action::Demote(..) => self.demoted += 1,
                Action::Compress(_) => self.compressed += 1,
                Action::Spill => self.spilled += 1,
            }
            self.bytes_freed += x.bytes_freed;
        }
    }
}

/// What [`KvCache::reclaim`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Reclaimed {
    /// Every step, in order.
    pub decisions: Vec<Decision>,
    /// Why a spill to the disk store failed (a full disk, a read-only store), if one
    /// did: that block stayed in RAM and no further block was spilled in that call.
    pub spill_failure: Option<KvError>,
}

struct Candidate {
    id: BlockId,
    /// Tokens before the block's end in its sequence (the prefix a recompute rebuilds).
    prefix_tokens: usize,
}

impl KvCache {
    /// Scores every candidate block (see the module doc), best to give up first.
    pub fn eviction_scores(&self, w: &Weights, rates: &Rates) -> Vec<(BlockId, f64, [f64; 5])> {
        let bt = self.layout().block_tokens();
        let (running, parked): (Vec<_>, Vec<_>) = self.seqs.values().partition(|s| s.running);
        // Blocks of running sequences are never candidates; `taken` also stops a block
        // shared by two parked sequences from being listed twice.
        let mut taken: HashSet<BlockId> = running
            .iter()
            .flat_map(|s| s.blocks.iter().copied())
            .collect();
        let mut cands: Vec<Candidate> = Vec::new();
        for s in parked {
            for (b, &id) in s.blocks.iter().enumerate() {
                let m = self.pool().meta(id);
                // A host and its guest stay hot until the guest is full (`ring`).
                let ring = m.hosting || s.guests.contains(&b);
                if m.pins > 0 || ring || m.tier == Tier::Disk || !taken.insert(id) {
                    continue;
                }
                cands.push(Candidate {
                    id,
                    prefix_tokens: (b + 1) * bt,
                });
            }
        }
        let p = self.pool();
        let clock = p.clock().max(1) as f64;
        let max_use = cands
            .iter()
            .map(|c| p.meta(c.id).use_count)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let max_bytes = cands
            .iter()
            .map(|c| p.block_ram_bytes(c.id))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let cost_of = |c: &Candidate| -> f64 {
            let m = p.meta(c.id);
            let bytes = p.block_ram_bytes(c.id) as f64;
            let recompute = c.prefix_tokens as f64 / rates.prefill_tok_s;
            let reload = if m.compressed {
                bytes / rates.decompress_b_s
            } else {
                bytes / rates.dequant_b_s
            };
            recompute.min(reload)
        };
        let max_cost = cands.iter().map(&cost_of).fold(1e-12, f64::max);
        let mut out: Vec<(BlockId, f64, [f64; 5])> = cands
            .iter()
            .map(|c| {
                let m = p.meta(c.id);
                let f = [
                    1.0 - m.last_use as f64 / clock,
                    1.0 - m.use_count as f64 / max_use,
                    p.block_ram_bytes(c.id) as f64 / max_bytes,
                    1.0 - cost_of(c) / max_cost,
                    1.0 - m.filled as f64 / bt as f64,
                ];
                (c.id, w.score(&f), f)
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// Frees at least `shortfall` bytes of RAM if the candidates allow, and no more than
    /// the last step needed: demotes, compresses, then spills (with a `store`) blocks in
    /// score order, one ladder step per block per round. Returns every decision, and why
    /// spilling stopped if the store refused a write.
    pub fn reclaim(
        &mut self,
        shortfall: u64,
        store: Option<&BlockStore>,
        codec: Compression,
        w: &Weights,
        rates: &Rates,
    ) -> Result<Reclaimed, KvError> {
        self.reclaim_with(shortfall, store, codec, true, w, rates)
    }

    /// [`KvCache::reclaim`], demoting blocks only if `demote`: without it a block keeps
    /// its precision and is compressed or spilled whole, so a sequence that gets it back
    /// computes exactly what it would have (a scheduler preempting sequences it must
    /// finish with unchanged answers).
    pub fn reclaim_with(
        &mut self,
        shortfall: u64,
        store: Option<&BlockStore>,
        codec: Compression,
        demote: bool,
        w: &Weights,
        rates: &Rates,
    ) -> Result<Reclaimed, KvError> {
        let mut out = Reclaimed::default();
        let mut store = store;
        let mut freed = 0u64;
        while freed < shortfall {
            let scored = self.eviction_scores(w, rates);
            let mut moved = false;
            for (id, score, factors) in scored {
                if freed >= shortfall {
                    break;
                }
                let before = self.pool().storage_bytes();
                let m = self.pool().meta(id);
                let mut action = match (m.format, m.compressed) {
                    // A compressed block cannot be re-encoded without growing first.
                    (_, true) => Action::Spill,
                    (f, false) if !demote && codec != Compression::None => Action::Compress(f),
                    (_, false) if !demote => Action::Spill,
                    (KvFormat::F16, _) => Action::Demote(KvFormat::F16, KvFormat::Q8),
                    (KvFormat::Q8, _) => Action::Demote(KvFormat::Q8, KvFormat::Q4),
                    (KvFormat::Q4, _) => Action::Demote(KvFormat::Q4, KvFormat::Q2),
                    (f, false) if codec != Compression::None => Action::Compress(f),
                    _ => Action::Spill,
                };
                match action {
                    Action::Demote(_, to) => self.pool_mut().set_format(id, to)?,
                    Action::Compress(_) => self.pool_mut().compress(id, codec)?,
                    Action::Spill => {}
                }
                // Incompressible blocks (kept as they were) go to disk instead.
                if matches!(action, Action::Compress(_)) && !self.pool().meta(id).compressed {
                    action = Action::Spill;
                }
                if action == Action::Spill {
                    let Some(st) = store else { continue };
                    match self.pool_mut().spill(id, st, spill_key()) {
                        Ok(()) => {}
                        Err(e @ KvError::Disk(_)) => {
                            out.spill_failure = Some(e);
                            store = None;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                let got = before.saturating_sub(self.pool().storage_bytes());
                freed += got;
                moved = true;
                out.decisions.push(Decision {
                    block: id,
                    action,
                    score,
                    factors,
                    bytes_freed: got,
                });
            }
            if !moved {
                break;
            }
        }
        Ok(out)
    }

    /// Brings the block files of `store` and of `siblings` (the root's other directories,
    /// opened exclusively: [`BlockStore::siblings`]) to at most `cap_bytes` in all,
    /// removing files in the eviction score's order (see the module doc). Files of
    /// blocks this cache has spilled to `store` are kept: they are its only copy.
    ///
    /// # Errors
    /// [`KvError::Disk`] when a directory cannot be listed; a file that cannot be
    /// removed is skipped.
    pub fn trim_store(
        &self,
        store: &BlockStore,
        siblings: &[BlockStore],
        cap_bytes: u64,
        w: &Weights,
        rates: &Rates,
    ) -> Result<Trimmed, KvError> {
        let stores: Vec<&BlockStore> = std::iter::once(store).chain(siblings).collect();
        let mut all = Vec::new();
        for (i, st) in stores.iter().enumerate() {
            let entries = st.entries().map_err(|e| KvError::Disk(e.to_string()))?;
            all.extend(entries.into_iter().map(|e| (i, e)));
        }
        let mut left: u64 = all.iter().map(|(_, e)| e.file_bytes).sum();
        let mut done = Trimmed {
            bytes_left: left,
            ..Trimmed::default()
        };
        if left <= cap_bytes {
            return Ok(done);
        }
        let spilled: HashSet<u64> = self
            .seqs
            .values()
            .flat_map(|s| s.blocks.iter())
            .filter_map(|&id| self.disk_key(id).map(|(key, _)| key))
            .collect();
        let present: HashSet<(usize, u64)> = all.iter().map(|(i, e)| (*i, e.key)).collect();
        let mut children: HashMap<(usize, u64), u32> = HashMap::new();
        for (i, e) in &all {
            if let Some(p) = e.link.parent.filter(|&p| present.contains(&(*i, p))) {
                *children.entry((*i, p)).or_default() += 1;
            }
        }
        let scorer = DiskScorer::new(&all, self.layout().block_tokens(), rates);
        let by_key: HashMap<(usize, u64), &kvdisk::Entry> =
            all.iter().map(|(i, e)| ((*i, e.key), e)).collect();
        let mut heap: BinaryHeap<Ranked> = all
            .iter()
            .filter(|(i, e)| !children.contains_key(&(*i, e.key)))
            .map(|(i, e)| scorer.rank(*i, e, w))
            .collect();
        while left > cap_bytes {
            let Some(r) = heap.pop() else { break };
            let e = by_key[&(r.store, r.key)];
            if (r.store == 0 && spilled.contains(&e.key)) || stores[r.store].remove(e.key).is_err()
            {
                continue;
            }
            left -= e.file_bytes;
            done.blocks_removed += 1;
            done.bytes_removed += e.file_bytes;
            if let Some(p) = e.link.parent
                && let Some(n) = children.get_mut(&(r.store, p))
            {
                *n -= 1;
                if *n == 0 {
                    children.remove(&(r.store, p));
                    heap.push(scorer.rank(r.store, by_key[&(r.store, p)], w));
                }
            }
        }
        for st in &stores {
            let _ = st.save_usage();
        }
        done.bytes_left = left;
        Ok(done)
    }
}

/// What [`KvCache::trim_store`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    pub blocks_removed: u64,
    pub bytes_removed: u64,
    /// Bytes of block files left in the directories looked at (more than the cap when
    /// what remained could not be removed: held by another process or spilled here).
    pub bytes_left: u64,
}

/// The eviction score's factors for stored block files, normalized over all of them.
struct DiskScorer {
    oldest_ms: u64,
    span_ms: f64,
    max_uses: f64,
    max_bytes: f64,
    max_cost_s: f64,
    bt: f64,
    prefill_tok_s: f64,
}

impl DiskScorer {
    fn new(all: &[(usize, kvdisk::Entry)], bt: usize, rates: &Rates) -> Self {
        let oldest_ms = all.iter().map(|(_, e)| e.last_use_ms).min().unwrap_or(0);
        let newest_ms = all.iter().map(|(_, e)| e.last_use_ms).max().unwrap_or(0);
        let max_depth = all.iter().map(|(_, e)| e.link.depth).max().unwrap_or(0);
        let bt = bt as f64;
        DiskScorer {
            oldest_ms,
            span_ms: (newest_ms - oldest_ms).max(1) as f64,
            max_uses: f64::from(all.iter().map(|(_, e)| e.uses).max().unwrap_or(0).max(1)),
            max_bytes: all
                .iter()
                .map(|(_, e)| e.file_bytes)
                .max()
                .unwrap_or(1)
                .max(1) as f64,
            max_cost_s: (f64::from(max_depth) + 1.0) * bt / rates.prefill_tok_s,
            bt,
            prefill_tok_s: rates.prefill_tok_s,
        }
    }

    /// A deleted file comes back only by recomputing its prefix (its depth + 1 blocks).
    fn rank(&self, store: usize, e: &kvdisk::Entry, w: &Weights) -> Ranked {
        let cost_s = (f64::from(e.link.depth) + 1.0) * self.bt / self.prefill_tok_s;
        let f = [
            1.0 - (e.last_use_ms - self.oldest_ms) as f64 / self.span_ms,
            1.0 - f64::from(e.uses) / self.max_uses,
            e.file_bytes as f64 / self.max_bytes,
            1.0 - cost_s / self.max_cost_s,
            0.0,
        ];
        Ranked {
            score: w.score(&f),
            depth: e.link.depth,
            store,
            key: e.key,
        }
    }
}

/// A removable file in the trim's heap: highest score first, then the deepest, then by
/// key, so the order is deterministic.
#[derive(Debug, PartialEq)]
struct Ranked {
    score: f64,
    depth: u32,
    store: usize,
    key: u64,
}

impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then(self.depth.cmp(&other.depth))
            .then(other.store.cmp(&self.store))
            .then(other.key.cmp(&self.key))
    }
}

/// A key for a spilled block: unique to this process and this spill, so it never names a
/// prefix block ([`crate::prefix::disk_key`]) or another spill. A block's bytes after
/// pressure demoted it are not what a fresh evaluation holds, so they must never be
/// found by a prefix lookup.
fn spill_key() -> u64 {
    static SALT: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let salt = *SALT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ u64::from(std::process::id()).rotate_left(40)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 24];
    buf[..8].copy_from_slice(b"kv-spill");
    buf[8..16].copy_from_slice(&salt.to_le_bytes());
    buf[16..].copy_from_slice(&n.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&buf)
}
