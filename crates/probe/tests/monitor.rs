//! The monitor driven by a fake probe: history, alerts with hysteresis, the ledger beside
//! the OS view.

use probe::parse::{CgroupEvents, CgroupMemory};
use probe::{
    AlertEvent, AlertKind, ConfigError, FakeFault, FakeProbe, LedgerView, Monitor, MonitorConfig,
    PoolUsage, ProcessSnapshot, SystemSnapshot, Thresholds,
};

const GIB: u64 = 1 << 30;

/// Feeds pressure values one second apart and returns, for each, the events it caused.
fn feed_pressure(
    monitor: &mut Monitor<FakeProbe>,
    start_ms: u64,
    values: &[f64],
) -> Vec<Vec<AlertEvent>> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            monitor.probe().set_pressure(Some(v));
            monitor.sample_at(start_ms + 1000 * i as u64, None).unwrap()
        })
        .collect()
}

fn kinds(events: &[AlertEvent]) -> Vec<(bool, AlertKind)> {
    events
        .iter()
        .map(|e| match e {
            AlertEvent::Raised(a) => (true, a.kind),
            AlertEvent::Cleared { kind, .. } => (false, *kind),
        })
        .collect()
}

fn active(monitor: &Monitor<FakeProbe>) -> Vec<AlertKind> {
    monitor.alerts().iter().map(|a| a.kind).collect()
}

#[test]
fn pressure_alerts_fire_and_clear_with_hysteresis() {
    use AlertKind::{PressureCritical as Crit, PressureWarning as Warn};
    let mut monitor = Monitor::new(FakeProbe::new());
    // Warning clears below 0.85 × 0.95 = 0.8075, critical below 0.95 × 0.95 = 0.9025.
    let values = [
        0.50, 0.86, 0.84, 0.81, 0.80, 0.86, 0.96, 0.93, 0.91, 0.90, 0.50,
    ];
    let events = feed_pressure(&mut monitor, 0, &values);
    let expected: [&[(bool, AlertKind)]; 11] = [
        &[],
        &[(true, Warn)],
        &[], // 0.84: below the threshold, above the clear point
        &[],
        &[(false, Warn)],
        &[(true, Warn)],
        &[(true, Crit)],
        &[],
        &[],
        &[(false, Crit)],
        &[(false, Warn)],
    ];
    for (i, (got, want)) in events.iter().zip(expected).enumerate() {
        assert_eq!(kinds(got), want, "sample {i} (pressure {})", values[i]);
    }
    assert!(monitor.alerts().is_empty());
}

#[test]
fn an_alert_remembers_when_it_started_and_tracks_its_value() {
    let mut monitor = Monitor::new(FakeProbe::new());
    feed_pressure(&mut monitor, 5_000, &[0.9, 0.88, 0.83]);
    let alert = monitor.alerts()[0];
    assert_eq!(alert.kind, AlertKind::PressureWarning);
    assert_eq!(alert.since_unix_ms, 5_000);
    assert_eq!(alert.value, 0.83);
    assert_eq!(alert.threshold, 0.85);
}

#[test]
fn swap_alert_uses_swap_over_memory() {
    let fake = FakeProbe::new();
    let mut monitor = Monitor::new(fake);
    let mut at = 0;
    let mut swap = |monitor: &mut Monitor<FakeProbe>, used: u64| {
        let mut system = SystemSnapshot::new(100 * GIB, 50 * GIB);
        system.swap_total_bytes = 64 * GIB;
        system.swap_used_bytes = used;
        monitor.probe().set_system(system);
        at += 1000;
        kinds(&monitor.sample_at(at, None).unwrap())
    };
    assert_eq!(swap(&mut monitor, 12 * GIB), [(true, AlertKind::Swap)]);
    // 9.7 GiB of 100: under 0.1, above the clear point 0.095.
    assert_eq!(swap(&mut monitor, 9_700 * (GIB / 1000)), []);
    assert_eq!(swap(&mut monitor, 9 * GIB), [(false, AlertKind::Swap)]);
}

#[test]
fn fragmentation_prefers_the_ledger_and_unknown_keeps_state() {
    let fake = FakeProbe::new();
    let mut system = SystemSnapshot::new(16 * GIB, 12 * GIB);
    system.fragmentation = Some(0.1);
    fake.set_system(system.clone());
    let mut monitor = Monitor::new(fake);
    let ledger = |f: f64| Some(LedgerView::from_pools(vec![]).with_fragmentation(f));

    assert_eq!(
        kinds(&monitor.sample_at(0, ledger(0.35)).unwrap()),
        [(true, AlertKind::Fragmentation)]
    );
    // Without the ledger the OS's 0.1 counts: below the clear point 0.285.
    assert_eq!(
        kinds(&monitor.sample_at(1, None).unwrap()),
        [(false, AlertKind::Fragmentation)]
    );
    assert_eq!(
        kinds(&monitor.sample_at(2, ledger(0.31)).unwrap()),
        [(true, AlertKind::Fragmentation)]
    );
    // Neither knows: the alert stays as it was.
    system.fragmentation = None;
    monitor.probe().set_system(system);
    assert_eq!(kinds(&monitor.sample_at(3, None).unwrap()), []);
    assert_eq!(active(&monitor), [AlertKind::Fragmentation]);
}

