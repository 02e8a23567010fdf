//! `llmem bench infer`: prefill and decode speed, measured like llama-bench.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use engine::forward::{Logits, Session, SessionConfig};
use serde::Serialize;

use crate::exit::{CliError, input};
use crate::machine::{self, MachineInfo};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Prefill (pp512), decode (tg128) and decode at depth 4096 (tg128 @ d4096), tokens/s.
    Infer(InferArgs),
    /// Memory bandwidth (read, write, copy, triad) and load latency per cache level.
    Memory(MemoryArgs),
    /// KV cache types: bytes per token, perplexity and KL against f16, decode at depth,
    /// codec throughput.
    Kv(crate::bench_kv::KvArgs),
    /// Many sequences decoded together: prefill and summed decode tokens/s and KV bytes
    /// per batch size (as llama-batched-bench).
    Batch(crate::bench_batch::BatchArgs),
}

#[derive(Args, Debug)]
pub struct MemoryArgs {
    /// Threads for the all-threads runs (default: every CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Working-set sizes, e.g. 4K,1M,1G (default: chosen from the cache sizes).
    #[arg(long)]
    pub sizes: Option<String>,
    /// Timed repetitions per point (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// What to measure, e.g. copy,triad (default: read,write,copy,triad,latency and, on
    /// Linux, latency_huge).
    #[arg(long)]
    pub ops: Option<String>,
    /// Measure bandwidth on ordinary pages instead of transparent huge pages (Linux), to
    /// see what the TLB costs a stream.
    #[arg(long)]
    pub base_pages: bool,
    /// Print JSON (with the machine's description) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG plot of bandwidth and latency against working-set size.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also measure the disk tier (write with fsync, read with the page cache dropped;
    /// a 256 MiB file in the cache directory).
    #[arg(long)]
    pub disk: bool,
    /// Do not save the rates for the planner and the KV eviction score.
    #[arg(long)]
    pub no_save: bool,
}

/// Cache sizes as the probe reads them, in the form the memory bench wants.
fn cache_levels() -> membench::CacheLevels {
    use probe::MemoryProbe;
    let Ok(p) = probe::NativeProbe::new().platform() else {
        return membench::CacheLevels::default();
    };
    let find = |level: u8| {
        p.caches
            .iter()
            .filter(|c| c.level == level && c.kind != probe::CacheKind::Instruction)
            .map(|c| c.size_bytes)
            .max()
    };
    membench::CacheLevels {
        l1d: find(1),
        l2: find(2),
        l3: find(3),
        line_bytes: Some(p.cache_line_bytes).filter(|&b| b > 0),
    }
}

/// `read,copy,...` into ops, refusing unknown names and an empty list.
fn parse_ops(list: &str) -> Result<Vec<membench::Op>, CliError> {
    let mut ops = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let op = membench::Op::from_name(name).ok_or_else(|| {
            let known: Vec<_> = membench::Op::ALL.iter().map(|o| o.name()).collect();
            input(anyhow::anyhow!(
                "--ops: unknown op {name:?} (known: {})",
                known.join(", ")
            ))
        })?;
        if !ops.contains(&op) {
            ops.push(op);
        }
    }
    if ops.is_empty() {
        return Err(input(anyhow::anyhow!("--ops: no op given")));
    }
    Ok(ops)
}

fn memory(a: &MemoryArgs) -> Result<(), CliError> {
    let mut config = membench::Config {
        threads: a.threads,
        reps: a.reps,
        huge_pages: cfg!(target_os = "linux") && !a.base_pages,
        ..membench::Config::default()
    };
    if let Some(s) = &a.sizes {
        config.sizes =
            Some(membench::parse_sizes(s).map_err(|e| input(anyhow::anyhow!("--sizes: {e}")))?);
    }
    if let Some(list) = &a.ops {
        config.ops = parse_ops(list)?;
    }
    let report = membench::run(&config, &cache_levels()).map_err(|e| match e {
        membench::BenchError::InvalidConfig { .. } => input(e),
        other => CliError::Runtime(other.into()),
    })?;
    if let Some(path) = &a.plot {
        std::fs::write(path, report.to_svg())
            .map_err(|e| input(anyhow::anyhow!("cannot write {}: {e}", path.display())))?;
    }
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    let disk = if a.disk {
        let cfg = membench::DiskConfig::in_cache_dir()
            .map_err(|e| CliError::Runtime(anyhow::anyhow!("disk tier: {e}")))?;
        let d = membench::measure_disk(&cfg)
            .map_err(|e| CliError::Runtime(anyhow::anyhow!("disk tier: {e}")))?;
        eprintln!(
            "disk tier: write+fsync {:.2} GB/s, read {:.2} GB/s (median; page cache dropped: {})",
            d.write_fsync_gb_s.median, d.read_gb_s.median, d.cache_dropped
        );
        Some(d)
    } else {
        None
    };
    if !a.no_save {
        let copy = report.largest_gb_s(membench::Op::Copy);
        let path = crate::tier::update(|t| {
            t.dram_copy_gb_s = copy.or(t.dram_copy_gb_s);
            t.disk = disk.or(t.disk);
        })?;
        eprintln!("tier rates saved to {}", path.display());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct InferArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Compute threads (default: the physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed repetitions per figure (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Prompt tokens for the prefill figure.
    #[arg(long, default_value_t = 512)]
    pub pp: usize,
    /// Generated tokens for the decode figures.
    #[arg(long, default_value_t = 128)]
    pub tg: usize,
    /// Cache depth for the deep decode figure (0 skips it).
    #[arg(long, default_value_t = 4096)]
    pub depth: usize,
    #[arg(long)]
    pub json: bool,
    /// Do not save the prefill rate (the KV eviction score's recompute cost).
    #[arg(long)]
    pub no_save: bool,
}

#[derive(Serialize)]
struct Figure {
    median: f64,
    min: f64,
    max: f64,
    runs: Vec<f64>,
}

impl Figure {
    fn of(mut runs: Vec<f64>) -> Figure {
        let mut s = runs.clone();
        s.sort_by(f64::total_cmp);
        let median = if s.is_empty() { 0.0 } else { s[s.len() / 2] };
        runs.shrink_to_fit();
        Figure {
            median,
            min: *s.first().unwrap_or(&0.0),
            max: *s.last().unwrap_or(&0.0),
            runs,
        }
    }
}

#[derive(Serialize)]
struct InferReport {
    model: String,
    threads: usize,
    pp512_tok_s: f64,
    tg128_tok_s: f64,
    tg128_d4096_tok_s: Option<f64>,
    pp: Figure,
    tg: Figure,
    tg_deep: Option<Figure>,
    pp_tokens: usize,
    tg_tokens: usize,
    depth: usize,
    machine: MachineInfo,
}

pub fn run(cmd: &BenchCommand) -> Result<(), CliError> {
    match cmd {
        BenchCommand::Infer(a) => infer(a),
        BenchCommand::Memory(a) => memory(a),
        BenchCommand::Kv(a) => crate::bench_kv::kv(a),
        BenchCommand::Batch(a) => crate::bench_batch::batch(a),
    }
}

/// The last component of `p`, for reports.
pub(crate) fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// A fixed pseudo-prompt: the same token ids the peer's benchmark uses.
pub(crate) fn prompt(n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919) % 40000 + 100).min(vocab - 1) as u32)
        .collect()
}

