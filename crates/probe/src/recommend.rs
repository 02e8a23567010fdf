//! Recommendations: each names one concrete setting and what changing it will do.
//!
//! | kind | when | setting | effect |
//! |---|---|---|---|
//! | `kv_int8` | pressure ≥ warning or memory > 90 % used, ≥ 64 MiB of f16 KV | `--kv-type int8` | frees the f16 KV less its int8 size (given by the caller, else 17/32 of it) |
//! | `wired_limit` | weights + KV exceed the GPU working set, and a limit leaving the OS max(8 GiB, 1/8) would fit them | `sudo sysctl iogpu.wired_limit_mb=N` | working set from X to N MiB |
//! | `lower_ctx` | this process has ≥ 16 MiB in swap (or, where the OS does not say per process, swap ≥ 1 % of memory) | `--ctx N` | KV shrinks by about the swapped bytes |
//! | `untracked_drift` | footprint − ledger > max(256 MiB, 10 % of footprint) | `pools.reserve` in the profile, raised by the drift | the budget stops promising memory already gone |
//! | `cgroup_limit` | the cgroup's working set ≥ 85 % of its limit | `memory.max` (systemd `MemoryMax=`) | working set at 75 % of the new limit |
//! | `compact_memory` | the OS's free memory ≥ 30 % unusable for 2 MiB blocks | `sudo sysctl vm.compact_memory=1` | the stranded free memory can back huge pages again |
//! | `fit_memory` | weights + KV at full context ≥ 90 % of memory (the cgroup's limit where lower) | `--ctx N`, or, when the weights alone leave no room, `--model` with a smaller file | weights + KV at 75 % of memory |
//!
//! Settings that start with `--` are flags of `llmem run`; the binary's tests parse each
//! one with its own parser, so a flag renamed there fails here first.

use serde::{Deserialize, Serialize};

use crate::health::HealthContext;
use crate::monitor::{FragmentationSource, Sample};
use crate::pressure::PressureLevel;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What a recommendation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecommendationKind {
    /// Store KV as int8.
    KvInt8,
    /// Raise the GPU's wired-memory limit (macOS).
    WiredLimit,
    /// Shorten the context.
    LowerCtx,
    /// Account for memory the ledger does not see.
    UntrackedDrift,
    /// Raise the cgroup's memory limit.
    CgroupLimit,
    /// Compact the kernel's free memory (Linux).
    CompactMemory,
    /// The model and its KV at full context nearly fill memory: a shorter context, or a
    /// smaller file when the weights alone do.
    FitMemory,
}

/// One thing to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Recommendation {
    /// What it is about.
    pub kind: RecommendationKind,
    /// The one setting to change, as typed (`--kv-type int8`).
    pub setting: String,
    /// What changing it will do, with numbers.
    pub effect: String,
    /// One line for people: `int8 KV: +2.1 GiB headroom`.
    pub message: String,
    /// Bytes the change frees or adds, where that is the effect.
    pub bytes: Option<u64>,
}

