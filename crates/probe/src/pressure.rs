//! Memory pressure as one number in [0, 1] and a level, from the raw OS signals.
//!
//! Each signal is mapped onto the same scale, where the seed's thresholds mean the same
//! thing for all of them (0.85 = start shedding, 0.95 = about to fail), and the highest
//! one wins:
//!
//! | signal | value |
//! |---|---|
//! | MemAvailable (macOS: total − "Memory Used") | `1 − available / total` |
//! | cgroup (v2, or v1's memory controller) | working set (`memory.current − inactive_file`) / min(`memory.max`, `memory.high`) |
//! | PSI `some avg10` (system-wide, and the cgroup's `memory.pressure`) | piecewise linear through 0 % → 0, 10 % → 0.85, 40 % → 0.95, 100 % → 1 |
//! | PSI `full avg10` | piecewise linear through 0 % → 0, 5 % → 0.85, 20 % → 0.95, 100 % → 1 |
//! | macOS memorystatus level | normal → 0, warning → 0.85, critical → 0.95 |
//!
//! The PSI knees are llmem's choice. A 10 % `some` stall means a token in ten waits on
//! reclaim — already visible in decode latency — and `full` stalls (every task blocked at
//! once) cost about twice as much. Android's lmkd reads the same files with knees of the
//! same order (70 ms `some` / 700 ms `full` per second for its medium and critical levels),
//! but kills apps there; llmem sheds KV first and can afford to start earlier.

use serde::{Deserialize, Serialize};

use crate::parse::PsiWindow;
use crate::snapshot::{MacPressureLevel, PressureSignals, SystemSnapshot};

/// The seed's pressure warning threshold.
pub const PRESSURE_WARNING: f64 = 0.85;
/// The seed's pressure critical threshold.
pub const PRESSURE_CRITICAL: f64 = 0.95;

/// Coarse pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PressureLevel {
    /// Below [`PRESSURE_WARNING`].
    Normal,
    /// At or above [`PRESSURE_WARNING`]: demote KV, pause ingest.
    Warning,
    /// At or above [`PRESSURE_CRITICAL`]: queue or refuse new work.
    Critical,
}

impl PressureLevel {
    /// The level of a value on the common scale.
    #[must_use]
    pub fn of(value: f64) -> Self {
        if value >= PRESSURE_CRITICAL {
            Self::Critical
        } else if value >= PRESSURE_WARNING {
            Self::Warning
        } else {
            Self::Normal
        }
    }

    /// 0, 1, 2: for gauges.
    #[must_use]
    pub fn as_number(self) -> u8 {
        match self {
            Self::Normal => 0,
            Self::Warning => 1,
            Self::Critical => 2,
        }
    }
}

/// Which signal set the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PressureSource {
    /// Available memory over total.
    MemAvailable,
    /// The cgroup's working set over its limit.
    Cgroup,
    /// PSI `some avg10`.
    PsiSome,
    /// PSI `full avg10`.
    PsiFull,
    /// macOS `kern.memorystatus_vm_pressure_level`.
    MacosLevel,
    /// Set directly by a fake probe.
    Scripted,
}

/// Pressure now: a value, its level, which signal set it, and the raw signals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Pressure {
    /// In [0, 1].
    pub value: f64,
    /// [`PressureLevel::of`] the value.
    pub level: PressureLevel,
    /// The signal that set the value.
    pub source: PressureSource,
    /// `1 − available / total`, whatever set the value.
    pub mem_used_ratio: f64,
    /// The raw signals the value was derived from.
    pub signals: PressureSignals,
}

/// Linear interpolation through `knees` (x ascending), clamped to the ends.
fn piecewise(x: f64, knees: &[(f64, f64)]) -> f64 {
    let mut previous = (0.0, 0.0);
    for &(kx, ky) in knees {
        if x <= kx {
            let (px, py) = previous;
            return py + (ky - py) * (x - px) / (kx - px);
        }
        previous = (kx, ky);
    }
    previous.1
}

/// PSI `some avg10` (percent) on the common scale.
#[must_use]
pub fn psi_some_value(window: &PsiWindow) -> f64 {
    piecewise(
        window.avg10_pct.clamp(0.0, 100.0),
        &[
            (10.0, PRESSURE_WARNING),
            (40.0, PRESSURE_CRITICAL),
            (100.0, 1.0),
        ],
    )
}

