//! [`Monitor`]: samples a probe, keeps a bounded history, raises and clears alerts.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::ProbeError;
use crate::health::{HealthContext, HealthReport, RELIEF_BUDGET_MS};
use crate::ledger::LedgerView;
use crate::memory_probe::MemoryProbe;
use crate::parse::CgroupEvents;
use crate::pressure::{PRESSURE_CRITICAL, PRESSURE_WARNING, Pressure, PressureLevel};
use crate::snapshot::{GpuSnapshot, ProcessSnapshot, SystemSnapshot};

/// Everything read at one moment, with llmem's ledger beside the OS view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Sample {
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The machine.
    pub system: SystemSnapshot,
    /// This process.
    pub process: ProcessSnapshot,
    /// Pressure judged from `system`.
    pub pressure: Pressure,
    /// GPUs.
    pub gpus: Vec<GpuSnapshot>,
    /// llmem's ledger, when the caller has one.
    pub ledger: Option<LedgerView>,
    /// `footprint − ledger total` (see [`LedgerView::untracked_bytes`]); `None` without a
    /// ledger.
    pub untracked_bytes: Option<i64>,
}

impl Sample {
    /// Reads every view of `probe` once.
    ///
    /// # Errors
    /// Any reading that failed.
    pub fn capture(
        probe: &impl MemoryProbe,
        ledger: Option<LedgerView>,
        unix_ms: u64,
    ) -> Result<Self, ProbeError> {
        let system = probe.system()?;
        let process = probe.process()?;
        let pressure = probe.pressure_of(&system);
        let gpus = probe.gpus(&system)?;
        let untracked_bytes = ledger
            .as_ref()
            .map(|l| l.untracked_bytes(process.footprint_bytes()));
        Ok(Self {
            unix_ms,
            system,
            process,
            pressure,
            gpus,
            ledger,
            untracked_bytes,
        })
    }

    /// Fragmentation: the ledger's measure when it gives one, else the OS's.
    #[must_use]
    pub fn fragmentation(&self) -> Option<(f64, FragmentationSource)> {
        if let Some(f) = self.ledger.as_ref().and_then(|l| l.fragmentation) {
            return Some((f, FragmentationSource::Ledger));
        }
        self.system
            .fragmentation
            .map(|f| (f, FragmentationSource::Os))
    }
}

/// Whose fragmentation a number is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FragmentationSource {
    /// llmem's pools ([`LedgerView::fragmentation`]).
    Ledger,
    /// The OS's free memory ([`SystemSnapshot::fragmentation`]).
    Os,
}

/// Milliseconds since the Unix epoch now (0 if the clock is before 1970).
#[must_use]
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Alert thresholds. The defaults are the seed's.
///
/// An alert is raised when its value reaches the threshold and cleared only when the
/// value falls below `threshold × (1 − clear_margin)`. The default margin, 5 %, puts the
/// pressure warning's clear point at 0.8075: wider than the ±1–2 % that MemAvailable and
/// PSI avg10 wander between 1 Hz samples at steady load, so a steady system does not
/// flap, yet narrow enough that an alert ends as soon as the ladder has really shed load.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Thresholds {
    /// Pressure warning, 0.85.
    pub pressure_warning: f64,
    /// Pressure critical, 0.95.
    pub pressure_critical: f64,
    /// Fragmentation warning, 0.3.
    pub fragmentation_warning: f64,
    /// Swap in use over physical memory, critical at 0.1 ([`SystemSnapshot::swap_ratio`]).
    pub swap_critical: f64,
    /// Relative hysteresis margin, 0.05.
    pub clear_margin: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            pressure_warning: PRESSURE_WARNING,
            pressure_critical: PRESSURE_CRITICAL,
            fragmentation_warning: 0.3,
            swap_critical: 0.1,
            clear_margin: 0.05,
        }
    }
}

/// A [`MonitorConfig`] that makes no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The history must hold at least one sample.
    #[error("history length must be at least 1, got {len}")]
    HistoryLen {
        /// The length asked for.
        len: usize,
    },
    /// A threshold outside (0, 1].
    #[error("threshold {name} must be in (0, 1], got {value}")]
    Threshold {
        /// Which one.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// Warning above critical.
    #[error("pressure warning {warning} must be below critical {critical}")]
    Order {
        /// The warning threshold.
        warning: f64,
        /// The critical threshold.
        critical: f64,
    },
    /// A margin outside [0, 1).
    #[error("clear margin must be in [0, 1), got {value}")]
    Margin {
        /// Its value.
        value: f64,
    },
}

