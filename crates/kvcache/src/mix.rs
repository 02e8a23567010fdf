//! The tier mix: which precision each block of a sequence gets by its age.

use kernels::kvquant::KvFormat;
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
        if age < self.hot_tokens + self.warm_tokens {
            return KvFormat::Q8.min(self.cold_format);
        }
        if age < self.hot_tokens + self.warm_tokens + self.cool_tokens {
            return KvFormat::Q4.min(self.cold_format);
        }
        self.cold_format
    }

    /// Average RAM bytes per token of a sequence of `len` tokens under this mix.
    pub fn bytes_per_token(&self, layout: &KvLayout, len: usize) -> f64 {
        let bt = layout.block_tokens();
        let n = len.div_ceil(bt);
        let total: u64 = (0..n)
            .map(|b| layout.block_bytes_in(self.format_for(b, len, bt)))
            .sum();
        total as f64 / len.max(1) as f64
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
                (want > m.format && m.tier != Tier::Disk && !m.compressed).then_some((id, want))
            })
            .collect())
    }
}
