//! Health score, rating, every recommendation, and the report's JSON.

use std::path::PathBuf;

use probe::{
    Component, FakeProbe, GpuSnapshot, HealthContext, HealthReport, LedgerView, Monitor, PoolUsage,
    ProcessSnapshot, Rating, RecommendationKind, Sample, SystemSnapshot,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn fixture_sample(set: &str, ledger: Option<LedgerView>) -> Sample {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(set);
    #[cfg(target_os = "linux")]
    let probe = probe::LinuxProbe::with_root(root);
    #[cfg(not(target_os = "linux"))]
    let probe = {
        let _ = root;
        FakeProbe::new()
    };
    Sample::capture(&probe, ledger, 1_700_000_000_000).unwrap()
}

/// A sample of a fake with the given system and process views.
fn fake_sample(system: SystemSnapshot, process: ProcessSnapshot, gpus: Vec<GpuSnapshot>) -> Sample {
    let fake = FakeProbe::new();
    fake.set_system(system);
    fake.set_process(process);
    fake.set_gpus(gpus);
    Sample::capture(&fake, None, 0).unwrap()
}

fn kinds(report: &HealthReport) -> Vec<RecommendationKind> {
    report.recommendations.iter().map(|r| r.kind).collect()
}

#[test]
fn a_calm_machine_is_excellent_and_needs_nothing() {
    let mut system = SystemSnapshot::new(64 * GIB, 16 * GIB); // 75 % used: the optimum
    system.fragmentation = Some(0.05);
    let sample = fake_sample(system, ProcessSnapshot::new(30 * GIB), vec![]);
    let context = HealthContext::new()
        .with_model_weights(20 * GIB)
        .with_kv_f16(8 * GIB);
    let report = HealthReport::assess(&sample, None, &context);
    assert_eq!(report.rating, Rating::Excellent, "{report:#?}");
    assert!(report.health_score > 0.95);
    assert!(
        report.recommendations.is_empty(),
        "{:?}",
        report.recommendations
    );
    // No ledger and no history or PSI: those two components are left out.
    assert_eq!(report.component(Component::AllocationEfficiency), None);
    assert_eq!(report.component(Component::ReclaimPerformance), None);
}

#[cfg(target_os = "linux")]
#[test]
fn the_pressured_fixture_is_critical_and_says_what_to_change() {
    let sample = fixture_sample("ubuntu-6.8-v2-pressure", None);
    let context = HealthContext::new()
        .with_kv_f16(4 * GIB)
        .with_ctx(32_768, 128 * 1024); // 128 KiB of KV per position
    let report = HealthReport::assess(&sample, None, &context);
    assert_eq!(report.rating, Rating::Critical);
    assert!(report.health_score < 0.5, "{}", report.health_score);
    assert_eq!(
        kinds(&report),
        [
            RecommendationKind::LowerCtx,
            RecommendationKind::CgroupLimit,
            RecommendationKind::KvInt8,
            RecommendationKind::CompactMemory,
        ]
    );
    let ctx = &report.recommendations[0];
    // 1,258,292 KiB in swap / 128 KiB per position = 9,831 positions; 32,768 − 9,831
    // rounded down to a multiple of 256.
    assert_eq!(ctx.setting, "--ctx 22784");
    assert_eq!(ctx.message, "swap in use: lower --ctx to 22784");
    let cgroup = &report.recommendations[1];
    assert_eq!(cgroup.setting, "memory.max=16G (systemd: MemoryMax=16G)");
    let int8 = &report.recommendations[2];
    assert_eq!(int8.message, "int8 KV: +1.9 GiB headroom");
    assert_eq!(int8.bytes, Some(4 * GIB / 32 * 15));
    assert_eq!(
        report.recommendations[3].setting,
        "sudo sysctl vm.compact_memory=1"
    );
    // PSI stands in for the history: full avg60 9.31 % of the cgroup.
    let reclaim = report.component(Component::ReclaimPerformance).unwrap();
    assert!((reclaim - (1.0 - 9.31 / 10.0)).abs() < 1e-9);
    assert_eq!(report.component(Component::SwapAvoidance), Some(0.0));
}

#[cfg(target_os = "linux")]
#[test]
fn this_machines_fixture_scores_by_the_documented_formula() {
    let sample = fixture_sample("host-6.18-hybrid", None);
    let report = HealthReport::assess(&sample, None, &HealthContext::new());
    assert!(
        report.recommendations.is_empty(),
        "{:?}",
        report.recommendations
    );
    // Nearly idle (1.5 % used): utilization scores low by design; PSI shows no stall and
    // there is no swap; no ledger, so allocation efficiency is left out.
    let u = 1.0 - 24_322_336.0 / 24_683_656.0;
    let f = sample.system.fragmentation.unwrap();
    let expected = (0.3 * probe::utilization_score(u)
        + 0.2 * probe::fragmentation_score(f)
        + 0.15 * 1.0
        + 0.15 * 1.0)
        / 0.8;
    assert!(
        (report.health_score - expected).abs() < 1e-12,
        "{report:#?}"
    );
    assert_eq!(
        report.rating,
        Rating::of(expected, probe::PressureLevel::Normal)
    );
    assert_eq!(report.component(Component::AllocationEfficiency), None);
}

#[test]
fn wired_limit_when_the_model_exceeds_the_gpu_working_set() {
    // A 128 GiB Mac: Metal recommends 96 GiB; a 100 GiB model with 4 GiB of KV.
    let system = SystemSnapshot::new(128 * GIB, 110 * GIB);
    let mut gpu = GpuSnapshot::new(0, "Apple M3 Max", 96 * GIB, 2 * GIB);
    gpu.working_set_bytes = Some(96 * GIB);
    gpu.unified_memory = Some(true);
    let sample = fake_sample(system, ProcessSnapshot::new(GIB), vec![gpu]);
    let context = HealthContext::new()
        .with_model_weights(100 * GIB)
        .with_kv_f16(4 * GIB);
    let report = HealthReport::assess(&sample, None, &context);
    assert_eq!(kinds(&report), [RecommendationKind::WiredLimit]);
    let rec = &report.recommendations[0];
    assert_eq!(rec.setting, "sudo sysctl iogpu.wired_limit_mb=107520");
    assert_eq!(
        rec.message,
        "model larger than the GPU working set: `sudo sysctl iogpu.wired_limit_mb=107520`"
    );
    assert_eq!(rec.bytes, Some(9 * GIB));

    // Without a model larger than the working set, or with one too big to leave the OS
    // its share, no wired-limit advice.
    let fits = HealthContext::new()
        .with_model_weights(60 * GIB)
        .with_gpu_working_set(96 * GIB);
    assert!(
        HealthReport::assess(&sample, None, &fits)
            .recommendations
            .is_empty()
    );
    let huge = HealthContext::new().with_model_weights(116 * GIB);
    assert_eq!(
        kinds(&HealthReport::assess(&sample, None, &huge)),
        [RecommendationKind::FitMemory]
    );
}

#[test]
fn finding9_fit_memory_names_real_flags_and_blames_what_is_large() {
    // The weights alone nearly fill memory: a smaller file, not a flag that does not exist.
    let system = SystemSnapshot::new(32 * GIB, 20 * GIB);
    let sample = fake_sample(system.clone(), ProcessSnapshot::new(GIB), vec![]);
    let context = HealthContext::new()
        .with_model_weights(30 * GIB)
        .with_kv_f16(MIB)
        .with_ctx(4096, 256);
    let report = HealthReport::assess(&sample, None, &context);
    assert_eq!(kinds(&report), [RecommendationKind::FitMemory]);
    let rec = &report.recommendations[0];
    assert_eq!(rec.setting, "--model SMALLER.gguf");
    assert!(
        rec.message.contains("weights (30.0 GiB)"),
        "{}",
        rec.message
    );

    // Small weights, KV at full context filling memory: the context is what to change, and
    // the message says the KV is what is large.
    let per_token = 30 * GIB / 32_768;
    let context = HealthContext::new()
        .with_model_weights(2 * GIB)
        .with_kv_f16(30 * GIB)
        .with_ctx(32_768, per_token);
    let report = HealthReport::assess(&sample, None, &context);
    let rec = report
        .recommendations
        .iter()
        .find(|r| r.kind == RecommendationKind::FitMemory)
        .expect("fit_memory");
    // (24 GiB − 2 GiB) / 983,040 B = 24,029 positions, down to a multiple of 256.
    assert_eq!(rec.setting, "--ctx 23808");
    assert!(
        rec.message.starts_with("KV at --ctx 32768 (30.0 GiB)"),
        "{}",
        rec.message
    );
    assert_eq!(rec.bytes, Some(30 * GIB - 23_808 * per_token));

    // A cgroup limit below physical memory is the memory that counts.
    let mut limited = SystemSnapshot::new(64 * GIB, 60 * GIB);
    let mut cgroup = probe::parse::CgroupMemory::default();
    cgroup.max_bytes = Some(8 * GIB);
    limited.signals.cgroup = Some(cgroup);
    let sample = fake_sample(limited, ProcessSnapshot::new(GIB), vec![]);
    let context = HealthContext::new()
        .with_model_weights(15 * GIB / 2)
        .with_kv_f16(MIB);
    assert_eq!(
        kinds(&HealthReport::assess(&sample, None, &context)),
        [RecommendationKind::FitMemory]
    );
}

#[test]
fn untracked_drift_with_a_ledger() {
    let fake = FakeProbe::new();
    fake.set_process(ProcessSnapshot::new(10 * GIB));
    let mut monitor = Monitor::new(fake);
    let ledger = LedgerView::from_pools(vec![PoolUsage::new("kv", 12 * GIB, 8 * GIB)]);
    monitor.sample_at(0, Some(ledger)).unwrap();
    let report = monitor.health(&HealthContext::new()).unwrap();
    assert_eq!(kinds(&report), [RecommendationKind::UntrackedDrift]);
    let rec = &report.recommendations[0];
    assert_eq!(rec.message, "untracked memory drift 2048 MiB");
    assert_eq!(rec.setting, "pools.reserve += 2048MiB (profile)");
    assert_eq!(report.untracked_bytes, Some(2 << 30));
    // (2 GiB − 64 MiB allowance) / 10 GiB off a perfect score.
    let efficiency = report.component(Component::AllocationEfficiency).unwrap();
    assert!((efficiency - (1.0 - (2048.0 - 64.0) / 10240.0)).abs() < 1e-12);

    // A small drift is the allowance at work: no advice, full marks.
    let mut monitor = Monitor::new(FakeProbe::new()); // 1 GiB resident
    let ledger = LedgerView::from_pools(vec![PoolUsage::new("kv", GIB, GIB - 50 * MIB)]);
    monitor.sample_at(0, Some(ledger)).unwrap();
    let report = monitor.health(&HealthContext::new()).unwrap();
    assert!(report.recommendations.is_empty());
    assert_eq!(report.component(Component::AllocationEfficiency), Some(1.0));
}

#[test]
fn kv_int8_and_lower_ctx_need_pressure_and_context() {
    // 94 % used, no swap: int8 KV, but no --ctx advice.
    let system = SystemSnapshot::new(16 * GIB, GIB);
    let sample = fake_sample(system.clone(), ProcessSnapshot::new(12 * GIB), vec![]);
    let context = HealthContext::new()
        .with_kv_f16(6 * GIB)
        .with_ctx(8192, 512 * 1024);
    assert_eq!(
        kinds(&HealthReport::assess(&sample, None, &context)),
        [RecommendationKind::KvInt8]
    );
    // The process has 1 GiB in swap: shorten the context by 2048 positions.
    let mut process = ProcessSnapshot::new(12 * GIB);
    process.swap_bytes = Some(GIB);
    let sample = fake_sample(system, process, vec![]);
    let report = HealthReport::assess(&sample, None, &context);
    assert_eq!(
        kinds(&report),
        [RecommendationKind::LowerCtx, RecommendationKind::KvInt8]
    );
    assert_eq!(report.recommendations[0].setting, "--ctx 6144");
    // Without the context's numbers neither is made.
    let bare = HealthReport::assess(&sample, None, &HealthContext::new());
    assert!(bare.recommendations.is_empty());
}

#[test]
fn history_feeds_reclaim_performance() {
    let mut monitor = Monitor::new(FakeProbe::new());
    let feed = |monitor: &mut Monitor<FakeProbe>, at_ms: u64, value: f64| {
        monitor.probe().set_pressure(Some(value));
        monitor.sample_at(at_ms, None).unwrap();
    };
    feed(&mut monitor, 0, 0.9);
    feed(&mut monitor, 10_000, 0.9);
    feed(&mut monitor, 20_000, 0.9);
    feed(&mut monitor, 30_000, 0.7);
    // 30 s of history is shorter than the 60 s budget: no verdict yet (and no PSI here).
    let report = monitor.health(&HealthContext::new()).unwrap();
    assert_eq!(report.component(Component::ReclaimPerformance), None);
    feed(&mut monitor, 60_000, 0.5);
    let report = monitor.health(&HealthContext::new()).unwrap();
    // One episode of 30 s against the 60 s budget.
    assert_eq!(report.component(Component::ReclaimPerformance), Some(0.5));
}

#[test]
fn health_json_round_trips_with_the_documented_keys() {
    let mut monitor = Monitor::new(FakeProbe::new());
    monitor.probe().set_pressure(Some(0.9));
    let ledger = LedgerView::from_pools(vec![PoolUsage::new("kv", 4 * GIB, GIB)]);
    monitor.sample_at(1_700_000_000_000, Some(ledger)).unwrap();
    let report = monitor
        .health(&HealthContext::new().with_kv_f16(2 * GIB))
        .unwrap();
    assert!(!report.recommendations.is_empty());

    let json = serde_json::to_string_pretty(&report).unwrap();
    let back: HealthReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);

    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let object = value.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "components",
            "health_score",
            "mem_available_bytes",
            "mem_total_bytes",
            "pressure",
            "process_footprint_bytes",
            "rating",
            "recommendations",
            "schema_version",
            "swap_used_bytes",
            "unix_ms",
            "untracked_bytes",
        ]
    );
    assert_eq!(value["schema_version"], 1);
    assert_eq!(value["mem_total_bytes"], 16 * GIB);
    assert_eq!(value["pressure"]["level"], "warning");
    assert_eq!(value["pressure"]["source"], "scripted");
    assert_eq!(value["rating"], "fair");
    assert_eq!(value["components"][0]["component"], "utilization");
    assert_eq!(value["components"].as_array().unwrap().len(), 5);
    let rec = &value["recommendations"][0];
    assert_eq!(rec["kind"], "kv_int8");
    for key in ["setting", "effect", "message", "bytes"] {
        assert!(rec.get(key).is_some(), "recommendation lacks {key}");
    }
    let score = value["health_score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score));
}
