//! Runs the memory benchmark and prints the table; optionally writes JSON and an SVG plot,
//! and measures the disk tier.
//!
//! ```text
//! cargo run --release -p membench --example membench -- \
//!     [--threads N] [--sizes 4K,1M,1G] [--reps N] [--ops read,write,copy,triad,latency,latency_huge]
//!     [--min-rep-ms N] [--stores best|temporal|nontemporal] [--base-pages] [--json FILE]
//!     [--plot FILE]
//!     [--disk DIR] [--save-tier]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use membench::{CacheLevels, Config, DiskConfig, Op, StorePolicy, TierThroughput, short_size};

struct Args {
    config: Config,
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
    disk: Option<PathBuf>,
    save_tier: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: Config::default(),
        json: None,
        plot: None,
        disk: None,
        save_tier: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--threads" => {
                args.config.threads = Some(value()?.parse().map_err(|e| format!("--threads: {e}"))?)
            }
            "--sizes" => {
                args.config.sizes =
                    Some(membench::parse_sizes(&value()?).map_err(|e| e.to_string())?)
            }
            "--reps" => args.config.reps = value()?.parse().map_err(|e| format!("--reps: {e}"))?,
            "--min-rep-ms" => {
                let ms: u64 = value()?.parse().map_err(|e| format!("--min-rep-ms: {e}"))?;
                args.config.min_rep_time = Duration::from_millis(ms);
            }
            "--ops" => {
                args.config.ops = value()?
                    .split(',')
                    .map(|name| {
                        Op::from_name(name.trim()).ok_or_else(|| format!("unknown op {name:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--stores" => {
                args.config.stores = match value()?.as_str() {
                    "best" => StorePolicy::Best,
                    "temporal" => StorePolicy::Temporal,
                    "nontemporal" | "nt" => StorePolicy::NonTemporal,
                    other => return Err(format!("unknown store policy {other:?}")),
                }
            }
            "--base-pages" => args.config.huge_pages = false,
            "--json" => args.json = Some(value()?.into()),
            "--plot" => args.plot = Some(value()?.into()),
            "--disk" => args.disk = Some(value()?.into()),
            "--save-tier" => args.save_tier = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("membench: {e}");
            return ExitCode::from(2);
        }
    };
    let caches = CacheLevels::detect_linux();
    let report = membench::run_with(&args.config, &caches, |m| {
        let value = match (m.gb_s, m.ns) {
            (Some(s), _) => format!("{:8.2} GB/s", s.median),
            (_, Some(s)) => format!("{:8.2} ns", s.median),
            _ => "-".to_owned(),
        };
        eprintln!(
            "{:>12} {:>6} ×{} {value}",
            m.op.name(),
            short_size(m.bytes),
            m.threads
        );
    });
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("membench: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report.to_table());
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text)
            .map_err(|e| eprintln!("membench: {}: {e}", path.display()))
            .is_ok()
    };
    let mut ok = true;
    if let Some(path) = &args.json {
        ok &= write(path, report.to_json());
    }
    if let Some(path) = &args.plot {
        ok &= write(path, report.to_svg());
    }
    let mut tier = TierThroughput::new(report.machine.cpu_model.clone());
    tier.dram_copy_gb_s = report.largest_gb_s(Op::Copy);
    if let Some(dir) = args.disk {
        match membench::measure_disk(&DiskConfig::in_dir(dir)) {
            Ok(d) => {
                println!(
                    "disk: write+fsync {:.2} GB/s ({:.2}–{:.2}), read {:.2} GB/s ({:.2}–{:.2}), {} file, cache dropped: {}",
                    d.write_fsync_gb_s.median,
                    d.write_fsync_gb_s.min,
                    d.write_fsync_gb_s.max,
                    d.read_gb_s.median,
                    d.read_gb_s.min,
                    d.read_gb_s.max,
                    short_size(d.file_bytes),
                    d.cache_dropped
                );
                tier.disk = Some(d);
            }
            Err(e) => {
                eprintln!("membench: disk: {e}");
                ok = false;
            }
        }
    }
    if args.save_tier {
        match tier.save() {
            Ok(path) => println!("tier throughput saved to {}", path.display()),
            Err(e) => {
                eprintln!("membench: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
