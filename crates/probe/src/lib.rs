//! `probe` reports what the operating system and the GPUs say about memory, beside what
//! llmem's ledger accounts for, and turns it into pressure, alerts and a health score.
//!
//! # Main types
//! - [`MemoryProbe`]: platform facts ([`PlatformInfo`]), the machine ([`SystemSnapshot`]),
//!   this process ([`ProcessSnapshot`]), [`Pressure`] with its raw signals kept, GPUs
//!   ([`GpuSnapshot`]). Backends: [`LinuxProbe`] (`/proc`, PSI, cgroup v2, sysfs, and NVML
//!   behind the `nvml` feature, loaded at run time), `MacProbe` (sysctl,
//!   `host_statistics64`, `task_vm_info`, Metal), and [`FakeProbe`] for tests.
//!   [`NativeProbe`] names the one for this OS.
//! - [`parse`]: the pure functions that turn the kernel's text into numbers, tested on
//!   recorded fixtures; the backends only fetch their inputs.
//! - [`Monitor`]: samples a probe into a bounded history, raises and clears alerts with
//!   hysteresis, and sets llmem's [`LedgerView`] beside the OS view (untracked bytes).
//! - [`HealthReport`]: the seed's weighted score, a [`Rating`], and [`Recommendation`]s that
//!   each name one setting and its effect.
//! - [`render_prometheus`]: the same numbers as Prometheus text.
//!
//! The crate is a leaf: it does not know the budget crate. The binary copies the ledger's
//! numbers into a [`LedgerView`] each tick.
//!
//! # Example
//! ```
//! use probe::{FakeProbe, HealthContext, LedgerView, Monitor, PoolUsage, PressureLevel};
//!
//! let fake = FakeProbe::new(); // use `probe::NativeProbe::new()` for the real machine
//! fake.set_pressure(Some(0.9));
//! let mut monitor = Monitor::new(fake);
//! let ledger = LedgerView::from_pools(vec![PoolUsage::new("kv", 4 << 30, 1 << 30)]);
//! let events = monitor.sample_at(1_000, Some(ledger)).unwrap();
//! assert_eq!(events.len(), 1); // pressure warning raised
//! let sample = monitor.latest().unwrap();
//! assert_eq!(sample.pressure.level, PressureLevel::Warning);
//! assert_eq!(sample.untracked_bytes, Some(0)); // 1 GiB resident, 1 GiB in the ledger
//!
//! let report = monitor.health(&HealthContext::new().with_kv_f16(4 << 30)).unwrap();
//! assert!(report.recommendations.iter().any(|r| r.message == "int8 KV: +1.9 GiB headroom"));
//! let text = probe::render_prometheus(sample, Some(&report), Some(monitor.alerts()));
//! assert!(text.contains("llmem_pool_used_bytes{pool=\"kv\"} 1073741824"));
//! ```

mod error;
mod fake;
mod health;
mod ledger;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "macos")]
mod macos;
mod memory_probe;
mod monitor;
#[cfg(all(feature = "nvml", target_os = "linux"))]
mod nvml;
pub mod parse;
mod pressure;
mod prometheus;
mod recommend;
mod snapshot;

pub use error::{ParseError, ProbeError};
pub use fake::{FakeFault, FakeProbe, FakeReading};
pub use health::{
    Component, ComponentScore, DRIFT_ALLOWANCE_BYTES, HEALTH_SCHEMA_VERSION, HealthContext,
    HealthReport, PressureSummary, RELIEF_BUDGET_MS, Rating, allocation_efficiency_score,
    fragmentation_score, reclaim_score, reclaim_score_from_psi, swap_score, utilization_score,
};
pub use ledger::{LedgerView, PoolUsage};
#[cfg(target_os = "linux")]
pub use linux::LinuxProbe;
#[cfg(target_os = "macos")]
pub use macos::MacProbe;
pub use memory_probe::MemoryProbe;
pub use monitor::{
    Alert, AlertEvent, AlertKind, AlertSeverity, ConfigError, FragmentationSource, HistoryPoint,
    Monitor, MonitorConfig, ReclaimStats, Sample, Thresholds, unix_ms_now,
};
pub use pressure::{
    PRESSURE_CRITICAL, PRESSURE_WARNING, Pressure, PressureLevel, PressureSource, psi_full_value,
    psi_some_value,
};
pub use prometheus::{PROMETHEUS_CONTENT_TYPE, render_prometheus};
pub use recommend::{Recommendation, RecommendationKind, format_bytes, recommend};
pub use snapshot::{
    CacheKind, CacheLevel, CoreKind, GpuMemorySource, GpuSnapshot, MacPressureLevel,
    MemoryCategory, PlatformInfo, PressureSignals, ProcessSnapshot, SystemSnapshot, WiredLimit,
};

/// The backend for the OS this was built for.
#[cfg(target_os = "linux")]
pub type NativeProbe = LinuxProbe;
/// The backend for the OS this was built for.
#[cfg(target_os = "macos")]
pub type NativeProbe = MacProbe;