/// Decodes `n` tokens one at a time (feeding a fixed token, as llama-bench does) and
/// returns tokens/s.
pub(crate) fn decode(s: &mut Session<'_, '_>, n: usize) -> Result<f64, CliError> {
    let tok = 3575.min(s.model().cfg.vocab - 1) as u32;
    let t = Instant::now();
    for _ in 0..n {
        s.eval(&[tok], Logits::Last)?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn infer(a: &InferArgs) -> Result<(), CliError> {
    let file = crate::load::map(&a.model)?;
    let tm = crate::load::text_model(&a.model, &file)?;
    let threads = a.threads.unwrap_or_else(machine::physical_cores).max(1);
    let vocab = tm.model.cfg.vocab;
    let n_ctx = (a.pp.max(a.depth) + a.tg + 16).max(1024);
    let mut s = Session::new(&tm.model, SessionConfig::new(n_ctx, threads, 512))?;
    let reps = a.reps.max(1);
    let pp_ids = prompt(a.pp, vocab);
    let mut pp = Vec::new();
    for r in 0..=reps {
        s.reset();
        let t = Instant::now();
        s.eval(&pp_ids, Logits::Last)?;
        let v = a.pp as f64 / t.elapsed().as_secs_f64();
        if r > 0 {
            pp.push(v);
        }
    }
    let mut tg = Vec::new();
    for r in 0..=reps {
        s.reset();
        s.eval(&[504.min(vocab - 1) as u32], Logits::Last)?;
        let v = decode(&mut s, a.tg)?;
        if r > 0 {
            tg.push(v);
        }
    }
    let tg_deep = if a.depth > 0 {
        s.reset();
        s.eval(&prompt(a.depth, vocab), Logits::Last)?;
        let mut runs = Vec::new();
        for r in 0..=reps {
            s.truncate(a.depth)?;
            let v = decode(&mut s, a.tg)?;
            if r > 0 {
                runs.push(v);
            }
        }
        Some(Figure::of(runs))
    } else {
        None
    };
    let report = InferReport {
        model: file_name(&a.model),
        threads,
        pp512_tok_s: Figure::of(pp.clone()).median,
        tg128_tok_s: Figure::of(tg.clone()).median,
        tg128_d4096_tok_s: tg_deep.as_ref().map(|f| f.median),
        pp: Figure::of(pp),
        tg: Figure::of(tg),
        tg_deep,
        pp_tokens: a.pp,
        tg_tokens: a.tg,
        depth: a.depth,
        machine: MachineInfo::detect(),
    };
    if !a.no_save {
        let key = crate::tier::model_key(tm.model.digest);
        let rate = report.pp512_tok_s;
        let path = crate::tier::update(|t| {
            t.prefill_tok_s.insert(key, rate);
        })?;
        eprintln!("prefill rate saved to {}", path.display());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "model {}  threads {}  ({} reps, median [min–max])",
            report.model, threads, reps
        );
        let row = |name: String, f: &Figure| {
            println!(
                "{name:<16} {:>8.1} tok/s  [{:.1}–{:.1}]",
                f.median, f.min, f.max
            );
        };
        row(format!("pp{}", a.pp), &report.pp);
        row(format!("tg{}", a.tg), &report.tg);
        if let Some(f) = &report.tg_deep {
            row(format!("tg{} @ d{}", a.tg, a.depth), f);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_parse_in_order_without_repeats_and_refuse_unknown_names() {
        use membench::Op;
        assert_eq!(
            parse_ops("triad, copy,triad").unwrap(),
            vec![Op::Triad, Op::Copy]
        );
        assert_eq!(parse_ops("latency_huge").unwrap(), vec![Op::LatencyHuge]);
        let Err(CliError::Input(err)) = parse_ops("copy,memcpy") else {
            panic!("an unknown op is an input error");
        };
        let err = err.to_string();
        assert!(err.contains("memcpy") && err.contains("triad"), "{err}");
        assert!(matches!(parse_ops(" , "), Err(CliError::Input(_))));
    }
}
