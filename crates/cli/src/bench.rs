//! `llmem bench infer`: prefill and decode speed, measured like llama-bench.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use engine::forward::{Logits, Session, SessionConfig};
use serde::Serialize;

use crate::exit::{CliError, input};
use crate::limits;
use crate::machine::MachineInfo;

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
    /// Weight types: file bytes, perplexity and KL against the source model, prefill and
    /// decode speed, each type quantized from --model (as `llmem quantize`).
    Quant(crate::bench_quant::QuantArgs),
}

#[derive(Args, Debug)]
pub struct MemoryArgs {
    // The all-threads runs default to every CPU this process may use.
    #[command(flatten)]
    pub threads: crate::threads::ThreadsArgs,
    /// Working-set sizes, e.g. 4K,1M,1G (default: half of each cache level and one
    /// main-memory point, about a minute; --full for the whole sweep).
    #[arg(long)]
    pub sizes: Option<String>,
    /// Measure every power of two from 4 KiB to 32 times the last-level cache (and around
    /// each level) instead of the quick default points: many minutes on a large cache.
    #[arg(long, conflicts_with = "sizes")]
    pub full: bool,
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
    /// Working sets are held to this budget (default: the machine's memory): a larger
    /// --sizes is refused, larger default points are left out.
    #[command(flatten)]
    pub budget: crate::plan::BudgetArgs,
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

/// What the memory bench holds besides its working sets: the binary, its two pools'
/// threads and the report (4.7 MiB of RSS measured at a 16 KiB set), with room to spare.
const MEMORY_BENCH_OVERHEAD_BYTES: u64 = 6 << 20;

/// What measuring a working set of `size` bytes holds at its peak: the set, rounded to
/// the 2 MiB huge-page alignment its buffer takes, the latency chase's successor table (a
/// `u32` per 64-byte line, 1/16 of the set) and the bench's own overhead. Measured: a
/// 64 MiB set held 68.6 MiB for bandwidth, 72.6 MiB for latency.
fn memory_bench_need(size: u64) -> u64 {
    size.saturating_add(2 << 20)
        .saturating_add(size / 16)
        .saturating_add(MEMORY_BENCH_OVERHEAD_BYTES)
}

/// The largest working set whose [`memory_bench_need`] fits `usable` bytes.
fn largest_working_set(usable: u64) -> u64 {
    usable
        .saturating_sub(MEMORY_BENCH_OVERHEAD_BYTES + (2 << 20))
        .saturating_mul(16)
        / 17
}

/// Creates `path` now, so that a plot that cannot be written fails before the
/// measurement rather than after minutes of it.
fn plot_file(path: &std::path::Path) -> Result<std::fs::File, CliError> {
    std::fs::File::create(path)
        .with_context(|| format!("--plot: cannot create {}", path.display()))
        .map_err(input)
}

/// One stderr line per working-set size as its points are measured.
struct Progress {
    total: usize,
    done: usize,
    current: Option<(bool, u64)>,
    line: String,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            current: None,
            line: String::new(),
        }
    }

    fn push(&mut self, m: &membench::Measurement) {
        let key = (m.ns.is_some(), m.bytes);
        if self.current != Some(key) {
            self.flush();
            self.current = Some(key);
            let kind = if key.0 { "latency" } else { "bandwidth" };
            self.line = format!("{kind} {}:", membench::short_size(m.bytes));
        }
        if let Some(g) = &m.gb_s {
            let t = if m.threads == 1 { "1t" } else { "all" };
            self.line += &format!(" {} {t} {:.1} GB/s", m.op.name(), g.median);
        } else if let Some(ns) = &m.ns {
            self.line += &format!(" {} {:.1} ns", m.op.name(), ns.median);
        }
    }

    fn flush(&mut self) {
        if self.current.is_some() {
            self.done += 1;
            crate::out::note(&format!("[{}/{}] {}", self.done, self.total, self.line));
        }
    }
}

