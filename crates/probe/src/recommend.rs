//! Recommendations: each names one concrete setting and what changing it will do.
//!
//! | kind | when | setting | effect |
//! |---|---|---|---|
//! | `kv_int8` | pressure ≥ warning or memory > 90 % used, ≥ 64 MiB of f16 KV | `--kv-dtype int8` | frees 15/32 of the f16 KV (int8 plus one f16 scale per 32 values) |
//! | `wired_limit` | weights + KV exceed the GPU working set, and a limit leaving the OS max(8 GiB, 1/8) would fit them | `sudo sysctl iogpu.wired_limit_mb=N` | working set from X to N MiB |
//! | `lower_ctx` | this process has ≥ 16 MiB in swap (or, where the OS does not say per process, swap ≥ 1 % of memory) | `--ctx N` | KV shrinks by about the swapped bytes |
//! | `untracked_drift` | footprint − ledger > max(256 MiB, 10 % of footprint) | `pools.reserve` in the profile, raised by the drift | the budget stops promising memory already gone |
//! | `cgroup_limit` | the cgroup's working set ≥ 85 % of its limit | `memory.max` (systemd `MemoryMax=`) | working set at 75 % of the new limit |
//! | `compact_memory` | the OS's free memory ≥ 30 % unusable for 2 MiB blocks | `sudo sysctl vm.compact_memory=1` | the stranded free memory can back huge pages again |
//! | `lazy_weights` | weights + KV ≥ 90 % of physical memory | `--weights lazy` | resident weights bounded by the weight pool |
//!
//! The flag names are the binary's; keep this table and `cli` in step.

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
    /// Map weights lazily.
    LazyWeights,
}

/// One thing to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Recommendation {
    /// What it is about.
    pub kind: RecommendationKind,
    /// The one setting to change, as typed (`--kv-dtype int8`).
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
    out.extend(lazy_weights(sample, context));
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
    // f16: 2 bytes a value; int8 with an f16 scale per 32 values: 1 + 2/32 = 17/16.
    let saved = kv / 32 * 15;
    Some(Recommendation {
        kind: RecommendationKind::KvInt8,
        setting: "--kv-dtype int8".to_owned(),
        effect: format!(
            "+{} headroom: {} of f16 KV stored as int8 with f16 scales",
            format_bytes(saved),
            format_bytes(kv)
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

fn lazy_weights(sample: &Sample, context: &HealthContext) -> Option<Recommendation> {
    let weights = context.model_weight_bytes?;
    let need = weights + context.kv_f16_bytes.unwrap_or(0);
    let total = sample.system.mem_total_bytes;
    if total == 0 || (need as f64) < 0.9 * total as f64 {
        return None;
    }
    Some(Recommendation {
        kind: RecommendationKind::LazyWeights,
        setting: "--weights lazy".to_owned(),
        effect: format!(
            "only the layers in use stay resident, bounded by the weight pool, instead of \
             all {} of weights on a {} machine",
            format_bytes(weights),
            format_bytes(total)
        ),
        message: format!(
            "model ({}) nearly fills memory ({}): map weights lazily",
            format_bytes(need),
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