/// `2.1 GiB`, `512 MiB`, `64 KiB`, `12 B`.
#[must_use]
pub fn format_bytes(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// The recommendations a sample calls for, most urgent first.
#[must_use]
pub fn recommend(sample: &Sample, context: &HealthContext) -> Vec<Recommendation> {
    let mut out = Vec::new();
    out.extend(lower_ctx(sample, context));
    out.extend(cgroup_limit(sample));
    out.extend(wired_limit(sample, context));
    out.extend(kv_int8(sample, context));
    out.extend(fit_memory(sample, context));
    out.extend(untracked_drift(sample));
    out.extend(compact_memory(sample));
    out
}

fn tight(sample: &Sample) -> bool {
    sample.pressure.level >= PressureLevel::Warning || sample.system.mem_used_ratio() > 0.9
}

fn kv_int8(sample: &Sample, context: &HealthContext) -> Option<Recommendation> {
    let kv = context.kv_f16_bytes.filter(|&kv| kv >= 64 * MIB)?;
    if !tight(sample) {
        return None;
    }
    // Without the caller's figure: 1 byte a value plus an f16 scale per 32 values, 17/32
    // of f16's 2 bytes.
    let int8 = context.kv_int8_bytes.unwrap_or(kv / 32 * 17).min(kv);
    let saved = kv - int8;
    Some(Recommendation {
        kind: RecommendationKind::KvInt8,
        setting: "--kv-type int8".to_owned(),
        effect: format!(
            "+{} headroom: {} of f16 KV stored as int8 in {}",
            format_bytes(saved),
            format_bytes(kv),
            format_bytes(int8)
        ),
        message: format!("int8 KV: +{} headroom", format_bytes(saved)),
        bytes: Some(saved),
    })
}

/// The GPU working set the sample or the context knows.
fn working_set(sample: &Sample, context: &HealthContext) -> Option<u64> {
    sample
        .gpus
        .iter()
        .find_map(|g| g.working_set_bytes)
        .or(context.gpu_working_set_bytes)
}

fn wired_limit(sample: &Sample, context: &HealthContext) -> Option<Recommendation> {
    let weights = context.model_weight_bytes?;
    let working_set = working_set(sample, context)?;
    let need = weights + context.kv_f16_bytes.unwrap_or(0);
    if need <= working_set {
        return None;
    }
    let total = sample.system.mem_total_bytes;
    let os_share = (8 * GIB).max(total / 8);
    let cap = total.saturating_sub(os_share);
    // The model, its KV, and 1 GiB for Metal's own buffers, rounded up to a GiB.
    let target = (need + GIB).div_ceil(GIB) * GIB;
    if target > cap {
        return None;
    }
    let mib = target / MIB;
    Some(Recommendation {
        kind: RecommendationKind::WiredLimit,
        setting: format!("sudo sysctl iogpu.wired_limit_mb={mib}"),
        effect: format!(
            "GPU working set {} -> {}: the model and KV ({}) fit, leaving the OS {}",
            format_bytes(working_set),
            format_bytes(target),
            format_bytes(need),
            format_bytes(total - target)
        ),
        message: format!(
            "model larger than the GPU working set: `sudo sysctl iogpu.wired_limit_mb={mib}`"
        ),
        bytes: Some(target - working_set),
    })
}

fn lower_ctx(sample: &Sample, context: &HealthContext) -> Option<Recommendation> {
    let swapped = match sample.process.swap_bytes {
        Some(own) if own >= 16 * MIB => own,
        Some(_) => return None,
        None if sample.system.swap_ratio() >= 0.01 => sample.system.swap_used_bytes,
        None => return None,
    };
    let ctx = context.ctx_tokens?;
    let per_token = context.kv_bytes_per_token.filter(|&b| b > 0)?;
    let drop = swapped.div_ceil(per_token);
    let new_ctx = ctx.saturating_sub(drop) / 256 * 256;
    if new_ctx < 256 || new_ctx >= ctx {
        return None;
    }
    let freed = (ctx - new_ctx) * per_token;
    Some(Recommendation {
        kind: RecommendationKind::LowerCtx,
        setting: format!("--ctx {new_ctx}"),
        effect: format!(
            "KV at full context shrinks by {}, covering the {} in swap",
            format_bytes(freed),
            format_bytes(swapped)
        ),
        message: format!("swap in use: lower --ctx to {new_ctx}"),
        bytes: Some(freed),
    })
}

fn untracked_drift(sample: &Sample) -> Option<Recommendation> {
    let untracked = u64::try_from(sample.untracked_bytes?).ok()?;
    let footprint = sample.process.footprint_bytes();
    if untracked <= (256 * MIB).max(footprint / 10) {
        return None;
    }
    let mib = untracked.div_ceil(MIB);
    Some(Recommendation {
        kind: RecommendationKind::UntrackedDrift,
        setting: format!("pools.reserve += {mib}MiB (profile)"),
        effect: format!(
            "the budget counts the {mib} MiB this process holds outside llmem's pools, so it \
             stops promising memory that is already gone"
        ),
        message: format!("untracked memory drift {mib} MiB"),
        bytes: Some(untracked),
    })
}

fn cgroup_limit(sample: &Sample) -> Option<Recommendation> {
    let cgroup = sample.system.signals.cgroup.as_ref()?;
    let ratio = cgroup.usage_ratio()?;
    if ratio < 0.85 {
        return None;
    }
    let working_set = cgroup.working_set_bytes();
    let limit = (working_set * 4 / 3).div_ceil(GIB).max(1);
    Some(Recommendation {
        kind: RecommendationKind::CgroupLimit,
        setting: format!("memory.max={limit}G (systemd: MemoryMax={limit}G)"),
        effect: format!(
            "the cgroup's working set ({}) is {:.0}% of its limit; at {limit} GiB it is 75%",
            format_bytes(working_set),
            ratio * 100.0
        ),
        message: format!("cgroup limit nearly reached: raise memory.max to {limit}G"),
        bytes: Some((limit * GIB).saturating_sub(cgroup.max_bytes.unwrap_or(0))),
    })
}

fn compact_memory(sample: &Sample) -> Option<Recommendation> {
    let (f, FragmentationSource::Os) = sample.fragmentation()? else {
        return None;
    };
    if f < 0.3 {
        return None;
    }
    let stranded = (sample.system.mem_free_bytes as f64 * f) as u64;
    Some(Recommendation {
        kind: RecommendationKind::CompactMemory,
        setting: "sudo sysctl vm.compact_memory=1".to_owned(),
        effect: format!(
            "{} of free memory ({:.0}%) is in pieces under 2 MiB; compaction lets huge \
             pages back weights and KV again",
            format_bytes(stranded),
            f * 100.0
        ),
        message: format!("free memory fragmented ({:.0}%): compact it", f * 100.0),
        bytes: Some(stranded),
    })
}

/// Weights and KV at ≥ 90 % of memory. The KV is what `--ctx` controls, so a shorter
/// context comes first, sized to bring both to 75 %; only when the weights alone leave no
/// room for 256 positions is the file itself the thing to change. (The weights were once
/// blamed for the KV's bytes, and told to load lazily through a flag that does not exist.)
fn fit_memory(sample: &Sample, context: &HealthContext) -> Option<Recommendation> {
    let weights = context.model_weight_bytes?;
    let kv = context.kv_f16_bytes.unwrap_or(0);
    let need = weights.saturating_add(kv);
    let total = sample.system.memory_limit_bytes();
    if total == 0 || (need as f64) < 0.9 * total as f64 {
        return None;
    }
    let target = total / 4 * 3;
    let both = format!(
        "weights {} and KV {} at full context",
        format_bytes(weights),
        format_bytes(kv)
    );
    let shorter = context
        .ctx_tokens
        .zip(context.kv_bytes_per_token.filter(|&b| b > 0))
        .and_then(|(ctx, per_token)| {
            let fits = target.saturating_sub(weights) / per_token;
            let new_ctx = fits.min(ctx.saturating_sub(1)) / 256 * 256;
            (new_ctx >= 256).then_some((ctx, new_ctx, per_token))
        });
    if let Some((ctx, new_ctx, per_token)) = shorter {
        let new_kv = new_ctx.saturating_mul(per_token);
        return Some(Recommendation {
            kind: RecommendationKind::FitMemory,
            setting: format!("--ctx {new_ctx}"),
            effect: format!(
                "{both} are {:.0}% of memory ({}); at --ctx {new_ctx} instead of {ctx} the \
                 KV is {} and both fit in 75%",
                need as f64 * 100.0 / total as f64,
                format_bytes(total),
                format_bytes(new_kv)
            ),
            message: format!(
                "KV at --ctx {ctx} ({}) and weights ({}) nearly fill memory: lower --ctx to \
                 {new_ctx}",
                format_bytes(kv),
                format_bytes(weights)
            ),
            bytes: Some(kv.saturating_sub(new_kv)),
        });
    }
    if weights < target {
        return None; // the KV is the problem, but its context is not known here
    }
    Some(Recommendation {
        kind: RecommendationKind::FitMemory,
        setting: "--model SMALLER.gguf".to_owned(),
        effect: format!(
            "the weights alone are {} of {} memory; a lower-bit quantization of the model \
             (or a smaller model) is the change that fits",
            format_bytes(weights),
            format_bytes(total)
        ),
        message: format!(
            "weights ({}) nearly fill memory ({}): use a smaller quantization",
            format_bytes(weights),
            format_bytes(total)
        ),
        bytes: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_format_in_binary_units() {
        assert_eq!(format_bytes(2_254_857_830), "2.1 GiB");
        assert_eq!(format_bytes(512 * MIB), "512 MiB");
        assert_eq!(format_bytes(64 * 1024), "64 KiB");
        assert_eq!(format_bytes(12), "12 B");
    }
}
