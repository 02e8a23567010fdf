//! Health reports validate against crates/probe/health-report.schema.json.
//!
//! The validator below implements the keywords that schema uses (type, const, enum,
//! required, properties, additionalProperties: false, items, minimum, maximum, minItems,
//! maxItems, minLength) and fails on any other, so the schema cannot silently outgrow it.

use probe::{
    FakeProbe, GpuSnapshot, HealthContext, HealthReport, LedgerView, Monitor, PoolUsage,
    ProcessSnapshot, RecommendationKind, Sample, SystemSnapshot,
};
use serde_json::Value;

const GIB: u64 = 1 << 30;

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "null" => value.is_null(),
        other => panic!("schema type {other} not supported by this validator"),
    }
}

fn validate(schema: &Value, value: &Value, at: &str) {
    let schema = schema.as_object().expect("a schema is an object");
    for (keyword, arg) in schema {
        match keyword.as_str() {
            "$schema" | "$id" | "title" | "description" => {}
            "type" => {
                let ok = match arg {
                    Value::String(t) => type_matches(t, value),
                    Value::Array(ts) => ts.iter().any(|t| type_matches(t.as_str().unwrap(), value)),
                    _ => panic!("bad type keyword"),
                };
                assert!(ok, "{at}: {value} is not {arg}");
            }
            "const" => assert_eq!(value, arg, "{at}"),
            "enum" => assert!(
                arg.as_array().unwrap().contains(value),
                "{at}: {value} not in {arg}"
            ),
            "required" => {
                for key in arg.as_array().unwrap() {
                    let key = key.as_str().unwrap();
                    assert!(value.get(key).is_some(), "{at}: missing {key}");
                }
            }
            "properties" => {
                for (key, sub) in arg.as_object().unwrap() {
                    if let Some(v) = value.get(key) {
                        validate(sub, v, &format!("{at}.{key}"));
                    }
                }
            }
            "additionalProperties" => {
                assert_eq!(arg, &Value::Bool(false), "only `false` is supported");
                let known = schema["properties"].as_object().unwrap();
                for key in value.as_object().unwrap().keys() {
                    assert!(known.contains_key(key), "{at}: undocumented key {key}");
                }
            }
            "items" => {
                for (i, item) in value.as_array().unwrap().iter().enumerate() {
                    validate(arg, item, &format!("{at}[{i}]"));
                }
            }
            "minimum" | "maximum" => {
                if let Some(n) = value.as_f64() {
                    let bound = arg.as_f64().unwrap();
                    let ok = if keyword == "minimum" {
                        n >= bound
                    } else {
                        n <= bound
                    };
                    assert!(ok, "{at}: {n} breaks {keyword} {bound}");
                }
            }
            "minItems" | "maxItems" => {
                let len = value.as_array().unwrap().len() as u64;
                let bound = arg.as_u64().unwrap();
                let ok = if keyword == "minItems" {
                    len >= bound
                } else {
                    len <= bound
                };
                assert!(ok, "{at}: {len} items breaks {keyword} {bound}");
            }
            "minLength" => {
                let len = value.as_str().unwrap().chars().count() as u64;
                assert!(len >= arg.as_u64().unwrap(), "{at}: too short");
            }
            other => panic!("schema keyword {other} not supported by this validator"),
        }
    }
}

fn schema() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/health-report.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn check(report: &HealthReport) {
    let value = serde_json::to_value(report).unwrap();
    validate(&schema(), &value, "report");
}

#[test]
fn reports_with_every_recommendation_validate() {
    let mut seen = Vec::new();

    // Tight memory, swap, a ledger with drift, a big model and a small working set.
    let fake = FakeProbe::new();
    let mut system = SystemSnapshot::new(128 * GIB, 8 * GIB);
    system.swap_used_bytes = 4 * GIB;
    system.fragmentation = Some(0.5);
    fake.set_system(system);
    let mut process = ProcessSnapshot::new(100 * GIB);
    process.swap_bytes = Some(2 * GIB);
    fake.set_process(process);
    let mut gpu = GpuSnapshot::new(0, "Apple M3 Max", 96 * GIB, 90 * GIB);
    gpu.working_set_bytes = Some(80 * GIB);
    fake.set_gpus(vec![gpu]);
    let mut monitor = Monitor::new(fake);
    let ledger = LedgerView::from_pools(vec![PoolUsage::new("weights", 96 * GIB, 80 * GIB)]);
    monitor.sample_at(0, Some(ledger)).unwrap();
    let context = HealthContext::new()
        .with_model_weights(84 * GIB)
        .with_kv_f16(8 * GIB)
        .with_ctx(65_536, 256 * 1024);
    let report = monitor.health(&context).unwrap();
    check(&report);
    seen.extend(report.recommendations.iter().map(|r| r.kind));

    // A model filling memory; a cgroup near its limit.
    let fake = FakeProbe::new();
    let mut system = SystemSnapshot::new(32 * GIB, 16 * GIB);
    let mut cgroup = probe::parse::CgroupMemory::default();
    cgroup.current_bytes = 15 * GIB;
    cgroup.max_bytes = Some(16 * GIB);
    system.signals.cgroup = Some(cgroup);
    fake.set_system(system);
    let sample = Sample::capture(&fake, None, 0).unwrap();
    let report = HealthReport::assess(
        &sample,
        None,
        &HealthContext::new().with_model_weights(30 * GIB),
    );
    check(&report);
    seen.extend(report.recommendations.iter().map(|r| r.kind));

    for kind in [
        RecommendationKind::KvInt8,
        RecommendationKind::WiredLimit,
        RecommendationKind::LowerCtx,
        RecommendationKind::UntrackedDrift,
        RecommendationKind::CgroupLimit,
        RecommendationKind::CompactMemory,
        RecommendationKind::FitMemory,
    ] {
        assert!(seen.contains(&kind), "{kind:?} not exercised: {seen:?}");
    }
}

#[test]
fn a_report_with_unknowns_validates() {
    let sample = Sample::capture(&FakeProbe::new(), None, 0).unwrap();
    let report = HealthReport::assess(&sample, None, &HealthContext::new());
    assert_eq!(report.untracked_bytes, None);
    check(&report);
}
