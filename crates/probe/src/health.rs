//! The health score: the seed's five weighted components, a rating, recommendations.
//!
//! | component | weight | input | score in [0, 1] |
//! |---|---|---|---|
//! | utilization | 0.30 | `u` = 1 − available/total, or the cgroup's working set over its limit if higher | `u` < 0.7: 0.5 + 0.5·u/0.7 (idle memory is waste, not danger); 0.7–0.9: 1; above: (1 − u)/0.1 |
//! | fragmentation | 0.20 | `f` = the ledger's fragmentation, else the OS's (unusable free space for 2 MiB blocks) | 1 − f/0.6 (the 0.3 warning threshold scores 0.5) |
//! | allocation efficiency | 0.20 | drift `d` = \|footprint − ledger total\|, allowance `a` = 64 MiB | 1 − max(0, d − a)/footprint |
//! | reclaim performance | 0.15 | mean time pressure episodes took to clear (monitor history), else PSI `full avg60` (the cgroup's if any) | 1 − mean/60 s; else 1 − full_avg60/10 % |
//! | swap avoidance | 0.15 | `s` = swap used / physical memory | 1 − s/0.1 (the 0.1 critical threshold scores 0) |
//!
//! Scores are clamped to [0, 1]. A component whose input is unknown (no ledger, no
//! history and no PSI) is left out and the others' weights are scaled up to sum to 1, so a
//! missing signal neither helps nor hurts.
//!
//! The allowance exists because llmem by design routes only allocations ≥ 64 KiB through
//! the ledger: code, the allocator's own overhead and small buffers are a steady few tens
//! of MiB that should not read as a leak.

use serde::{Deserialize, Serialize};

use crate::monitor::{ReclaimStats, Sample};
use crate::pressure::{PressureLevel, PressureSource};
use crate::recommend::{Recommendation, recommend};

/// Facts about the model and its KV cache that only the caller knows. Every field is
/// optional; recommendations that need a missing one are not made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HealthContext {
    /// Bytes of the model's weights (the GGUF tensor data).
    pub model_weight_bytes: Option<u64>,
    /// Bytes of KV cache held at f16 (the hot tier) now.
    pub kv_f16_bytes: Option<u64>,
    /// The context length llmem runs with (`--ctx`).
    pub ctx_tokens: Option<u64>,
    /// KV bytes one context position costs over all layers and all sequences that may run
    /// at once (so `ctx_tokens × kv_bytes_per_token` is the KV at full context).
    pub kv_bytes_per_token: Option<u64>,
    /// The GPU's working-set size when the probe's GPU view lacks it (Metal's
    /// `recommendedMaxWorkingSetSize`).
    pub gpu_working_set_bytes: Option<u64>,
    /// What `kv_f16_bytes` of KV would take as int8, from the KV format's own layout
    /// (codes, scales and minima). Without it the int8 advice estimates 17/32 of f16.
    pub kv_int8_bytes: Option<u64>,
}

impl HealthContext {
    /// An empty context.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// With the model's weight bytes.
    #[must_use]
    pub fn with_model_weights(mut self, bytes: u64) -> Self {
        self.model_weight_bytes = Some(bytes);
        self
    }

    /// With the f16 KV bytes in use.
    #[must_use]
    pub fn with_kv_f16(mut self, bytes: u64) -> Self {
        self.kv_f16_bytes = Some(bytes);
        self
    }

    /// With the context length and the KV bytes per context position.
    #[must_use]
    pub fn with_ctx(mut self, ctx_tokens: u64, kv_bytes_per_token: u64) -> Self {
        self.ctx_tokens = Some(ctx_tokens);
        self.kv_bytes_per_token = Some(kv_bytes_per_token);
        self
    }

    /// With the GPU working-set size.
    #[must_use]
    pub fn with_gpu_working_set(mut self, bytes: u64) -> Self {
        self.gpu_working_set_bytes = Some(bytes);
        self
    }

    /// With the bytes the same KV takes as int8.
    #[must_use]
    pub fn with_kv_int8(mut self, bytes: u64) -> Self {
        self.kv_int8_bytes = Some(bytes);
        self
    }
}

/// One of the five components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// Memory in use against the 70–90 % optimum.
    Utilization,
    /// Free memory (or pool space) in unusable pieces.
    Fragmentation,
    /// How much of the process the ledger accounts for.
    AllocationEfficiency,
    /// How fast pressure is relieved.
    ReclaimPerformance,
    /// How little swap is used.
    SwapAvoidance,
}

impl Component {
    /// snake_case name, stable (a Prometheus label value).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Utilization => "utilization",
            Self::Fragmentation => "fragmentation",
            Self::AllocationEfficiency => "allocation_efficiency",
            Self::ReclaimPerformance => "reclaim_performance",
            Self::SwapAvoidance => "swap_avoidance",
        }
    }

    /// The seed's weight.
    #[must_use]
    pub fn weight(self) -> f64 {
        match self {
            Self::Utilization => 0.3,
            Self::Fragmentation | Self::AllocationEfficiency => 0.2,
            Self::ReclaimPerformance | Self::SwapAvoidance => 0.15,
        }
    }
}