/// How a [`Monitor`] samples and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MonitorConfig {
    /// Samples kept, oldest dropped first (the seed's 1,000).
    pub history_len: usize,
    /// Alert thresholds.
    pub thresholds: Thresholds,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            history_len: 1000,
            thresholds: Thresholds::default(),
        }
    }
}

impl MonitorConfig {
    /// Checks the config.
    ///
    /// # Errors
    /// The first field that makes no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.history_len == 0 {
            return Err(ConfigError::HistoryLen { len: 0 });
        }
        let t = &self.thresholds;
        for (name, value) in [
            ("pressure_warning", t.pressure_warning),
            ("pressure_critical", t.pressure_critical),
            ("fragmentation_warning", t.fragmentation_warning),
            ("swap_critical", t.swap_critical),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                return Err(ConfigError::Threshold { name, value });
            }
        }
        if t.pressure_warning >= t.pressure_critical {
            return Err(ConfigError::Order {
                warning: t.pressure_warning,
                critical: t.pressure_critical,
            });
        }
        if !(0.0..1.0).contains(&t.clear_margin) {
            return Err(ConfigError::Margin {
                value: t.clear_margin,
            });
        }
        Ok(())
    }
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Pressure at or above the warning threshold.
    PressureWarning,
    /// Pressure at or above the critical threshold.
    PressureCritical,
    /// Fragmentation at or above its warning threshold.
    Fragmentation,
    /// Swap in use at or above its critical share of memory.
    Swap,
    /// The cgroup hit `memory.max` or the OOM killer ran since the previous sample.
    CgroupLimit,
}

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverity {
    /// Act soon.
    Warning,
    /// Act now.
    Critical,
}

impl AlertKind {
    /// Its severity.
    #[must_use]
    pub fn severity(self) -> AlertSeverity {
        match self {
            Self::PressureWarning | Self::Fragmentation => AlertSeverity::Warning,
            Self::PressureCritical | Self::Swap | Self::CgroupLimit => AlertSeverity::Critical,
        }
    }

    /// snake_case name, stable (a Prometheus label value).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::PressureWarning => "pressure_warning",
            Self::PressureCritical => "pressure_critical",
            Self::Fragmentation => "fragmentation",
            Self::Swap => "swap",
            Self::CgroupLimit => "cgroup_limit",
        }
    }

    /// Every kind, in order.
    pub const ALL: [Self; 5] = [
        Self::PressureWarning,
        Self::PressureCritical,
        Self::Fragmentation,
        Self::Swap,
        Self::CgroupLimit,
    ];
}

/// An alert in force.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Alert {
    /// What it is about.
    pub kind: AlertKind,
    /// The value at the latest sample.
    pub value: f64,
    /// The threshold that raised it.
    pub threshold: f64,
    /// When it was raised.
    pub since_unix_ms: u64,
}

/// A change in the alerts at one sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// A new alert.
    Raised(Alert),
    /// An alert ended: its value fell below the clear point.
    Cleared {
        /// Which.
        kind: AlertKind,
        /// The value that cleared it.
        value: f64,
        /// When.
        at_unix_ms: u64,
    },
}

/// One entry of the history: the numbers a sparkline or the health score needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HistoryPoint {
    /// When.
    pub unix_ms: u64,
    /// Pressure value.
    pub pressure: f64,
    /// Pressure level.
    pub level: PressureLevel,
    /// Available memory.
    pub mem_available_bytes: u64,
    /// Swap in use.
    pub swap_used_bytes: u64,
    /// This process's footprint.
    pub footprint_bytes: u64,
    /// Untracked bytes, with a ledger.
    pub untracked_bytes: Option<i64>,
}

