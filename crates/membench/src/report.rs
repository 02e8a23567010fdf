//! The report: measurements, their statistics, and the text table and JSON renderings.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::Op;
use crate::bandwidth::Sample;
use crate::cache::{Level, short_size};
use crate::kernels::Stores;
use crate::latency::LatencySample;
use crate::machine::Machine;

/// How bytes are counted, stated in every JSON report so figures compare with STREAM's.
const COUNTING: &str = "bytes the kernel's source reads plus bytes it writes, as STREAM \
counts them (copy 16 B/element, triad 24 B/element); write-allocate reads are not counted; \
GB = 1e9 bytes";

/// Median, minimum and maximum over the timed repetitions of one point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Stats {
    /// Statistics of `values`; `None` when empty or when a value is not finite.
    #[must_use]
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }

    /// (max − min) / median: how far the repetitions of one point disagree.
    #[must_use]
    pub fn spread(&self) -> f64 {
        if self.median > 0.0 {
            (self.max - self.min) / self.median
        } else {
            0.0
        }
    }
}

/// One measured point.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// What was measured.
    pub op: Op,
    /// Working set, bytes (total over the op's arrays).
    pub bytes: u64,
    /// Threads that shared the working set.
    pub threads: usize,
    /// Level the working set falls into, from the cache sizes given.
    pub level: Level,
    /// Repetitions timed.
    pub reps: usize,
    /// Bandwidth in GB/s (10⁹ bytes per second), for bandwidth ops.
    pub gb_s: Option<Stats>,
    /// Nanoseconds per dependent load, for latency ops.
    pub ns: Option<Stats>,
    /// Store kind behind `gb_s`, for writing ops.
    pub stores: Option<Stores>,
    /// Median GB/s with the other store kind, where both were timed.
    pub other_stores_gb_s: Option<f64>,
    /// Bytes of the working set backed by huge pages (Linux).
    pub huge_page_bytes: Option<u64>,
}

impl Measurement {
    /// The faster (by median) of the store kinds in `samples`.
    pub(crate) fn bandwidth(
        op: Op,
        bytes: u64,
        threads: usize,
        level: Level,
        samples: &[Sample],
        huge_page_bytes: Option<u64>,
    ) -> Measurement {
        let stats: Vec<(Stores, Option<Stats>)> = samples
            .iter()
            .map(|s| (s.stores, Stats::of(&s.gb_s)))
            .collect();
        let median = |s: &Option<Stats>| s.map_or(f64::NEG_INFINITY, |s| s.median);
        let best = stats
            .iter()
            .max_by(|a, b| median(&a.1).total_cmp(&median(&b.1)));
        let other = stats
            .iter()
            .filter(|s| Some(s.0) != best.map(|b| b.0))
            .find_map(|s| s.1.map(|st| st.median));
        Measurement {
            op,
            bytes,
            threads,
            level,
            reps: samples.first().map_or(0, |s| s.gb_s.len()),
            gb_s: best.and_then(|b| b.1),
            ns: None,
            stores: best.filter(|_| op.writes()).map(|b| b.0),
            other_stores_gb_s: other,
            huge_page_bytes,
        }
    }

    pub(crate) fn latency(op: Op, bytes: u64, level: Level, sample: &LatencySample) -> Measurement {
        Measurement {
            op,
            bytes,
            threads: 1,
            level,
            reps: sample.ns.len(),
            gb_s: None,
            ns: Stats::of(&sample.ns),
            stores: None,
            other_stores_gb_s: None,
            huge_page_bytes: sample.huge_page_bytes,
        }
    }
}

/// The flat JSON form of one measurement.
#[derive(Serialize, Deserialize)]
struct Row {
    op: Op,
    bytes: u64,
    threads: usize,
    level: Level,
    reps: usize,
    gb_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gb_s_median: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gb_s_min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gb_s_max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stores: Option<Stores>,
    #[serde(skip_serializing_if = "Option::is_none")]
    other_stores_gb_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ns_median: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ns_min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ns_max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    huge_page_bytes: Option<u64>,
}