fn memory(a: &MemoryArgs) -> Result<(), CliError> {
    limits::count("--reps", a.reps, 1, limits::MAX_REPS)?;
    let plot = a.plot.as_deref().map(plot_file).transpose()?;
    let limit = crate::fit::Limit::of(&a.budget)?;
    let mut config = membench::Config {
        threads: a.threads.requested(),
        reps: a.reps,
        huge_pages: cfg!(target_os = "linux") && !a.base_pages,
        sweep: if a.full {
            membench::Sweep::Full
        } else {
            membench::Sweep::Quick
        },
        ..membench::Config::default()
    };
    if let Some(list) = &a.ops {
        config.ops = parse_ops(list)?;
    }
    let caches = cache_levels();
    let largest_fit = largest_working_set(limit.usable_bytes);
    config.max_bytes = Some(largest_fit);
    if let Some(s) = &a.sizes {
        let sizes = membench::parse_sizes(s).map_err(|e| input(anyhow::anyhow!("--sizes: {e}")))?;
        let largest = sizes.iter().copied().max().unwrap_or(0);
        limit.check(
            "a working set of --sizes",
            memory_bench_need(largest),
            || vec![format!("sizes up to {}", budget::Bytes(largest_fit))],
        )?;
        config.sizes = Some(sizes);
    }
    let has = |latency: bool| config.ops.iter().any(|o| o.is_bandwidth() != latency);
    let mut points = 0;
    for (latency, sizes) in [
        (false, config.bandwidth_sizes(&caches)),
        (true, config.latency_sizes(&caches)),
    ] {
        if has(latency) {
            if sizes.is_empty() {
                return Err(input(anyhow::anyhow!(
                    "the {} ({}) holds none of the default working sets; give --sizes",
                    limit.source,
                    budget::Bytes(limit.usable_bytes)
                )));
            }
            points += sizes.len();
        }
    }
    let mut progress = Progress::new(points);
    let report =
        membench::run_with(&config, &caches, |m| progress.push(m)).map_err(|e| match e {
            membench::BenchError::InvalidConfig { .. } => input(e),
            other => CliError::Runtime(other.into()),
        })?;
    progress.flush();
    if let (Some(mut file), Some(path)) = (plot, &a.plot) {
        file.write_all(report.to_svg().as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.json {
        writeln!(out, "{}", report.to_json())?;
    } else {
        write!(out, "{}", report.to_table())?;
    }
    out.flush()?;
    let disk = if a.disk {
        let cfg = membench::DiskConfig::in_cache_dir()
            .map_err(|e| CliError::Runtime(anyhow::anyhow!("disk tier: {e}")))?;
        let d = membench::measure_disk(&cfg)
            .map_err(|e| CliError::Runtime(anyhow::anyhow!("disk tier: {e}")))?;
        crate::out::note(&format!(
            "disk tier: write+fsync {:.2} GB/s, read {:.2} GB/s (median; page cache dropped: {})",
            d.write_fsync_gb_s.median, d.read_gb_s.median, d.cache_dropped
        ));
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
        crate::out::note(&format!("tier rates saved to {}", path.display()));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct InferArgs {
    /// A GGUF file, or a catalog model's name (`llmem list`) in the models folder.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub threads: crate::threads::ThreadsArgs,
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
    /// The session is held to this budget (default: the machine's memory); a bench that
    /// needs more is refused before it starts.
    #[command(flatten)]
    pub budget: crate::plan::BudgetArgs,
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
        BenchCommand::Quant(a) => crate::bench_quant::quant(a),
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

/// The context a bench session needs for `tokens` (a prompt, or a depth and the tokens
/// decoded after it): the tokens plus one block, and at least 1024, checked against
/// [`limits::MAX_CTX_TOKENS`] without wrapping.
fn bench_ctx(what: &str, tokens: &[usize]) -> Result<usize, CliError> {
    let n_ctx = limits::context_sum(what, &[tokens, &[16]].concat())?;
    Ok(n_ctx.max(1024))
}

/// What one f16 session of `n_ctx` tokens on `tm` needs (`llmem plan`'s figures).
pub(crate) fn session_plan(
    tm: &engine::text::TextModel<'_>,
    file_bytes: u64,
    n_ctx: usize,
    threads: usize,
) -> engine::memory::Plan {
    let facts =
        crate::plan::ModelFacts::new(tm.model.cfg.clone(), file_bytes, tm.tokenizer.table_bytes());
    engine::memory::plan(&facts.input(n_ctx, 1, crate::plan::KvType::F16, threads))
}

/// Refuses a bench that needs more than `need_bytes` allow under `limit`, before it
/// holds anything, and returns the ledger its sessions reserve in (the weights accounted
/// in it when a budget was given).
pub(crate) fn bench_accounts(
    tm: &mut engine::text::TextModel<'_>,
    file_bytes: u64,
    need_bytes: u64,
    limit: &crate::fit::Limit,
) -> Result<engine::memory::Accounts, CliError> {
    limit.check("this bench", need_bytes, || {
        vec!["a smaller --pp, --depth, --tg or --ctx".to_string()]
    })?;
    let accounts = limit.accounts()?;
    tm.account(&accounts, file_bytes)?;
    Ok(accounts)
}

fn infer(a: &InferArgs) -> Result<(), CliError> {
    limits::count("--pp", a.pp, 1, limits::MAX_CTX_TOKENS)?;
    limits::count("--tg", a.tg, 1, limits::MAX_CTX_TOKENS)?;
    limits::count("--reps", a.reps, 1, limits::MAX_REPS)?;
    let what = "the bench's context (--pp or --depth, plus --tg)";
    let n_ctx = bench_ctx(what, &[a.pp.max(a.depth), a.tg])?;
    let limit = crate::fit::Limit::of(&a.budget)?;
    let model = crate::catalog::resolve(&a.model)?;
    let file = crate::load::map(&model)?;
    let mut tm = crate::load::text_model(&model, &file)?;
    let deepest = a.pp.max(a.depth + a.tg);
    let what = format!("a bench context of {deepest} tokens (--pp, or --depth + --tg)");
    limits::warn_past_training(&what, deepest, &tm.model.cfg);
    let threads = a.threads.resolve();
    let vocab = tm.model.cfg.vocab;
    let file_bytes = file.bytes().len() as u64;
    let need = session_plan(&tm, file_bytes, n_ctx, threads).total_bytes;
    let accounts = bench_accounts(&mut tm, file_bytes, need, &limit)?;
    let cfg = SessionConfig::new(n_ctx, threads, 512);
    let mut s = Session::with_accounts(&tm.model, cfg, &accounts)?;
    let reps = a.reps;
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
        model: file_name(&model),
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
        crate::out::note(&format!("prefill rate saved to {}", path.display()));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "model {}  threads {}  ({} reps, median [min–max])",
            report.model, threads, reps
        )?;
        let mut row = |name: String, f: &Figure| {
            writeln!(
                out,
                "{name:<16} {:>8.1} tok/s  [{:.1}–{:.1}]",
                f.median, f.min, f.max
            )
        };
        row(format!("pp{}", a.pp), &report.pp)?;
        row(format!("tg{}", a.tg), &report.tg)?;
        if let Some(f) = &report.tg_deep {
            row(format!("tg{} @ d{}", a.tg, a.depth), f)?;
        }
    }
    out.flush()?;
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