/// How quickly pressure episodes ended, over the history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReclaimStats {
    /// Episodes: runs of samples from pressure reaching the warning threshold to its
    /// falling below the warning's clear point.
    pub episodes: u32,
    /// Mean duration of the episodes, the one still going counted up to the latest sample.
    pub mean_relief_ms: Option<u64>,
    /// How long the current episode has lasted, if one is going on.
    pub ongoing_ms: Option<u64>,
}

/// Samples a [`MemoryProbe`], keeps the latest [`Sample`] and a bounded history, and
/// raises and clears alerts with hysteresis.
///
/// # Invariants
/// - `history.len() <= config.history_len`; the oldest point goes first.
/// - History timestamps never decrease (an earlier time passed in is raised to the last).
/// - At most one active alert per [`AlertKind`], sorted by kind.
#[derive(Debug)]
pub struct Monitor<P> {
    probe: P,
    config: MonitorConfig,
    history: VecDeque<HistoryPoint>,
    latest: Option<Sample>,
    alerts: Vec<Alert>,
    previous_events: Option<CgroupEvents>,
}

impl<P: MemoryProbe> Monitor<P> {
    /// A monitor with the seed's defaults.
    pub fn new(probe: P) -> Self {
        Self {
            probe,
            config: MonitorConfig::default(),
            history: VecDeque::with_capacity(MonitorConfig::default().history_len),
            latest: None,
            alerts: Vec::new(),
            previous_events: None,
        }
    }

    /// A monitor with the given config.
    ///
    /// # Errors
    /// As [`MonitorConfig::validate`].
    pub fn with_config(probe: P, config: MonitorConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut monitor = Self::new(probe);
        monitor.history = VecDeque::with_capacity(config.history_len.min(1 << 16));
        monitor.config = config;
        Ok(monitor)
    }

    /// The probe, for callers (and tests) that drive it.
    pub fn probe(&self) -> &P {
        &self.probe
    }

    /// The config.
    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// Samples now. See [`Monitor::sample_at`].
    ///
    /// # Errors
    /// A probe reading failed; the monitor's state is unchanged.
    pub fn sample(&mut self, ledger: Option<LedgerView>) -> Result<Vec<AlertEvent>, ProbeError> {
        self.sample_at(unix_ms_now(), ledger)
    }

    /// Samples the probe as of `unix_ms`, records it, and returns the alerts raised and
    /// cleared by it.
    ///
    /// # Errors
    /// A probe reading failed; the monitor's state is unchanged.
    pub fn sample_at(
        &mut self,
        unix_ms: u64,
        ledger: Option<LedgerView>,
    ) -> Result<Vec<AlertEvent>, ProbeError> {
        let unix_ms = unix_ms.max(self.history.back().map_or(0, |p| p.unix_ms));
        let sample = Sample::capture(&self.probe, ledger, unix_ms)?;
        let events = self.update_alerts(&sample);
        if self.history.len() == self.config.history_len {
            self.history.pop_front();
        }
        self.history.push_back(HistoryPoint {
            unix_ms,
            pressure: sample.pressure.value,
            level: sample.pressure.level,
            mem_available_bytes: sample.system.mem_available_bytes,
            swap_used_bytes: sample.system.swap_used_bytes,
            footprint_bytes: sample.process.footprint_bytes(),
            untracked_bytes: sample.untracked_bytes,
        });
        self.latest = Some(sample);
        #[cfg(debug_assertions)]
        self.check_invariants();
        Ok(events)
    }