/// PSI `full avg10` (percent) on the common scale.
#[must_use]
pub fn psi_full_value(window: &PsiWindow) -> f64 {
    piecewise(
        window.avg10_pct.clamp(0.0, 100.0),
        &[
            (5.0, PRESSURE_WARNING),
            (20.0, PRESSURE_CRITICAL),
            (100.0, 1.0),
        ],
    )
}

impl Pressure {
    /// Judges a system snapshot (see the module docs for the mapping).
    #[must_use]
    pub fn assess(system: &SystemSnapshot) -> Self {
        let signals = &system.signals;
        let mem_used_ratio = system.mem_used_ratio();
        let mut best = (mem_used_ratio, PressureSource::MemAvailable);
        let mut consider = |value: f64, source| {
            if value > best.0 {
                best = (value, source);
            }
        };
        if let Some(ratio) = signals.cgroup.as_ref().and_then(|c| c.usage_ratio()) {
            consider(ratio, PressureSource::Cgroup);
        }
        let cgroup_psi = signals.cgroup.as_ref().and_then(|c| c.psi.as_ref());
        for psi in signals.psi.iter().chain(cgroup_psi) {
            consider(psi_some_value(&psi.some), PressureSource::PsiSome);
            if let Some(full) = &psi.full {
                consider(psi_full_value(full), PressureSource::PsiFull);
            }
        }
        match signals.macos_level {
            Some(MacPressureLevel::Warning) => {
                consider(PRESSURE_WARNING, PressureSource::MacosLevel);
            }
            Some(MacPressureLevel::Critical) => {
                consider(PRESSURE_CRITICAL, PressureSource::MacosLevel);
            }
            Some(MacPressureLevel::Normal) | None => {}
        }
        let value = best.0.clamp(0.0, 1.0);
        Self {
            value,
            level: PressureLevel::of(value),
            source: best.1,
            mem_used_ratio,
            signals: signals.clone(),
        }
    }

    /// A pressure set directly (for fakes), with the snapshot's signals kept.
    #[must_use]
    pub fn scripted(value: f64, system: &SystemSnapshot) -> Self {
        let value = value.clamp(0.0, 1.0);
        Self {
            value,
            level: PressureLevel::of(value),
            source: PressureSource::Scripted,
            mem_used_ratio: system.mem_used_ratio(),
            signals: system.signals.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Psi;

    #[test]
    fn psi_knees() {
        let w = |pct| PsiWindow::from_pct(pct, 0.0, 0.0);
        assert_eq!(psi_some_value(&w(0.0)), 0.0);
        assert!((psi_some_value(&w(5.0)) - 0.425).abs() < 1e-12);
        assert!((psi_some_value(&w(10.0)) - 0.85).abs() < 1e-12);
        assert!((psi_some_value(&w(40.0)) - 0.95).abs() < 1e-12);
        assert!((psi_some_value(&w(100.0)) - 1.0).abs() < 1e-12);
        assert!((psi_full_value(&w(20.0)) - 0.95).abs() < 1e-12);
    }

    #[test]
    fn highest_signal_wins() {
        let mut system = SystemSnapshot::new(100, 50);
        assert_eq!(
            Pressure::assess(&system).source,
            PressureSource::MemAvailable
        );
        assert_eq!(Pressure::assess(&system).level, PressureLevel::Normal);
        system.signals.psi = Some(Psi::new(
            PsiWindow::from_pct(12.0, 0.0, 0.0),
            Some(PsiWindow::from_pct(1.0, 0.0, 0.0)),
        ));
        let p = Pressure::assess(&system);
        assert_eq!(
            (p.source, p.level),
            (PressureSource::PsiSome, PressureLevel::Warning)
        );
        system.signals.macos_level = Some(MacPressureLevel::Critical);
        let p = Pressure::assess(&system);
        assert_eq!(
            (p.source, p.level),
            (PressureSource::MacosLevel, PressureLevel::Critical)
        );
        assert_eq!(p.mem_used_ratio, 0.5);
    }
}
