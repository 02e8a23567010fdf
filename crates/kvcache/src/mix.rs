//! The tier mix: which precision each block of a sequence gets by its age.

use kernels::kvquant::{BlockGeom, KvFormat};
use kernels::pool::ThreadPool;

use crate::layout::KvLayout;
use crate::pool::{BlockId, Tier};
use crate::seq::{KvCache, KvError, SeqId};

/// Precision by age inside one sequence: the default "tiered mix".
///
/// Counting full blocks from the start of the sequence: the first `sink_blocks` (the
/// attention sink) keep `sink_format`; the last `hot_tokens` tokens stay f16 (the residual
/// window, which always includes the partial block being written); the `warm_tokens`
/// before them are int8, the `cool_tokens` before those int4; everything older is
/// `cold_format`. Blocks only ever move down.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TierMix {
    pub sink_blocks: usize,
    pub sink_format: KvFormat,
    pub hot_tokens: usize,
    pub warm_tokens: usize,
    pub cool_tokens: usize,
    pub cold_format: KvFormat,
}

impl TierMix {
    /// Every block stays in `f` (apart from the block being written, which is f16).
    pub fn uniform(f: KvFormat) -> Self {
        TierMix {
            sink_blocks: 0,
            sink_format: f,
            hot_tokens: 0,
            warm_tokens: 0,
            cool_tokens: 0,
            cold_format: f,
        }
    }

    /// Whether every block stays f16 (nothing is ever transcoded).
    pub fn is_all_f16(&self) -> bool {
        self.cold_format == KvFormat::F16 && self.sink_format == KvFormat::F16
    }

    /// The one format every full block ends up in, whatever the sequence's length, or
    /// `None` for a mix by age (a block's format, and the path it took to get there, then
    /// depend on when it was demoted).
    pub fn uniform_format(&self) -> Option<KvFormat> {
        if self.is_all_f16() {
            return Some(KvFormat::F16);
        }
        let no_windows = self.hot_tokens == 0 && self.warm_tokens == 0 && self.cool_tokens == 0;
        (no_windows && (self.sink_blocks == 0 || self.sink_format == self.cold_format))
            .then_some(self.cold_format)
    }

    /// The format block `b` of a sequence of `len` tokens should have (full blocks only).
    pub fn format_for(&self, b: usize, len: usize, bt: usize) -> KvFormat {
        let end = (b + 1) * bt; // one past the block's last token
        if end > len {
            return KvFormat::F16; // partial: still being written
        }
        let age = len - end; // tokens after this block
        if age < self.hot_tokens {
            return KvFormat::F16;
        }
        if b < self.sink_blocks {
            return self.sink_format;
        }
        let warm_age = self.hot_tokens.saturating_add(self.warm_tokens);
        if age < warm_age {
            return KvFormat::Q8.min(self.cold_format);
        }
        if age < warm_age.saturating_add(self.cool_tokens) {
            return KvFormat::Q4.min(self.cold_format);
        }
        self.cold_format
    }

    /// How many of the blocks of a sequence of `len` tokens (`bt` tokens a block) are in
    /// each format, indexed as [`KvFormat::ALL`]: the counts [`TierMix::format_for`] gives
    /// block by block, in constant time. Planning asks this for contexts of up to 2^24
    /// tokens and searches over them; a walk over the blocks made `plan --ctx 2^64-1`
    /// spin for minutes.
    ///
    /// # Panics
    /// If `bt` is 0.
    pub fn block_counts(&self, len: usize, bt: usize) -> [u64; 4] {
        assert!(bt > 0, "blocks hold at least one token");
        let mut counts = [0u64; 4];
        let mut add = |f: KvFormat, n: usize| {
            let i = KvFormat::ALL.iter().position(|&a| a == f).unwrap_or(0);
            counts[i] += n as u64;
        };
        let full = len / bt;
        // The partial block being written is f16.
        add(KvFormat::F16, len.div_ceil(bt) - full);
        // Full blocks with at least `t` tokens after them are the first `older(t)`: block
        // b ends at (b + 1) · bt, so its age len − (b + 1) · bt ≥ t ⟺ b < (len − t) / bt.
        let older = |t: usize| len.checked_sub(t).map_or(0, |rest| rest / bt);
        let hot_end = older(self.hot_tokens);
        add(KvFormat::F16, full - hot_end);
        // Below the residual window: the sink first, then by age.
        let sink_end = self.sink_blocks.min(hot_end);
        add(self.sink_format, sink_end);
        let warm_age = self.hot_tokens.saturating_add(self.warm_tokens);
        let cool_age = warm_age.saturating_add(self.cool_tokens);
        let warm_end = older(warm_age).max(sink_end);
        let cool_end = older(cool_age).max(sink_end);
        add(KvFormat::Q8.min(self.cold_format), hot_end - warm_end);
        add(KvFormat::Q4.min(self.cold_format), warm_end - cool_end);
        add(self.cold_format, cool_end - sink_end);
        counts
    }

