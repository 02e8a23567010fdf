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
//! [`Decision`] with its factors, for metrics and the debug log.

use std::collections::HashSet;

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
                if m.pins > 0 || m.tier == Tier::Disk || !taken.insert(id) {
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
                let s = w.recency * f[0]
                    + w.frequency * f[1]
                    + w.size * f[2]
                    + w.cost * f[3]
                    + w.incompleteness * f[4];
                (c.id, s, f)
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// Frees at least `shortfall` bytes of RAM if the candidates allow, and no more than
    /// the last step needed: demotes, compresses, then spills (with a `store`) blocks in
    /// score order, one ladder step per block per round. Returns every decision.
    pub fn reclaim(
        &mut self,
        shortfall: u64,
        store: Option<&BlockStore>,
        codec: Compression,
        w: &Weights,
        rates: &Rates,
    ) -> Result<Vec<Decision>, KvError> {
        let mut decisions = Vec::new();
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
                    let key = spill_key(self, id);
                    self.pool_mut().spill(id, st, key)?;
                }
                let got = before.saturating_sub(self.pool().storage_bytes());
                freed += got;
                moved = true;
                decisions.push(Decision {
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
        Ok(decisions)
    }
}

/// A published block is filed under its prefix hash (a later run may reuse it); others
/// under a key unique to this block and moment.
fn spill_key(cache: &KvCache, id: BlockId) -> u64 {
    cache.pool().meta(id).hash.unwrap_or_else(|| {
        let clock = cache.pool().clock();
        xxhash_rust::xxh3::xxh3_64(&[u64::from(id.0).to_le_bytes(), clock.to_le_bytes()].concat())
    })
}
