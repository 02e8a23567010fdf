//! The measured tier rates in `<user cache dir>/llmem/tier-throughput.json`: `bench
//! memory` and `bench kv` write their parts; `run` turns them into the eviction score's
//! reload costs and `plan` into a decode-speed bound.

use std::path::PathBuf;

use kvcache::policy::Rates;
use membench::{CodecKind, CompressorKind, Machine, TierThroughput};

use crate::exit::CliError;

/// The saved rates, if any were measured on this CPU. A file that cannot be read is
/// reported on stderr and ignored (the defaults apply), never fatal; a rate that is not a
/// positive finite number is dropped as if never measured.
pub fn load() -> Option<TierThroughput> {
    match TierThroughput::load() {
        Ok(Some(mut t)) if t.cpu_model == Machine::this_cpu_model() => {
            sanitize(&mut t);
            Some(t)
        }
        Ok(_) => None,
        Err(e) => {
            crate::out::warn(&format!("ignoring saved tier rates: {e}"));
            None
        }
    }
}

fn rate_ok(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

fn sanitize(t: &mut TierThroughput) {
    t.dram_copy_gb_s = t.dram_copy_gb_s.filter(|&x| rate_ok(x));
    t.codecs
        .retain(|_, c| rate_ok(c.quantize_gb_s) && rate_ok(c.dequantize_gb_s));
    t.compressors
        .retain(|_, c| rate_ok(c.compress_gb_s) && rate_ok(c.decompress_gb_s));
    t.disk = t.disk.filter(|d| rate_ok(d.read_gb_s.median));
    t.prefill_tok_s.retain(|_, &mut r| rate_ok(r));
}

/// Loads the saved rates (a fresh record when none, or when they were measured on
/// another CPU), lets `f` fill in its part and saves atomically; returns the path.
pub fn update(f: impl FnOnce(&mut TierThroughput)) -> Result<PathBuf, CliError> {
    let mut t = load().unwrap_or_else(|| TierThroughput::new(Machine::this_cpu_model()));
    f(&mut t);
    t.save()
        .map_err(|e| CliError::Runtime(anyhow::anyhow!("cannot save tier rates: {e}")))
}

/// The key under which a model's prefill rate is saved.
pub fn model_key(digest: u64) -> String {
    format!("{digest:016x}")
}

/// The eviction score's rates for the model with `digest`: measured where `t` has them,
/// defaults elsewhere.
pub fn rates(t: Option<&TierThroughput>, digest: u64) -> Rates {
    let mut r = Rates::default();
    let Some(t) = t else { return r };
    // Promotion of a cold block dequantizes it; the 4-bit codec is the cold tier's.
    if let Some(c) = t.codecs.get(&CodecKind::Int4) {
        r.dequant_b_s = c.dequantize_gb_s * 1e9;
    }
    if let Some(c) = t
        .compressors
        .get(&CompressorKind::Lz4)
        .or_else(|| t.compressors.get(&CompressorKind::Zstd))
    {
        r.decompress_b_s = c.decompress_gb_s * 1e9;
    }
    if let Some(d) = &t.disk {
        r.disk_read_b_s = d.read_gb_s.median * 1e9;
    }
    if let Some(&p) = t.prefill_tok_s.get(&model_key(digest)) {
        r.prefill_tok_s = p;
    }
    r
}