impl From<&Measurement> for Row {
    fn from(m: &Measurement) -> Row {
        Row {
            op: m.op,
            bytes: m.bytes,
            threads: m.threads,
            level: m.level,
            reps: m.reps,
            gb_s: m.gb_s.map(|s| s.median),
            gb_s_median: m.gb_s.map(|s| s.median),
            gb_s_min: m.gb_s.map(|s| s.min),
            gb_s_max: m.gb_s.map(|s| s.max),
            stores: m.stores,
            other_stores_gb_s: m.other_stores_gb_s,
            ns: m.ns.map(|s| s.median),
            ns_median: m.ns.map(|s| s.median),
            ns_min: m.ns.map(|s| s.min),
            ns_max: m.ns.map(|s| s.max),
            huge_page_bytes: m.huge_page_bytes,
        }
    }
}

/// Everything one run measured, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The machine measured.
    pub machine: Machine,
    /// Timed repetitions per point.
    pub reps: usize,
    /// The points, in measurement order.
    pub results: Vec<Measurement>,
}

impl Report {
    pub(crate) fn new(machine: Machine, reps: usize, results: Vec<Measurement>) -> Report {
        Report {
            machine,
            reps,
            results,
        }
    }

    /// The measurement of `op` at `bytes` on `threads` threads.
    #[must_use]
    pub fn find(&self, op: Op, bytes: u64, threads: usize) -> Option<&Measurement> {
        self.results
            .iter()
            .find(|m| m.op == op && m.bytes == bytes && m.threads == threads)
    }

    /// Median GB/s of `op` at its largest measured working set on the most threads: the
    /// main-memory rate when the sizes reach DRAM.
    #[must_use]
    pub fn largest_gb_s(&self, op: Op) -> Option<f64> {
        self.results
            .iter()
            .filter(|m| m.op == op)
            .max_by_key(|m| (m.bytes, m.threads))
            .and_then(|m| m.gb_s.map(|s| s.median))
    }

    /// The report as JSON: `machine`, `reps`, `counting` (how bytes are counted) and a
    /// `results` array of flat objects with `op`, `bytes`, `threads`, `level`, `gb_s`
    /// (median; `null` for latency) with `gb_s_min`/`gb_s_max`, or `ns` with
    /// `ns_min`/`ns_max` for latency, plus `stores` where a writing kernel was timed.
    #[must_use]
    pub fn to_json(&self) -> String {
        let rows: Vec<Row> = self.results.iter().map(Row::from).collect();
        let doc = serde_json::json!({
            "machine": self.machine,
            "reps": self.reps,
            "counting": COUNTING,
            "results": rows,
        });
        // A `Value` built from plain data always serializes.
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }

