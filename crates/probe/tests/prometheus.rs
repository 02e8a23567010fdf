//! The Prometheus exposition follows text format 0.0.4.

use std::collections::{HashMap, HashSet};

use probe::{
    AlertKind, FakeProbe, GpuSnapshot, HealthContext, LedgerView, Monitor, PoolUsage,
    ProcessSnapshot, SystemSnapshot, render_prometheus,
};

const GIB: u64 = 1 << 30;

fn is_name(s: &str, colons: bool) -> bool {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'));
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

/// Splits `name{a="x",b="y"} value` into its parts, checking the label syntax.
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let (series, value) = line.rsplit_once(' ').expect("sample line without a value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    let Some((name, rest)) = series.split_once('{') else {
        return (series.to_owned(), Vec::new(), value);
    };
    let body = rest.strip_suffix('}').expect("unclosed label set");
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert!(is_name(&key, false), "bad label name {key:?} in {line:?}");
        assert_eq!(
            chars.next(),
            Some('"'),
            "label value must be quoted in {line:?}"
        );
        let mut val = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '\\' => val.push(chars.next().expect("dangling escape")),
                '"' => break,
                c => val.push(c),
            }
        }
        labels.push((key, val));
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(c) => panic!("unexpected {c:?} after a label in {line:?}"),
        }
    }
    (name.to_owned(), labels, value)
}

/// Checks the exposition and returns each series (`name{labels}`) with its value.
fn validate(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with('\n'));
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped = HashSet::new();
    let mut finished = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(helped.insert(name.to_owned()), "second HELP for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["gauge", "counter"].contains(&kind), "type {kind}");
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "second TYPE {name}"
            );
            if let Some(previous) = current.replace(name.to_owned()) {
                finished.insert(previous);
            }
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (name, labels, value) = parse_sample(line);
        assert!(is_name(&name, true), "bad metric name {name}");
        assert!(name.starts_with("llmem_"), "{name} lacks the prefix");
        assert_eq!(
            current.as_deref(),
            Some(name.as_str()),
            "{name} outside its family"
        );
        assert!(!finished.contains(&name), "{name} split across the text");
        assert!(helped.contains(&name), "{name} has no HELP");
        if typed[&name] == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            );
            assert!(value >= 0.0);
        }
        let key = if labels.is_empty() {
            name
        } else {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{name}{{{}}}", inner.join(","))
        };
        assert!(
            series.insert(key.clone(), value).is_none(),
            "duplicate series {key}"
        );
    }
    series
}

#[test]
fn a_monitor_sample_renders_valid_text() {
    let fake = FakeProbe::new();
    let mut system = SystemSnapshot::new(64 * GIB, 9 * GIB); // 86 % used: warning
    system.swap_used_bytes = GIB;
    system.fragmentation = Some(0.25);
    fake.set_system(system);
    let mut process = ProcessSnapshot::new(40 * GIB);
    process.rss_anon_bytes = Some(30 * GIB);
    process.rss_file_bytes = Some(10 * GIB);
    fake.set_process(process);
    let mut gpu = GpuSnapshot::new(0, "NVIDIA \"H100\" 80GB\\HBM3", 80 * GIB, 20 * GIB);
    gpu.utilization = Some(0.42);
    fake.set_gpus(vec![gpu]);
    let mut monitor = Monitor::new(fake);
    let ledger = LedgerView::from_pools(vec![
        PoolUsage::new("weights", 40 * GIB, 30 * GIB),
        PoolUsage::new("kv", 16 * GIB, 8 * GIB),
    ]);
    monitor.sample_at(0, Some(ledger)).unwrap();
    let sample = monitor.latest().unwrap();
    let health = monitor.health(&HealthContext::new()).unwrap();
    let text = render_prometheus(sample, Some(&health), Some(monitor.alerts()));
    let series = validate(&text);

    assert_eq!(series["llmem_mem_total_bytes"], (64 * GIB) as f64);
    assert_eq!(series["llmem_mem_available_bytes"], (9 * GIB) as f64);
    assert_eq!(series["llmem_pool_used_bytes{pool=kv}"], (8 * GIB) as f64);
    assert_eq!(
        series["llmem_pool_limit_bytes{pool=weights}"],
        (40 * GIB) as f64
    );
    assert_eq!(series["llmem_untracked_bytes"], (2 * GIB) as f64);
    assert_eq!(
        series["llmem_process_rss_kind_bytes{kind=anon}"],
        (30 * GIB) as f64
    );
    assert_eq!(series["llmem_pressure_level"], 1.0);
    assert_eq!(
        series["llmem_gpu_utilization_ratio{gpu=0,name=NVIDIA \"H100\" 80GB\\HBM3}"],
        0.42
    );
    assert_eq!(series["llmem_alert_active{alert=pressure_warning}"], 1.0);
    assert_eq!(series["llmem_alert_active{alert=swap}"], 0.0);
    assert_eq!(AlertKind::ALL.len(), 5);
    assert!(series.contains_key("llmem_health_score_ratio"));
    assert!(series.contains_key("llmem_health_component_ratio{component=utilization}"));
    // Unknown signals are absent, not zero.
    assert!(!text.contains("llmem_psi_"));
    assert!(!text.contains("llmem_cgroup_"));
    assert!(!text.contains("llmem_process_phys_footprint_bytes"));
}

#[cfg(target_os = "linux")]
#[test]
fn the_pressured_fixture_renders_psi_and_cgroup_families() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ubuntu-6.8-v2-pressure");
    let probe = probe::LinuxProbe::with_root(root);
    let sample = probe::Sample::capture(&probe, None, 0).unwrap();
    let text = render_prometheus(&sample, None, None);
    let series = validate(&text);
    let near = |key: &str, want: f64| (series[key] - want).abs() < 1e-9;
    assert!(near(
        "llmem_psi_memory_stall_ratio{kind=some,window_seconds=10}",
        0.2351
    ));
    assert!(near(
        "llmem_psi_memory_stall_seconds_total{kind=full}",
        19.927_731
    ));
    assert_eq!(
        series["llmem_cgroup_memory_events_total{event=oom_kill}"],
        2.0
    );
    assert_eq!(series["llmem_cgroup_memory_max_bytes"], (12 * GIB) as f64);
    assert_eq!(series["llmem_pressure_level"], 2.0);
    assert!(
        !text.contains("llmem_alert_active"),
        "no monitor, no alert series"
    );
    assert!(!text.contains("llmem_pool_"), "no ledger, no pool series");
}
