//! The KV cache types a user chooses (`--kv-type`): their names, their tier mixes and
//! what a token costs in each. Every other crate asks this one.

use std::fmt;
use std::str::FromStr;

use kernels::kvquant::{BlockGeom, KvFormat};

use crate::{KvLayout, TierMix};

/// A KV cache type: one format for every block, or a tier mix by age.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvType {
    F16,
    Int8,
    Int4,
    Int2,
    /// Recent tokens f16, then int8, everything older 4-bit.
    Tiered4bit,
    /// Recent tokens f16, then int8, 4-bit, everything older 2-bit.
    Tiered,
}

/// A name that is not a KV type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown KV type '{0}' (one of: f16, int8, int4, int2, tiered-4bit, tiered)")]
pub struct UnknownKvType(pub String);

impl KvType {
    /// Every type, most precise first.
    pub const ALL: [KvType; 6] = [
        KvType::F16,
        KvType::Int8,
        KvType::Int4,
        KvType::Int2,
        KvType::Tiered4bit,
        KvType::Tiered,
    ];

    /// Their names, in [`KvType::ALL`]'s order.
    pub const NAMES: [&'static str; 6] = ["f16", "int8", "int4", "int2", "tiered-4bit", "tiered"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The precision each block gets by its age.
    pub fn mix(self) -> TierMix {
        match self {
            KvType::F16 => TierMix::uniform(KvFormat::F16),
            KvType::Int8 => TierMix::uniform(KvFormat::Q8),
            KvType::Int4 => TierMix::uniform(KvFormat::Q4),
            KvType::Int2 => TierMix::uniform(KvFormat::Q2),
            KvType::Tiered4bit => mix_4bit(),
            KvType::Tiered => default_mix(),
        }
    }

    /// Whether every block keeps one format (no transcoding as a sequence grows).
    pub fn is_uniform(self) -> bool {
        self.mix().uniform_format().is_some()
    }

    /// Bytes per token of a sequence of `ctx` tokens, from the block formats themselves
    /// (codes plus per-channel and per-group scales and minima) and the mix's format for
    /// each block at that length. A cache that transcodes also holds, while a prompt is
    /// read, up to one micro-batch (`ubatch` tokens) in f16 before the mix demotes it:
    /// counted, so the figure is the peak, not the resting size. A head size the
    /// quantized formats do not support counts as f16, which the cache then uses.
    /// Windowed layers count only the blocks they hold ([`KvType::seq_bytes`]).
    pub fn bytes_per_token(self, layout: &KvLayout, ctx: usize, ubatch: usize) -> u64 {
        let ctx = ctx.max(1);
        self.seq_bytes(layout, ctx, ubatch).div_ceil(ctx as u64)
    }

    /// The most bytes one sequence's KV holds while it is read from position 0 to `ctx`
    /// tokens: see [`TierMix::seq_bytes`].
    pub fn seq_bytes(self, layout: &KvLayout, ctx: usize, ubatch: usize) -> u64 {
        self.mix().seq_bytes(layout, ctx, ubatch)
    }

    /// Bytes one compute thread holds outside the ledger while it re-encodes a block of a
    /// sequence of up to `ctx` tokens (a decoded f16 copy of a quantized block, and the
    /// new encoding until the pool installs and accounts it); 0 when every block stays
    /// f16. The largest format the mix gives any block at `ctx` bounds the new encoding.
    pub fn transcode_bytes(self, geom: &BlockGeom, ctx: usize) -> u64 {
        let mix = self.mix();
        if mix.is_all_f16() {
            return 0;
        }
        let (bt, ctx) = (geom.block_tokens, ctx.max(1));
        let f16 = stored_block_bytes(geom, KvFormat::F16);
        let widest = (0..ctx.div_ceil(bt))
            .map(|b| mix.format_for(b, ctx, bt))
            .filter(|&f| f != KvFormat::F16)
            .map(|f| stored_block_bytes(geom, f))
            .max()
            .unwrap_or(0);
        f16 + widest
    }
}

impl FromStr for KvType {
    type Err = UnknownKvType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KvType::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownKvType(s.to_string()))
    }
}

impl serde::Serialize for KvType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `tiered` mix, chosen by `llmem bench kv` measurements (docs/design/kv.md): the
/// first block (the attention sink) and the last 32 tokens stay f16, the 64 before them
/// int8, the 192 before those 4-bit, everything older 2-bit — 4.2× the tokens of f16 in
/// the same bytes at ctx 512, perplexity +0.5% there (+4% at ctx 2048, where most of the
/// cache is 2-bit).
fn default_mix() -> TierMix {
    TierMix {
        cool_tokens: 192,
        cold_format: KvFormat::Q2,
        ..mix_4bit()
    }
}

/// The `tiered-4bit` mix: as `tiered`, but never below 4 bits: everything older than the
/// int8 window is 4-bit (2.4× the tokens of f16, perplexity unchanged within noise).
fn mix_4bit() -> TierMix {
    TierMix {
        sink_blocks: 1,
        sink_format: KvFormat::F16,
        hot_tokens: 32,
        warm_tokens: 64,
        cool_tokens: 0,
        cold_format: KvFormat::Q4,
    }
}

/// Bytes of a block the cache stores in format `f` (a head size the quantized formats do
/// not support is stored f16).
pub fn stored_block_bytes(geom: &BlockGeom, f: KvFormat) -> u64 {
    geom.block_bytes(if f.supports(geom) { f } else { KvFormat::F16 }) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_list_the_choices() {
        for t in KvType::ALL {
            assert_eq!(t.name().parse::<KvType>().unwrap(), t);
            assert_eq!(t.to_string(), t.name());
        }
        let e = "int3".parse::<KvType>().unwrap_err().to_string();
        assert!(e.contains("int3") && e.contains("tiered-4bit"), "{e}");
    }

    #[test]
    fn uniform_types_cost_their_format_and_mixes_cost_less_than_f16() {
        let layout = KvLayout::new(30, 3, 64, 16).unwrap();
        let geom = layout.geom();
        let f16 = KvType::F16.bytes_per_token(&layout, 4096, 512);
        assert_eq!(f16, 30 * 3 * 64 * 2 * 2);
        let int8 = KvType::Int8.bytes_per_token(&layout, 4096, 128);
        assert!(int8 < f16 / 2 + f16 / 8, "{int8} vs {f16}");
        let tiered = KvType::Tiered.bytes_per_token(&layout, 4096, 128);
        let t4 = KvType::Tiered4bit.bytes_per_token(&layout, 4096, 128);
        assert!(tiered < t4 && t4 < int8, "{tiered} {t4} {int8}");
        assert_eq!(KvType::F16.transcode_bytes(&geom, 4096), 0);
        assert!(KvType::Tiered.transcode_bytes(&geom, 4096) > 0);
        assert!(KvType::Int4.is_uniform() && !KvType::Tiered.is_uniform());
    }
}