    /// The report as text: the machine, a bandwidth table (sizes down, op × threads
    /// across) and a latency table.
    #[must_use]
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let c = &m.caches;
        let size = |s: Option<u64>| s.map_or_else(|| "?".to_owned(), short_size);
        let _ = writeln!(
            out,
            "{} · {} CPUs · {} {} {} · {} kernels · threads {}",
            m.cpu_model,
            m.logical_cpus,
            m.os,
            m.os_release.as_deref().unwrap_or(""),
            m.arch,
            m.isa.name(),
            m.pinning.name(),
        );
        let _ = writeln!(
            out,
            "caches: L1d {} · L2 {} · L3 {} · line {} B (private levels are per core)",
            size(c.l1d),
            size(c.l2),
            size(c.l3),
            c.line_or_default()
        );
        self.bandwidth_table(&mut out);
        self.latency_table(&mut out);
        out
    }

    fn bandwidth_table(&self, out: &mut String) {
        let mut columns: Vec<(Op, usize)> = Vec::new();
        let mut sizes: Vec<u64> = Vec::new();
        for m in self.results.iter().filter(|m| m.gb_s.is_some()) {
            if !columns.contains(&(m.op, m.threads)) {
                columns.push((m.op, m.threads));
            }
            if !sizes.contains(&m.bytes) {
                sizes.push(m.bytes);
            }
        }
        if columns.is_empty() {
            return;
        }
        columns.sort();
        sizes.sort_unstable();
        let _ = writeln!(
            out,
            "\nBandwidth, GB/s, median of {} (* = non-temporal stores were faster); \
             level for 1 thread",
            self.reps
        );
        let _ = write!(out, "{:>7} {:<5}", "size", "level");
        for (op, threads) in &columns {
            let _ = write!(out, " {:>10}", format!("{}×{threads}", op.name()));
        }
        out.push('\n');
        let mut worst: Option<(f64, &Measurement)> = None;
        for &bytes in &sizes {
            let level = self.machine.caches.level_of(bytes, 1);
            let _ = write!(out, "{:>7} {:<5}", short_size(bytes), level.name());
            for &(op, threads) in &columns {
                let cell = match self
                    .find(op, bytes, threads)
                    .and_then(|m| m.gb_s.map(|s| (m, s)))
                {
                    Some((m, s)) => {
                        if worst.is_none_or(|w| s.spread() > w.0) {
                            worst = Some((s.spread(), m));
                        }
                        let nt = if m.stores == Some(Stores::NonTemporal) {
                            "*"
                        } else {
                            " "
                        };
                        format!("{:.1}{nt}", s.median)
                    }
                    None => "-".to_owned(),
                };
                let _ = write!(out, " {cell:>10}");
            }
            out.push('\n');
        }
        if let Some((spread, m)) = worst {
            let _ = writeln!(
                out,
                "largest min–max spread: {:.1}% ({} {} ×{})",
                spread * 100.0,
                m.op.name(),
                short_size(m.bytes),
                m.threads
            );
        }
        let largest = self
            .results
            .iter()
            .filter(|m| m.gb_s.is_some())
            .max_by_key(|m| m.bytes);
        if let Some((m, huge)) = largest.and_then(|m| m.huge_page_bytes.map(|h| (m, h))) {
            let _ = writeln!(
                out,
                "huge pages: {:.0}% of the {} working set",
                huge as f64 * 100.0 / m.bytes.max(1) as f64,
                short_size(m.bytes)
            );
        }
    }

    fn latency_table(&self, out: &mut String) {
        let rows: Vec<&Measurement> = self.results.iter().filter(|m| m.ns.is_some()).collect();
        if rows.is_empty() {
            return;
        }
        let mut sizes: Vec<u64> = rows.iter().map(|m| m.bytes).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let _ = writeln!(
            out,
            "\nLoad latency, ns per dependent load, median of {} (min–max)",
            self.reps
        );
        let _ = writeln!(
            out,
            "{:>7} {:<5} {:>20} {:>20} {:>9}",
            "size", "level", "base pages", "huge pages", "huge MiB"
        );
        for bytes in sizes {
            let cell = |op| {
                self.find(op, bytes, 1).and_then(|m| m.ns).map_or_else(
                    || "-".to_owned(),
                    |s| format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max),
                )
            };
            let huge = self
                .find(Op::LatencyHuge, bytes, 1)
                .and_then(|m| m.huge_page_bytes)
                .map_or_else(|| "-".to_owned(), |b| format!("{}", b >> 20));
            let level = self.machine.caches.level_of(bytes, 1);
            let _ = writeln!(
                out,
                "{:>7} {:<5} {:>20} {:>20} {:>9}",
                short_size(bytes),
                level.name(),
                cell(Op::Latency),
                cell(Op::LatencyHuge),
                huge
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cache::CacheLevels;
    use crate::kernels::Isa;
    use crate::pool::Pinning;

    pub(crate) fn sample_report() -> Report {
        let caches = CacheLevels {
            l1d: Some(32 << 10),
            l2: Some(512 << 10),
            l3: Some(32 << 20),
            line_bytes: Some(64),
        };
        let machine = Machine::describe(caches, Isa::Portable, Pinning::Pinned);
        let mut results = Vec::new();
        for (i, bytes) in [4u64 << 10, 1 << 20, 1 << 30].into_iter().enumerate() {
            for threads in [1, 2] {
                let samples = [
                    Sample {
                        stores: Stores::Temporal,
                        gb_s: vec![10.0 / (i + 1) as f64; 3],
                    },
                    Sample {
                        stores: Stores::NonTemporal,
                        gb_s: vec![4.0 * i as f64, 5.0 * i as f64, 6.0],
                    },
                ];
                let level = caches.level_of(bytes, threads);
                results.push(Measurement::bandwidth(
                    Op::Copy,
                    bytes,
                    threads,
                    level,
                    &samples,
                    Some(bytes / 2),
                ));
            }
            let lat = LatencySample {
                ns: vec![1.0 + i as f64, 2.0 + i as f64],
                huge_page_bytes: Some(0),
            };
            results.push(Measurement::latency(
                Op::Latency,
                bytes,
                caches.level_of(bytes, 1),
                &lat,
            ));
        }
        Report::new(machine, 3, results)
    }

    #[test]
    fn stats_are_median_min_max() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Stats::of(&[]).is_none());
        assert!(Stats::of(&[1.0, f64::NAN]).is_none());
        assert!((Stats::of(&[9.0, 10.0, 11.0]).unwrap().spread() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn the_faster_store_kind_is_reported_and_labelled() {
        let r = sample_report();
        let small = r.find(Op::Copy, 4 << 10, 1).unwrap();
        assert_eq!(small.stores, Some(Stores::Temporal));
        assert_eq!(small.gb_s.unwrap().median, 10.0);
        let big = r.find(Op::Copy, 1 << 30, 2).unwrap();
        assert_eq!(big.stores, Some(Stores::NonTemporal));
        assert_eq!(big.gb_s.unwrap().median, 8.0);
        assert_eq!((big.gb_s.unwrap().min, big.gb_s.unwrap().max), (6.0, 10.0));
        assert!((big.other_stores_gb_s.unwrap() - 10.0 / 3.0).abs() < 1e-12);
        assert_eq!(big.level, Level::Dram);
        assert_eq!(r.largest_gb_s(Op::Copy), Some(8.0));
    }

    #[test]
    fn json_has_machine_and_flat_results() {
        let r = sample_report();
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["reps"], 3);
        assert!(v["machine"]["cpu_model"].is_string());
        assert_eq!(v["machine"]["caches"]["l3"], 32 << 20);
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 9);
        let copy = &results[0];
        assert_eq!(copy["op"], "copy");
        assert_eq!(copy["bytes"], 4096);
        assert_eq!(copy["threads"], 1);
        assert_eq!(copy["gb_s"], 10.0);
        assert_eq!(copy["gb_s_min"], 10.0);
        assert_eq!(copy["stores"], "temporal");
        assert_eq!(copy["huge_page_bytes"], 2048);
        let lat = results.iter().find(|r| r["op"] == "latency").unwrap();
        assert!(lat["gb_s"].is_null());
        assert_eq!(lat["ns"], 1.5);
        assert_eq!(lat["ns_max"], 2.0);
        assert_eq!(lat["level"], "l1");
    }

    #[test]
    fn table_lists_every_size_and_column() {
        let table = sample_report().to_table();
        assert!(
            table.contains("copy×1") && table.contains("copy×2"),
            "{table}"
        );
        for size in ["4K", "1M", "1G"] {
            assert!(
                table.lines().any(|l| l.trim_start().starts_with(size)),
                "{size}: {table}"
            );
        }
        assert!(table.contains("8.0*"), "non-temporal mark missing: {table}");
        assert!(
            table.contains("Load latency") && table.contains("2.50 (2.00–3.00)"),
            "{table}"
        );
        assert!(table.contains("DRAM"));
        assert!(
            table.contains("huge pages: 50% of the 1G working set"),
            "{table}"
        );
    }
}