    /// Average RAM bytes per token of a sequence of `len` tokens under this mix.
    pub fn bytes_per_token(&self, layout: &KvLayout, len: usize) -> f64 {
        let counts = self.block_counts(len, layout.block_tokens());
        let total: u64 = KvFormat::ALL
            .iter()
            .zip(counts)
            .map(|(&f, n)| layout.block_bytes_in(f) * n)
            .sum();
        total as f64 / len.max(1) as f64
    }
}

impl TierMix {
    /// The most bytes one sequence's KV holds while it is read from position 0 to `ctx`
    /// tokens in micro-batches of `ubatch`, each sequence thinned after every micro-batch
    /// ([`crate::KvCache::seq_thin`]). Global layers hold every token. Windowed layers
    /// of an all-f16 cache hold their window and never more (the ring, see
    /// [`crate::KvCache::set_ring`]: a window of whole blocks, a sequence sharing no
    /// block); otherwise the blocks the next micro-batch's window sees and the
    /// micro-batch itself — at most `window + ubatch` tokens (plus block rounding).
    /// Without windowed layers, `ctx ×` the per-token figure of every layer.
    pub fn seq_bytes(&self, layout: &KvLayout, ctx: usize, ubatch: usize) -> u64 {
        let ctx = ctx.max(1);
        let Some(w) = layout.window() else {
            let total = self.phase_bytes(&layout.geom(), None, ctx, ubatch);
            return u64::try_from(total).unwrap_or(u64::MAX);
        };
        let (bt, u) = (layout.block_tokens(), ubatch.max(1));
        let (global, windowed) = (layout.thin_geom(), layout.windowed_geom());
        if self.is_all_f16() && w.is_multiple_of(bt) {
            let blocks = ctx.div_ceil(bt) as u128;
            let f16 = |g: &BlockGeom| g.block_bytes(KvFormat::F16) as u128;
            let total = blocks * f16(&global) + blocks.min((w / bt) as u128) * f16(&windowed);
            return u64::try_from(total).unwrap_or(u64::MAX);
        }
        // Micro-batch k starts at k·u, the sequence thinned to its window there. While
        // the window has not moved past position 0 every phase is a candidate; after it,
        // the windowed part repeats with the block rounding (period ≤ bt phases) and the
        // global part only grows, so the last bt + 1 phases hold the peak.
        let last = (ctx - 1) / u;
        let early = (w + u) / u;
        let phases = (0..=early.min(last)).chain(last.saturating_sub(bt).max(early + 1)..=last);
        let peak = phases
            .map(|k| {
                let t = k * u;
                let len = t.saturating_add(u).min(ctx);
                let first_whole = (t + 1).saturating_sub(w) / bt;
                self.phase_bytes(&global, None, len, ubatch)
                    + self.phase_bytes(&windowed, Some(first_whole), len, ubatch)
            })
            .max()
            .unwrap_or(0);
        u64::try_from(peak).unwrap_or(u64::MAX)
    }

    /// Bytes of a sequence of `len` tokens in blocks of `geom` at the peak of reading its
    /// last micro-batch: each block in the mix's format, the newest micro-batch's blocks
    /// f16. `from`: only blocks from this index on count (the rest are thin).
    fn phase_bytes(
        &self,
        geom: &BlockGeom,
        from: Option<usize>,
        len: usize,
        ubatch: usize,
    ) -> u128 {
        let mix = self;
        let bt = geom.block_tokens;
        let ctx = len.max(1);
        let n = ctx.div_ceil(bt);
        let bytes = |f: KvFormat| u128::from(crate::stored_block_bytes(geom, f));
        let rest: u128 = match from {
            // Counted per format, not walked per block: a context of 2^64-1 tokens has
            // 2^60 blocks.
            None => KvFormat::ALL
                .iter()
                .zip(mix.block_counts(ctx, bt))
                .map(|(&f, count)| bytes(f) * u128::from(count))
                .sum(),
            // The windowed part: at most window + ubatch tokens.
            Some(first) => (first.min(n)..n)
                .map(|b| bytes(mix.format_for(b, ctx, bt)))
                .sum(),
        };
        let first = from.unwrap_or(0);
        let transient: u128 = if mix.is_all_f16() {
            0
        } else {
            let f16 = bytes(KvFormat::F16);
            // The newest micro-batch's blocks (plus the one it may straddle) as f16: at
            // most 2 + ubatch / block_tokens blocks.
            let k = (ubatch.min(ctx).div_ceil(bt) + 1).min(n);
            ((n - k).max(first)..n)
                .map(|b| f16 - bytes(mix.format_for(b, ctx, bt)))
                .sum()
        };
        rest + transient
    }

