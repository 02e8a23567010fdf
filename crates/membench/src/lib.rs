//! Measures the memory hierarchy of the machine it runs on: bandwidth and load latency at
//! each cache level and in main memory, and the throughput of the storage tiers the KV
//! cache moves blocks between.
//!
//! This is the library behind `llmem bench memory`. The main types:
//!
//! - [`Config`] says what to measure; [`CacheLevels`] says where the cache steps are (the
//!   probe supplies them, or [`CacheLevels::detect_linux`]).
//! - [`run`] measures and returns a [`Report`]: one [`Measurement`] per op, working-set
//!   size and thread count, with median, min and max over the repetitions, and the
//!   [`Machine`] it ran on.
//! - [`Report::to_table`], [`Report::to_json`] and [`Report::to_svg`] render it.
//! - [`TierThroughput`] holds the tier rates the KV eviction score's reload cost needs;
//!   [`measure_disk`] fills its disk part.
//!
//! Bandwidth is counted as STREAM counts it: the bytes the kernel's source code reads
//! plus the bytes it writes (copy 16 B per element, triad 24 B), not the extra
//! write-allocate reads the hardware makes for ordinary stores. See
//! `docs/design/membench.md` for the method.
//!
//! ```no_run
//! use membench::{CacheLevels, Config, Op};
//!
//! let caches = CacheLevels::detect_linux();
//! let config = Config { ops: vec![Op::Copy, Op::Triad, Op::Latency], ..Config::default() };
//! let report = membench::run(&config, &caches)?;
//! println!("{}", report.to_table());
//! std::fs::write("memory.svg", report.to_svg())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bandwidth;
mod buffer;
mod cache;
mod error;
mod kernels;
mod latency;
mod machine;
mod pool;
mod report;
mod svg;
mod tier;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bandwidth::{Timing, WorkingSet};
use crate::buffer::Pages;
use crate::pool::Pool;

pub use crate::cache::{CacheLevels, Level, parse_size, parse_sizes, short_size};
pub use crate::error::{BenchError, ParseSizeError, TierError};
pub use crate::kernels::{Isa, Stores};
pub use crate::machine::Machine;
pub use crate::pool::Pinning;
pub use crate::report::{Measurement, Report, Stats};
pub use crate::tier::{
    CodecKind, CodecThroughput, CompressorKind, CompressorThroughput, DiskConfig, DiskThroughput,
    TierThroughput, measure_disk,
};

/// One thing to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Op {
    /// Sum one array (loads only).
    Read,
    /// Fill one array with a constant (stores only).
    Write,
    /// STREAM copy, `c[i] = a[i]`.
    Copy,
    /// STREAM triad, `a[i] = b[i] + q·c[i]`.
    Triad,
    /// Load latency by pointer chasing, on base pages.
    Latency,
    /// Load latency by pointer chasing, on transparent huge pages (Linux; elsewhere it is
    /// skipped), to show what the TLB walk costs.
    LatencyHuge,
}

impl Op {
    /// The bandwidth ops.
    pub const BANDWIDTH: [Op; 4] = [Op::Read, Op::Write, Op::Copy, Op::Triad];

    /// Name used in tables and JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Copy => "copy",
            Op::Triad => "triad",
            Op::Latency => "latency",
            Op::LatencyHuge => "latency_huge",
        }
    }

    /// Every op, in the order [`Config::default`] measures them.
    pub const ALL: [Op; 6] = [
        Op::Read,
        Op::Write,
        Op::Copy,
        Op::Triad,
        Op::Latency,
        Op::LatencyHuge,
    ];

    /// The op [`Op::name`] names, if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Whether this op measures bandwidth (else latency).
    #[must_use]
    pub fn is_bandwidth(self) -> bool {
        Op::BANDWIDTH.contains(&self)
    }

    /// Arrays the op streams through (the working set is split evenly among them).
    #[must_use]
    pub fn arrays(self) -> usize {
        match self {
            Op::Copy => 2,
            Op::Triad => 3,
            _ => 1,
        }
    }

    /// Bytes counted per element, as STREAM counts them (8 per array touched).
    #[must_use]
    pub fn bytes_per_element(self) -> u64 {
        8 * self.arrays() as u64
    }

    /// Whether the op stores (and so has a non-temporal variant).
    #[must_use]
    pub fn writes(self) -> bool {
        matches!(self, Op::Write | Op::Copy | Op::Triad)
    }
}

/// Which store kinds the bandwidth kernels are timed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorePolicy {
    /// Time ordinary and non-temporal stores where both exist; report the faster
    /// (by median) and label it, keeping the other's median.
    #[default]
    Best,
    /// Ordinary stores only.
    Temporal,
    /// Non-temporal stores where the kernel family has them.
    NonTemporal,
}