/// One component's input and score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ComponentScore {
    /// Which.
    pub component: Component,
    /// Its weight in the seed's formula.
    pub weight: f64,
    /// The measured input (see the module docs); `None` when unknown.
    pub input: Option<f64>,
    /// The score in [0, 1]; `None` when the input is unknown.
    pub score: Option<f64>,
}

/// The verdict in a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rating {
    /// Score below 0.4, or pressure critical.
    Critical,
    /// 0.4 to 0.6.
    Poor,
    /// 0.6 to 0.75.
    Fair,
    /// 0.75 to 0.9.
    Good,
    /// 0.9 and above.
    Excellent,
}

impl Rating {
    /// The rating of a score, capped by pressure: at warning no better than fair, at
    /// critical critical — a machine about to swap is not "good" however tidy it is.
    #[must_use]
    pub fn of(score: f64, pressure: PressureLevel) -> Self {
        let by_score = if score >= 0.9 {
            Self::Excellent
        } else if score >= 0.75 {
            Self::Good
        } else if score >= 0.6 {
            Self::Fair
        } else if score >= 0.4 {
            Self::Poor
        } else {
            Self::Critical
        };
        match pressure {
            PressureLevel::Normal => by_score,
            PressureLevel::Warning => by_score.min(Self::Fair),
            PressureLevel::Critical => Self::Critical,
        }
    }
}

/// Pressure in the report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PressureSummary {
    /// In [0, 1].
    pub value: f64,
    /// Normal, warning, critical.
    pub level: PressureLevel,
    /// The signal that set it.
    pub source: PressureSource,
}

/// The version of [`HealthReport`]'s JSON shape; bumped when a field changes meaning.
pub const HEALTH_SCHEMA_VERSION: u32 = 1;

/// A one-shot health report: what `llmem health --json` prints.
///
/// docs/design/probe.md gives its JSON schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// [`HEALTH_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// When the sample was taken, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Physical memory.
    pub mem_total_bytes: u64,
    /// Available memory.
    pub mem_available_bytes: u64,
    /// Swap in use.
    pub swap_used_bytes: u64,
    /// This process's footprint (phys_footprint on macOS, else RSS).
    pub process_footprint_bytes: u64,
    /// Footprint − ledger total, with a ledger.
    pub untracked_bytes: Option<i64>,
    /// Pressure now.
    pub pressure: PressureSummary,
    /// The weighted score in [0, 1].
    pub health_score: f64,
    /// The score in a word.
    pub rating: Rating,
    /// The five components.
    pub components: Vec<ComponentScore>,
    /// What to change, most urgent first.
    pub recommendations: Vec<Recommendation>,
}

/// Utilization score (see the module docs).
#[must_use]
pub fn utilization_score(u: f64) -> f64 {
    let u = u.clamp(0.0, 1.0);
    if u < 0.7 {
        0.5 + 0.5 * u / 0.7
    } else if u <= 0.9 {
        1.0
    } else {
        ((1.0 - u) / 0.1).clamp(0.0, 1.0)
    }
}

/// Fragmentation score.
#[must_use]
pub fn fragmentation_score(f: f64) -> f64 {
    (1.0 - f / 0.6).clamp(0.0, 1.0)
}

/// Untracked bytes below which drift costs nothing.
pub const DRIFT_ALLOWANCE_BYTES: u64 = 64 << 20;

/// Allocation-efficiency score from the footprint and the untracked bytes.
#[must_use]
pub fn allocation_efficiency_score(footprint_bytes: u64, untracked_bytes: i64) -> f64 {
    if footprint_bytes == 0 {
        return 1.0;
    }
    let excess = untracked_bytes
        .unsigned_abs()
        .saturating_sub(DRIFT_ALLOWANCE_BYTES);
    (1.0 - excess as f64 / footprint_bytes as f64).clamp(0.0, 1.0)
}

/// Time within which a pressure episode should end to score at all.
pub const RELIEF_BUDGET_MS: u64 = 60_000;

/// Reclaim score from the history; 1 when no episode happened.
#[must_use]
pub fn reclaim_score(stats: &ReclaimStats) -> f64 {
    stats.mean_relief_ms.map_or(1.0, |ms| {
        (1.0 - ms as f64 / RELIEF_BUDGET_MS as f64).clamp(0.0, 1.0)
    })
}

/// Reclaim score from PSI `full avg60` alone (percent), without history.
#[must_use]
pub fn reclaim_score_from_psi(full_avg60_pct: f64) -> f64 {
    (1.0 - full_avg60_pct / 10.0).clamp(0.0, 1.0)
}

/// Swap-avoidance score from swap used over physical memory.
#[must_use]
pub fn swap_score(swap_ratio: f64) -> f64 {
    (1.0 - swap_ratio / 0.1).clamp(0.0, 1.0)
}