#[test]
fn cgroup_limit_alert_follows_new_events() {
    let fake = FakeProbe::new();
    let mut monitor = Monitor::new(fake);
    let mut at = 0;
    let mut with_events = |monitor: &mut Monitor<FakeProbe>, max: u64, oom_kill: u64| {
        let mut system = SystemSnapshot::new(16 * GIB, 12 * GIB);
        let mut cgroup = CgroupMemory::default();
        let mut events = CgroupEvents::default();
        events.max = max;
        events.oom_kill = oom_kill;
        cgroup.events = Some(events);
        system.signals.cgroup = Some(cgroup);
        monitor.probe().set_system(system);
        at += 1000;
        kinds(&monitor.sample_at(at, None).unwrap())
    };
    // Events from before llmem started do not alert.
    assert_eq!(with_events(&mut monitor, 1843, 2), []);
    assert_eq!(
        with_events(&mut monitor, 1846, 2),
        [(true, AlertKind::CgroupLimit)]
    );
    assert_eq!(with_events(&mut monitor, 1846, 3), []);
    assert_eq!(
        with_events(&mut monitor, 1846, 3),
        [(false, AlertKind::CgroupLimit)]
    );
}

#[test]
fn history_is_bounded_to_the_seeds_thousand() {
    let mut monitor = Monitor::new(FakeProbe::new());
    assert_eq!(monitor.config().history_len, 1000);
    for i in 0..1005 {
        monitor.sample_at(i * 1000, None).unwrap();
    }
    assert_eq!(monitor.history().len(), 1000);
    assert_eq!(monitor.history().next().unwrap().unix_ms, 5_000);
    assert_eq!(monitor.history().last().unwrap().unix_ms, 1_004_000);
    monitor.check_invariants();
}

#[test]
fn time_going_backwards_is_clamped() {
    let mut monitor = Monitor::new(FakeProbe::new());
    monitor.sample_at(10_000, None).unwrap();
    monitor.sample_at(9_000, None).unwrap();
    let times: Vec<u64> = monitor.history().map(|p| p.unix_ms).collect();
    assert_eq!(times, [10_000, 10_000]);
}

#[test]
fn ledger_sits_beside_the_os_view() {
    let fake = FakeProbe::new();
    let mut process = ProcessSnapshot::new(6 * GIB);
    process.phys_footprint_bytes = Some(7 * GIB); // macOS: the footprint is reconciled
    fake.set_process(process);
    let mut monitor = Monitor::new(fake);
    monitor.sample_at(0, None).unwrap();
    assert_eq!(monitor.latest().unwrap().untracked_bytes, None);

    let ledger = LedgerView::from_pools(vec![
        PoolUsage::new("weights", 8 * GIB, 4 * GIB),
        PoolUsage::new("kv", 4 * GIB, 2 * GIB),
    ]);
    assert_eq!(ledger.total_tracked_bytes, 6 * GIB);
    assert_eq!(ledger.limit_bytes(), 12 * GIB);
    monitor.sample_at(1000, Some(ledger)).unwrap();
    let sample = monitor.latest().unwrap();
    assert_eq!(sample.untracked_bytes, Some(i64::try_from(GIB).unwrap()));
    assert_eq!(
        monitor.history().last().unwrap().untracked_bytes,
        sample.untracked_bytes
    );
}

#[test]
fn a_failed_reading_changes_nothing() {
    let mut monitor = Monitor::new(FakeProbe::new());
    monitor.probe().set_pressure(Some(0.9));
    monitor.sample_at(0, None).unwrap();
    monitor.probe().set_fault(Some(FakeFault::Process));
    monitor.probe().set_pressure(Some(0.1));
    assert!(monitor.sample_at(1000, None).is_err());
    assert_eq!(monitor.history().len(), 1);
    assert_eq!(active(&monitor), [AlertKind::PressureWarning]);
    assert_eq!(monitor.latest().unwrap().unix_ms, 0);
}

#[test]
fn reclaim_stats_measure_how_long_pressure_lasted() {
    let mut monitor = Monitor::new(FakeProbe::new());
    assert_eq!(monitor.reclaim_stats().episodes, 0);
    // Episode 1: 0.9 at t=1 s, relieved (below 0.8075) at t=4 s → 3 s.
    // Episode 2: from t=6 s, still going at t=8 s → 2 s so far.
    feed_pressure(
        &mut monitor,
        0,
        &[0.5, 0.9, 0.9, 0.82, 0.7, 0.6, 0.97, 0.9, 0.88],
    );
    let stats = monitor.reclaim_stats();
    assert_eq!(stats.episodes, 2);
    assert_eq!(stats.ongoing_ms, Some(2_000));
    assert_eq!(stats.mean_relief_ms, Some(2_500));
}

#[test]
fn configs_are_validated() {
    let bad = |edit: fn(&mut MonitorConfig)| {
        let mut config = MonitorConfig::default();
        edit(&mut config);
        Monitor::with_config(FakeProbe::new(), config).unwrap_err()
    };
    assert_eq!(
        bad(|c| c.history_len = 0),
        ConfigError::HistoryLen { len: 0 }
    );
    assert!(matches!(
        bad(|c| c.thresholds.swap_critical = 0.0),
        ConfigError::Threshold { .. }
    ));
    assert!(matches!(
        bad(|c| c.thresholds.pressure_warning = 0.99),
        ConfigError::Order { .. }
    ));
    assert!(matches!(
        bad(|c| c.thresholds.clear_margin = 1.0),
        ConfigError::Margin { .. }
    ));

    let mut small = MonitorConfig::default();
    small.history_len = 3;
    small.thresholds = Thresholds::default();
    let mut monitor = Monitor::with_config(FakeProbe::new(), small).unwrap();
    for i in 0..10 {
        monitor.sample_at(i, None).unwrap();
    }
    assert_eq!(monitor.history().len(), 3);
}