    /// The most tokens one sequence can reach in `bytes` of KV ([`TierMix::seq_bytes`]
    /// of it fits), at most `max_ctx`.
    pub fn tokens_within(
        self,
        layout: &KvLayout,
        bytes: u64,
        max_ctx: usize,
        ubatch: usize,
    ) -> usize {
        if self.seq_bytes(layout, max_ctx, ubatch) <= bytes {
            return max_ctx;
        }
        // seq_bytes grows with ctx: the largest ctx that fits, by bisection.
        let (mut lo, mut hi) = (0usize, max_ctx);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.seq_bytes(layout, mid, ubatch) <= bytes {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

impl KvCache {
    /// Moves the full blocks of `seq` to the formats `mix` gives them (down only),
    /// encoding on `threads` when given (the session's compute threads, idle between
    /// micro-batches). Returns the RAM bytes freed.
    pub fn seq_apply_mix(
        &mut self,
        seq: SeqId,
        mix: &TierMix,
        threads: Option<&ThreadPool>,
    ) -> Result<u64, KvError> {
        let changes = self.mix_changes(seq, mix)?;
        let before = self.pool.storage_bytes();
        self.pool.set_formats(&changes, threads)?;
        Ok(before.saturating_sub(self.pool.storage_bytes()))
    }

    /// The blocks of `seq` that `mix` moves to a lower format, with that format.
    fn mix_changes(&self, seq: SeqId, mix: &TierMix) -> Result<Vec<(BlockId, KvFormat)>, KvError> {
        let s = self.get(seq)?;
        let len = s.reserved_tokens;
        let bt = self.layout().block_tokens();
        Ok(s.blocks
            .iter()
            .enumerate()
            .filter_map(|(b, &id)| {
                let want = mix.format_for(b, len, bt);
                let m = self.pool.meta(id);
                // A host and its guest stay f16 until the guest is full (`ring`).
                let ring = m.hosting || s.guests.contains(&b);
                (want > m.format && m.tier != Tier::Disk && !m.compressed && !ring)
                    .then_some((id, want))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`TierMix::block_counts`] against [`TierMix::format_for`] asked block by block.
    fn counted_one_by_one(mix: &TierMix, len: usize, bt: usize) -> [u64; 4] {
        let mut counts = [0u64; 4];
        for b in 0..len.div_ceil(bt) {
            let f = mix.format_for(b, len, bt);
            counts[KvFormat::ALL.iter().position(|&a| a == f).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn block_counts_equal_the_block_by_block_formats() {
        let tiered = TierMix {
            sink_blocks: 2,
            sink_format: KvFormat::Q8,
            hot_tokens: 48,
            warm_tokens: 64,
            cool_tokens: 96,
            cold_format: KvFormat::Q2,
        };
        let mixes = [
            TierMix::uniform(KvFormat::F16),
            TierMix::uniform(KvFormat::Q4),
            tiered,
            TierMix {
                cold_format: KvFormat::Q4,
                ..tiered
            },
            TierMix {
                sink_blocks: 40,
                hot_tokens: 5,
                warm_tokens: 0,
                cool_tokens: usize::MAX,
                ..tiered
            },
            TierMix {
                hot_tokens: usize::MAX,
                ..tiered
            },
        ];
        for mix in &mixes {
            for bt in [1, 3, 16] {
                for len in 0..700 {
                    assert_eq!(
                        mix.block_counts(len, bt),
                        counted_one_by_one(mix, len, bt),
                        "{mix:?} len {len} bt {bt}"
                    );
                }
            }
        }
    }

    #[test]
    fn finding7_block_counts_of_the_largest_context_are_immediate() {
        let mix = TierMix {
            sink_blocks: 1,
            sink_format: KvFormat::F16,
            hot_tokens: 192,
            warm_tokens: 1024,
            cool_tokens: 4096,
            cold_format: KvFormat::Q2,
        };
        let counts = mix.block_counts(usize::MAX, 16);
        assert_eq!(counts.iter().sum::<u64>(), usize::MAX.div_ceil(16) as u64);
        assert_eq!(counts[1], 1024 / 16);
    }
}