impl HealthReport {
    /// Scores a sample. `reclaim` is the monitor's history; without it, PSI stands in.
    #[must_use]
    pub fn assess(
        sample: &Sample,
        reclaim: Option<&ReclaimStats>,
        context: &HealthContext,
    ) -> Self {
        let system = &sample.system;
        let footprint = sample.process.footprint_bytes();
        let cgroup_ratio = system.signals.cgroup.as_ref().and_then(|c| c.usage_ratio());
        let utilization = system.mem_used_ratio().max(cgroup_ratio.unwrap_or(0.0));
        let fragmentation = sample.fragmentation().map(|f| f.0);
        // The cgroup's own PSI where there is one: inside a container the global file
        // shows the host.
        let psi_full60 = system
            .signals
            .cgroup
            .as_ref()
            .and_then(|c| c.psi)
            .or(system.signals.psi)
            .and_then(|p| p.full)
            .map(|w| w.avg60_pct);
        let reclaim_entry = match (reclaim, psi_full60) {
            (Some(stats), _) => {
                let secs = stats.mean_relief_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
                Some((secs, reclaim_score(stats)))
            }
            (None, Some(pct)) => Some((pct, reclaim_score_from_psi(pct))),
            (None, None) => None,
        };
        let entries = [
            (
                Component::Utilization,
                Some((utilization, utilization_score(utilization))),
            ),
            (
                Component::Fragmentation,
                fragmentation.map(|f| (f, fragmentation_score(f))),
            ),
            (
                Component::AllocationEfficiency,
                sample
                    .untracked_bytes
                    .map(|u| (u as f64, allocation_efficiency_score(footprint, u))),
            ),
            (Component::ReclaimPerformance, reclaim_entry),
            (Component::SwapAvoidance, {
                let s = system.swap_ratio();
                Some((s, swap_score(s)))
            }),
        ];
        let components: Vec<ComponentScore> = entries
            .into_iter()
            .map(|(component, known)| ComponentScore {
                component,
                weight: component.weight(),
                input: known.map(|k| k.0),
                score: known.map(|k| k.1),
            })
            .collect();
        let (weighted, weights) = components
            .iter()
            .filter_map(|c| c.score.map(|s| (s * c.weight, c.weight)))
            .fold((0.0, 0.0), |acc, (ws, w)| (acc.0 + ws, acc.1 + w));
        // Utilization and swap are always known, so `weights` is at least 0.45.
        let health_score = if weights > 0.0 {
            (weighted / weights).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let pressure = &sample.pressure;
        Self {
            schema_version: HEALTH_SCHEMA_VERSION,
            unix_ms: sample.unix_ms,
            mem_total_bytes: system.mem_total_bytes,
            mem_available_bytes: system.mem_available_bytes,
            swap_used_bytes: system.swap_used_bytes,
            process_footprint_bytes: footprint,
            untracked_bytes: sample.untracked_bytes,
            pressure: PressureSummary {
                value: pressure.value,
                level: pressure.level,
                source: pressure.source,
            },
            health_score,
            rating: Rating::of(health_score, pressure.level),
            components,
            recommendations: recommend(sample, context),
        }
    }

    /// The score of one component, if known.
    #[must_use]
    pub fn component(&self, component: Component) -> Option<f64> {
        self.components
            .iter()
            .find(|c| c.component == component)
            .and_then(|c| c.score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_optimum_is_flat() {
        assert_eq!(utilization_score(0.0), 0.5);
        assert_eq!(utilization_score(0.7), 1.0);
        assert_eq!(utilization_score(0.9), 1.0);
        assert!((utilization_score(0.95) - 0.5).abs() < 1e-9);
        assert_eq!(utilization_score(1.0), 0.0);
    }

    #[test]
    fn thresholds_land_where_documented() {
        assert!((fragmentation_score(0.3) - 0.5).abs() < 1e-12);
        assert_eq!(swap_score(0.1), 0.0);
        assert_eq!(swap_score(0.0), 1.0);
        assert_eq!(allocation_efficiency_score(1 << 30, 32 << 20), 1.0);
        let half = allocation_efficiency_score(1 << 30, (512 << 20) + (64 << 20));
        assert!((half - 0.5).abs() < 1e-12);
        assert_eq!(reclaim_score(&ReclaimStats::default()), 1.0);
        assert_eq!(reclaim_score_from_psi(5.0), 0.5);
    }

    #[test]
    fn weights_sum_to_one() {
        let all = [
            Component::Utilization,
            Component::Fragmentation,
            Component::AllocationEfficiency,
            Component::ReclaimPerformance,
            Component::SwapAvoidance,
        ];
        let sum: f64 = all.iter().map(|c| c.weight()).sum();
        assert!((sum - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ratings_are_capped_by_pressure() {
        assert_eq!(Rating::of(0.95, PressureLevel::Normal), Rating::Excellent);
        assert_eq!(Rating::of(0.8, PressureLevel::Normal), Rating::Good);
        assert_eq!(Rating::of(0.95, PressureLevel::Warning), Rating::Fair);
        assert_eq!(Rating::of(0.5, PressureLevel::Warning), Rating::Poor);
        assert_eq!(Rating::of(0.95, PressureLevel::Critical), Rating::Critical);
        assert_eq!(Rating::of(0.1, PressureLevel::Normal), Rating::Critical);
    }
}