/// What [`run`] measures.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Working-set sizes in bytes (total over an op's arrays). `None`: chosen from the
    /// cache sizes as [`Config::sweep`] says.
    pub sizes: Option<Vec<u64>>,
    /// Which sizes `sizes: None` means.
    pub sweep: Sweep,
    /// Largest working set the chosen sizes may have (`sizes: None` only): a budget's or
    /// the machine's memory. `None`: no limit.
    pub max_bytes: Option<u64>,
    /// Threads for the all-threads runs. `None`: every CPU the process may use. Bandwidth
    /// is measured on one thread and on this many (once when it is 1).
    pub threads: Option<usize>,
    /// Timed repetitions per point (≥ 1; the report gives their median, min and max).
    pub reps: usize,
    /// What to measure, in this order.
    pub ops: Vec<Op>,
    /// Least duration of one repetition; small working sets are passed over repeatedly
    /// until it is reached, so timer resolution and start skew stay below 0.1%.
    pub min_rep_time: Duration,
    /// Store kinds for the writing kernels.
    pub stores: StorePolicy,
    /// Back the bandwidth working sets with transparent huge pages (Linux; ignored
    /// elsewhere). In a virtual machine a TLB miss walks two page tables, and streaming
    /// through base pages takes one such walk every 4 KiB: on a KVM guest that cost
    /// single-thread DRAM copy 12% of its rate (see `docs/design/membench.md`). `false`
    /// measures what an ordinary allocation sees.
    pub huge_pages: bool,
}

/// How many working-set sizes a run without explicit sizes measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// One point inside each cache level, and one in main memory for bandwidth
    /// ([`CacheLevels::quick_bandwidth_sizes`], [`CacheLevels::quick_latency_sizes`]):
    /// about a minute.
    Quick,
    /// Every power of two from 4 KiB to past the last level, plus points around each
    /// level ([`CacheLevels::default_bandwidth_sizes`], [`CacheLevels::default_latency_sizes`]):
    /// many minutes where the last level is large.
    Full,
}

impl Default for Config {
    fn default() -> Config {
        let mut ops = vec![Op::Read, Op::Write, Op::Copy, Op::Triad, Op::Latency];
        if cfg!(target_os = "linux") {
            ops.push(Op::LatencyHuge);
        }
        Config {
            sizes: None,
            sweep: Sweep::Quick,
            max_bytes: None,
            threads: None,
            reps: 5,
            ops,
            min_rep_time: Duration::from_millis(20),
            stores: StorePolicy::Best,
            huge_pages: cfg!(target_os = "linux"),
        }
    }
}

impl Config {
    /// The bandwidth working sets this configuration measures, in order.
    #[must_use]
    pub fn bandwidth_sizes(&self, caches: &CacheLevels) -> Vec<u64> {
        match (&self.sizes, self.sweep) {
            (Some(sizes), _) => sizes.clone(),
            (None, Sweep::Quick) => self.at_most_max(caches.quick_bandwidth_sizes()),
            (None, Sweep::Full) => self.at_most_max(caches.default_bandwidth_sizes()),
        }
    }

    /// The latency working sets this configuration measures, in order.
    #[must_use]
    pub fn latency_sizes(&self, caches: &CacheLevels) -> Vec<u64> {
        match (&self.sizes, self.sweep) {
            (Some(sizes), _) => sizes.clone(),
            (None, Sweep::Quick) => self.at_most_max(caches.quick_latency_sizes()),
            (None, Sweep::Full) => self.at_most_max(caches.default_latency_sizes()),
        }
    }

    fn at_most_max(&self, mut sizes: Vec<u64>) -> Vec<u64> {
        sizes.retain(|&s| self.max_bytes.is_none_or(|max| s <= max));
        sizes
    }

    fn validate(&self) -> Result<(), BenchError> {
        let invalid = |what, value: u64| Err(BenchError::InvalidConfig { what, value });
        if self.reps == 0 {
            return invalid("reps must be at least 1", 0);
        }
        if self.threads == Some(0) {
            return invalid("threads must be at least 1", 0);
        }
        if let Some(&bad) = self
            .sizes
            .iter()
            .flatten()
            .find(|s| **s < cache::MIN_SIZE_BYTES)
        {
            return invalid("sizes must be at least 4 KiB", bad);
        }
        if self.sizes.as_ref().is_some_and(Vec::is_empty) {
            return invalid("sizes must not be empty", 0);
        }
        Ok(())
    }
}