    fn update_alerts(&mut self, sample: &Sample) -> Vec<AlertEvent> {
        let t = self.config.thresholds;
        let events_now = sample.system.signals.cgroup.as_ref().and_then(|c| c.events);
        let cgroup_hits = match (self.previous_events, events_now) {
            (Some(before), Some(now)) => {
                let grew = |a: u64, b: u64| b.saturating_sub(a);
                Some(grew(before.max, now.max) + grew(before.oom_kill, now.oom_kill))
            }
            (None, Some(_)) => Some(0),
            (_, None) => None,
        };
        self.previous_events = events_now;
        let mut out = Vec::new();
        for kind in AlertKind::ALL {
            // Counters have no in-between: one event raises, a quiet sample clears.
            let (value, threshold, clear_below) = match kind {
                AlertKind::PressureWarning => {
                    (Some(sample.pressure.value), t.pressure_warning, None)
                }
                AlertKind::PressureCritical => {
                    (Some(sample.pressure.value), t.pressure_critical, None)
                }
                AlertKind::Fragmentation => (
                    sample.fragmentation().map(|f| f.0),
                    t.fragmentation_warning,
                    None,
                ),
                AlertKind::Swap => (Some(sample.system.swap_ratio()), t.swap_critical, None),
                AlertKind::CgroupLimit => (cgroup_hits.map(|n| n as f64), 1.0, Some(1.0)),
            };
            // An unknown value leaves the alert as it was.
            let Some(value) = value else { continue };
            let clear_below = clear_below.unwrap_or(threshold * (1.0 - t.clear_margin));
            let active = self.alerts.iter().position(|a| a.kind == kind);
            match active {
                None if value >= threshold => {
                    let alert = Alert {
                        kind,
                        value,
                        threshold,
                        since_unix_ms: sample.unix_ms,
                    };
                    self.alerts.push(alert);
                    out.push(AlertEvent::Raised(alert));
                }
                Some(i) if value < clear_below => {
                    self.alerts.remove(i);
                    out.push(AlertEvent::Cleared {
                        kind,
                        value,
                        at_unix_ms: sample.unix_ms,
                    });
                }
                Some(i) => self.alerts[i].value = value,
                None => {}
            }
        }
        self.alerts.sort_by_key(|a| a.kind);
        out
    }

    /// The latest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.latest.as_ref()
    }

    /// The history, oldest first.
    pub fn history(&self) -> impl ExactSizeIterator<Item = &HistoryPoint> + '_ {
        self.history.iter()
    }

    /// Alerts in force, by kind.
    pub fn alerts(&self) -> &[Alert] {
        &self.alerts
    }

    /// How quickly pressure episodes ended over the history.
    pub fn reclaim_stats(&self) -> ReclaimStats {
        let t = &self.config.thresholds;
        let clear = t.pressure_warning * (1.0 - t.clear_margin);
        let mut durations = Vec::new();
        let mut start: Option<u64> = None;
        for point in &self.history {
            match start {
                None if point.pressure >= t.pressure_warning => start = Some(point.unix_ms),
                Some(s) if point.pressure < clear => {
                    durations.push(point.unix_ms - s);
                    start = None;
                }
                _ => {}
            }
        }
        let last = self.history.back().map_or(0, |p| p.unix_ms);
        let ongoing_ms = start.map(|s| last - s);
        durations.extend(ongoing_ms);
        let episodes = u32::try_from(durations.len()).unwrap_or(u32::MAX);
        let mean_relief_ms =
            (!durations.is_empty()).then(|| durations.iter().sum::<u64>() / durations.len() as u64);
        ReclaimStats {
            episodes,
            mean_relief_ms,
            ongoing_ms,
        }
    }

    /// The health report of the latest sample; `None` before the first sample.
    ///
    /// Reclaim performance comes from the history once it spans at least
    /// [`RELIEF_BUDGET_MS`]: a relief time cannot be judged over a shorter window (one
    /// sample under pressure would read as instant relief). Until then PSI stands in.
    pub fn health(&self, context: &HealthContext) -> Option<HealthReport> {
        let span = match (self.history.front(), self.history.back()) {
            (Some(first), Some(last)) => last.unix_ms - first.unix_ms,
            _ => 0,
        };
        let reclaim = (span >= RELIEF_BUDGET_MS).then(|| self.reclaim_stats());
        self.latest
            .as_ref()
            .map(|sample| HealthReport::assess(sample, reclaim.as_ref(), context))
    }

    /// Checks the invariants in the type's docs.
    ///
    /// # Panics
    /// When one is broken: that is a bug in this module.
    pub fn check_invariants(&self) {
        assert!(
            self.history.len() <= self.config.history_len,
            "history over its bound"
        );
        assert!(
            self.history
                .iter()
                .zip(self.history.iter().skip(1))
                .all(|(a, b)| a.unix_ms <= b.unix_ms),
            "history timestamps decrease"
        );
        assert!(
            self.alerts.windows(2).all(|w| w[0].kind < w[1].kind),
            "alerts not unique and sorted by kind"
        );
    }
}
