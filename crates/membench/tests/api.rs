//! The public API end to end, on small working sets and short repetitions (the figures
//! themselves are the bench command's output, not asserted here).

use std::time::Duration;

use membench::{CacheLevels, Config, Level, Op, StorePolicy, Stores};

fn caches() -> CacheLevels {
    CacheLevels {
        l1d: Some(32 << 10),
        l2: Some(512 << 10),
        l3: Some(32 << 20),
        line_bytes: None,
    }
}

fn quick(ops: Vec<Op>) -> Config {
    Config {
        sizes: Some(vec![16 << 10, 1 << 20]),
        threads: Some(2),
        reps: 3,
        ops,
        min_rep_time: Duration::from_micros(300),
        stores: StorePolicy::Best,
        huge_pages: true,
        ..Config::default()
    }
}

#[test]
fn run_measures_every_op_size_and_thread_count() {
    let config = quick(vec![Op::Read, Op::Write, Op::Copy, Op::Triad, Op::Latency]);
    let mut seen = 0;
    let report = membench::run_with(&config, &caches(), |_| seen += 1).unwrap();
    // 4 bandwidth ops × 2 sizes × {1, 2} threads, then latency × 2 sizes.
    assert_eq!(report.results.len(), 4 * 2 * 2 + 2);
    assert_eq!(seen, report.results.len());
    for op in Op::BANDWIDTH {
        for bytes in [16 << 10, 1 << 20] {
            for threads in [1, 2] {
                let m = report.find(op, bytes, threads).unwrap();
                let s = m.gb_s.unwrap();
                assert!(
                    s.min > 0.0 && s.min <= s.median && s.median <= s.max,
                    "{m:?}"
                );
                assert_eq!(m.reps, 3);
                assert_eq!(m.stores.is_some(), op.writes());
                assert!(m.ns.is_none());
                // Linux reports how much of the set huge pages back (THP may be off).
                let huge = m.huge_page_bytes;
                assert_eq!(huge.is_some(), cfg!(target_os = "linux"), "{m:?}");
                assert!(huge.unwrap_or(0) <= bytes, "{m:?}");
            }
        }
    }
    let lat = report.find(Op::Latency, 1 << 20, 1).unwrap();
    assert!(lat.ns.unwrap().median > 0.0 && lat.gb_s.is_none());
    assert_eq!(lat.level, Level::L3);
    assert_eq!(
        report.find(Op::Latency, 16 << 10, 1).unwrap().level,
        Level::L1
    );
    assert_eq!(report.machine.caches, caches());
    assert!(report.machine.logical_cpus >= 1);
}

#[test]
fn renderers_carry_the_measurements() {
    let report = membench::run(&quick(vec![Op::Copy, Op::Latency]), &caches()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), report.results.len());
    for (row, m) in results.iter().zip(&report.results) {
        assert_eq!(row["op"], m.op.name());
        assert_eq!(row["bytes"], m.bytes);
        assert_eq!(row["threads"], m.threads);
        // serde_json's default float parser may differ in the last bit.
        let close =
            |v: &serde_json::Value, want: f64| (v.as_f64().unwrap() - want).abs() <= want * 1e-12;
        match m.gb_s {
            Some(s) => assert!(close(&row["gb_s"], s.median) && close(&row["gb_s_max"], s.max)),
            None => assert!(close(&row["ns"], m.ns.unwrap().median) && row["gb_s"].is_null()),
        }
    }
    assert!(json["machine"]["os"].is_string() && json["counting"].is_string());
    let table = report.to_table();
    assert!(table.contains("copy×1") && table.contains("copy×2") && table.contains("Load latency"));
    let svg = report.to_svg();
    assert!(svg.contains("<polyline") && svg.contains("L2 512K"));
}

#[test]
fn store_policies_are_honoured() {
    let mut config = quick(vec![Op::Write]);
    config.stores = StorePolicy::Temporal;
    let report = membench::run(&config, &caches()).unwrap();
    assert!(
        report
            .results
            .iter()
            .all(|m| m.stores == Some(Stores::Temporal))
    );
    assert!(report.results.iter().all(|m| m.other_stores_gb_s.is_none()));

    config.stores = StorePolicy::NonTemporal;
    let report = membench::run(&config, &caches()).unwrap();
    let want = if report.machine.isa.has_nontemporal_stores() {
        Stores::NonTemporal
    } else {
        Stores::Temporal
    };
    assert!(report.results.iter().all(|m| m.stores == Some(want)));
}

#[test]
fn single_thread_config_measures_once_per_point() {
    let mut config = quick(vec![Op::Read]);
    config.threads = Some(1);
    let report = membench::run(&config, &caches()).unwrap();
    assert_eq!(report.results.len(), 2);
    assert!(report.results.iter().all(|m| m.threads == 1));
}