/// Measures what `config` asks for on this machine. Takes as long as the points need:
/// about a minute for the defaults ([`Sweep::Quick`]) on a two-core machine.
///
/// # Errors
/// [`BenchError`] when the configuration is invalid, a working set cannot be allocated, or
/// a worker thread cannot be started.
pub fn run(config: &Config, caches: &CacheLevels) -> Result<Report, BenchError> {
    run_with(config, caches, |_| {})
}

/// As [`run`], calling `on_result` with each measurement as soon as it is made (for
/// progress output).
///
/// # Errors
/// As [`run`].
pub fn run_with(
    config: &Config,
    caches: &CacheLevels,
    mut on_result: impl FnMut(&Measurement),
) -> Result<Report, BenchError> {
    config.validate()?;
    let kernels = kernels::Kernels::detect();
    let all = config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let single = Pool::new(1)?;
    let wide = if all > 1 { Some(Pool::new(all)?) } else { None };
    let pools: Vec<&Pool> = std::iter::once(&single).chain(wide.as_ref()).collect();
    let pinning = pools
        .iter()
        .map(|p| p.pinning())
        .find(|p| *p != Pinning::Pinned);
    let timing = Timing {
        reps: config.reps,
        min_rep: config.min_rep_time,
    };
    let mut results = Vec::new();
    let mut push = |m: Measurement| {
        on_result(&m);
        results.push(m);
    };

    let bandwidth_ops: Vec<Op> = config
        .ops
        .iter()
        .copied()
        .filter(|o| o.is_bandwidth())
        .collect();
    if !bandwidth_ops.is_empty() {
        let sizes = config.bandwidth_sizes(caches);
        let pages = if config.huge_pages {
            Pages::Huge
        } else {
            Pages::Base
        };
        for &size in &sizes {
            let set = WorkingSet::new(size, pools[pools.len() - 1], pages)?;
            let mut points: Vec<_> = bandwidth_ops
                .iter()
                .flat_map(|&op| pools.iter().map(move |&pool| (op, pool)))
                .map(|(op, pool)| set.prepare(op, pool, kernels, config.stores, timing))
                .collect();
            // Repetitions go round every point of the size in turn, so each point's
            // samples span the whole measurement: a slow minute on a shared host lowers
            // one sample of every point rather than all samples of one (run-to-run
            // agreement of the medians).
            for _ in 0..timing.reps {
                for p in &mut points {
                    set.repeat(p);
                }
            }
            for p in points {
                let threads = p.pool.threads();
                push(Measurement::bandwidth(
                    p.op,
                    size,
                    threads,
                    caches.level_of(size, threads),
                    &p.samples,
                    set.huge_page_bytes(),
                ));
            }
        }
    }

    let latency_ops: Vec<Op> = config
        .ops
        .iter()
        .copied()
        .filter(|o| *o == Op::Latency || (*o == Op::LatencyHuge && cfg!(target_os = "linux")))
        .collect();
    if !latency_ops.is_empty() {
        let sizes = config.latency_sizes(caches);
        let line = caches.line_or_default();
        for &size in &sizes {
            for &op in &latency_ops {
                let pages = if op == Op::LatencyHuge {
                    Pages::Huge
                } else {
                    Pages::Base
                };
                let sample = latency::measure(size, line, pages, &single, timing)?;
                push(Measurement::latency(
                    op,
                    size,
                    caches.level_of(size, 1),
                    &sample,
                ));
            }
        }
    }

    let machine = Machine::describe(*caches, kernels.isa(), pinning.unwrap_or(Pinning::Pinned));
    Ok(Report::new(machine, config.reps, results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_configs_are_refused_before_measuring() {
        let caches = CacheLevels::default();
        for config in [
            Config {
                reps: 0,
                ..Config::default()
            },
            Config {
                threads: Some(0),
                ..Config::default()
            },
            Config {
                sizes: Some(vec![4096, 100]),
                ..Config::default()
            },
            Config {
                sizes: Some(vec![]),
                ..Config::default()
            },
        ] {
            assert!(matches!(
                run(&config, &caches),
                Err(BenchError::InvalidConfig { .. })
            ));
        }
    }

    #[test]
    fn op_byte_counts_follow_stream() {
        assert_eq!(Op::Copy.bytes_per_element(), 16);
        assert_eq!(Op::Triad.bytes_per_element(), 24);
        assert_eq!(Op::Read.bytes_per_element(), 8);
        assert!(Op::Triad.writes() && !Op::Read.writes());
        assert!(!Op::Latency.is_bandwidth());
    }

    #[test]
    fn op_names_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(op));
        }
        assert_eq!(Op::from_name("memcpy"), None);
    }
}
