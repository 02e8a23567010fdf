//! `llmem bench batch`: throughput of many sequences decoded together, measured as
//! llama.cpp's `llama-batched-bench -npp P -ntg G -npl N,…` measures it.
//!
//! For each batch size N: N sequences, each with its own distinct P-token prompt, are
//! prefilled in one batch (all prompts' tokens together, in micro-batches), then G decode
//! steps run with all N sequences in one batch per step (feeding a fixed token, with
//! logits for every sequence, as the peer does). Reported: prefill tokens/s (N·P over the
//! prefill's time), summed decode tokens/s (N·G over the decode's time) and the most KV
//! bytes held; the median of `--reps` timed repetitions, after one untimed warm-up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use engine::batch::{Batch, BatchConfig, Engine};
use engine::forward::Logits;
use engine::model::Model;
use kvcache::KvType;
use kvcache::SeqId;
use serde::Serialize;

use crate::exit::{CliError, input};
use crate::limits;
use crate::machine::MachineInfo;

/// Most sequences one batch size may ask for.
const MAX_SEQS: usize = 4096;

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// A GGUF file, or a catalog model's name (`llmem list`) in the models folder.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub threads: crate::threads::ThreadsArgs,
    /// Batch sizes: how many sequences decode together, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8, 16, 32])]
    pub seqs: Vec<usize>,
    /// Prompt tokens per sequence (each sequence's prompt is its own).
    #[arg(long, default_value_t = 128)]
    pub prompt: usize,
    /// Decode steps (tokens generated per sequence).
    #[arg(long = "gen", default_value_t = 128)]
    pub gen_tokens: usize,
    /// Timed repetitions per batch size (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// KV cache type (see `llmem bench kv`).
    #[arg(long, default_value = "f16", value_parser = crate::plan::kv_type_parser())]
    pub kv_type: KvType,
    #[arg(long)]
    pub json: bool,
    /// Also report where the prefill's and a decode step's time goes (milliseconds by
    /// phase: projections, attention, norms, KV, output head, bookkeeping).
    #[arg(long)]
    pub phases: bool,
    #[command(flatten)]
    pub budget: crate::plan::BudgetArgs,
}

#[derive(Serialize)]
struct SizeReport {
    seqs: usize,
    /// Prefill tokens per second, all sequences' prompts together (median).
    pp_tok_s: f64,
    /// Decode tokens per second summed over the sequences (median).
    tg_tok_s: f64,
    /// Most KV bytes held at once.
    kv_bytes: u64,
    /// Prefill and decode tokens per CPU-second (all threads), where the OS tells.
    pp_tok_per_cpu_s: Option<f64>,
    tg_tok_per_cpu_s: Option<f64>,
    pp_runs: Vec<f64>,
    tg_runs: Vec<f64>,
    /// With `--phases`: milliseconds per decode step by phase, over all repetitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    decode_phases_ms: Option<BTreeMap<&'static str, f64>>,
    /// With `--phases`: milliseconds per prefill (all sequences' prompts) by phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    prefill_phases_ms: Option<BTreeMap<&'static str, f64>>,
}

#[derive(Serialize)]
struct BatchReport {
    model: String,
    threads: usize,
    prompt: usize,
    #[serde(rename = "gen")]
    gen_tokens: usize,
    reps: usize,
    kv_type: KvType,
    results: Vec<SizeReport>,
    machine: MachineInfo,
}

/// Sequence `seq`'s prompt: `n` token ids, different for every sequence (so nothing is
/// shared between them), sequence 0's being the one `bench infer` uses.
fn prompt_for(seq: usize, n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + seq * 104_729) % 40_000 + 100).min(vocab - 1) as u32)
        .collect()
}

/// CPU seconds this process has used (all threads, user and system), where the OS tells
/// (Linux: `/proc/self/stat`, 10 ms resolution). On a host shared with other work, tokens
/// per CPU-second move less than tokens per second.
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn median(runs: &[f64]) -> f64 {
    let mut s = runs.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// One repetition's figures.
struct Rep {
    pp_tok_s: f64,
    tg_tok_s: f64,
    /// CPU seconds of the prefill and of the decode, if known.
    pp_cpu_s: Option<f64>,
    tg_cpu_s: Option<f64>,
    /// Prefill and decode time by phase, where timed.
    phases: [Vec<(engine::phases::Phase, std::time::Duration)>; 2],
}

/// One repetition at `n` sequences.
fn once(
    e: &mut Engine<'_, '_>,
    n: usize,
    (prompt, n_gen): (usize, usize),
    phases: bool,
) -> Result<Rep, CliError> {
    let vocab = e.model().cfg.vocab;
    let seqs: Vec<SeqId> = (0..n).map(|_| e.seq_new()).collect();
    let mut batch = Batch::new();
    for (j, &s) in seqs.iter().enumerate() {
        batch.push_tokens(s, 0, &prompt_for(j, prompt, vocab), Logits::Last);
    }
    engine::phases::enable(phases);
    engine::phases::take();
    let (t, c0) = (Instant::now(), cpu_seconds());
    e.decode(&batch)?;
    let pp_phases = engine::phases::take();
    let pp = (n * prompt) as f64 / t.elapsed().as_secs_f64();
    let tok = 3575.min(vocab - 1) as u32;
    let (t, c1) = (Instant::now(), cpu_seconds());
    for step in 0..n_gen {
        batch.clear();
        for &s in &seqs {
            batch.push_tokens(s, prompt + step, &[tok], Logits::Last);
        }
        e.decode(&batch)?;
    }
    let tg = (n * n_gen) as f64 / t.elapsed().as_secs_f64();
    let c2 = cpu_seconds();
    let phases = [pp_phases, engine::phases::take()];
    engine::phases::enable(false);
    for s in seqs {
        e.seq_remove(s);
    }
    let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    Ok(Rep {
        pp_tok_s: pp,
        tg_tok_s: tg,
        pp_cpu_s: diff(c0, c1),
        tg_cpu_s: diff(c1, c2),
        phases,
    })
}

fn size(
    model: &Model<'_>,
    a: &BatchArgs,
    threads: usize,
    n: usize,
    accounts: &engine::memory::Accounts,
) -> Result<SizeReport, CliError> {
    let mix = a.kv_type.mix();
    let cfg = BatchConfig {
        kv_mix: mix,
        ..BatchConfig::new(a.prompt + a.gen_tokens, n, threads)
    };
    let mut e = Engine::with_accounts(model, cfg, accounts)?;
    let (mut pp_runs, mut tg_runs, mut pp_cpu, mut tg_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut phase_ms: [BTreeMap<&'static str, f64>; 2] = Default::default();
    for _ in 0..a.reps {
        let r = once(&mut e, n, (a.prompt, a.gen_tokens), a.phases)?;
        // Per prefill, per decode step.
        let per = [a.reps as f64, (a.gen_tokens * a.reps) as f64];
        for ((times, into), per) in r.phases.iter().zip(&mut phase_ms).zip(per) {
            for (p, d) in times {
                *into.entry(p.name()).or_default() += d.as_secs_f64() * 1e3 / per;
            }
        }
        pp_runs.push(r.pp_tok_s);
        tg_runs.push(r.tg_tok_s);
        pp_cpu.extend(r.pp_cpu_s.map(|c| (n * a.prompt) as f64 / c.max(0.01)));
        tg_cpu.extend(r.tg_cpu_s.map(|c| (n * a.gen_tokens) as f64 / c.max(0.01)));
    }
    Ok(SizeReport {
        seqs: n,
        pp_tok_s: median(&pp_runs),
        tg_tok_s: median(&tg_runs),
        kv_bytes: e.peak_kv_bytes(),
        pp_tok_per_cpu_s: (!pp_cpu.is_empty()).then(|| median(&pp_cpu)),
        tg_tok_per_cpu_s: (!tg_cpu.is_empty()).then(|| median(&tg_cpu)),
        pp_runs,
        tg_runs,
        decode_phases_ms: a.phases.then(|| phase_ms[1].clone()),
        prefill_phases_ms: a.phases.then(|| phase_ms[0].clone()),
    })
}

pub fn batch(a: &BatchArgs) -> Result<(), CliError> {
    if a.seqs.is_empty() {
        return Err(input(anyhow::anyhow!(
            "--seqs: give batch sizes from 1 to {MAX_SEQS}, e.g. 1,2,4,8"
        )));
    }
    for &n in &a.seqs {
        limits::count("--seqs", n, 1, MAX_SEQS)?;
    }
    limits::count("--prompt", a.prompt, 1, limits::MAX_CTX_TOKENS)?;
    limits::count("--gen", a.gen_tokens, 1, limits::MAX_CTX_TOKENS)?;
    limits::context_sum(
        "a sequence's context (--prompt + --gen)",
        &[a.prompt, a.gen_tokens],
    )?;
    limits::count("--reps", a.reps, 1, limits::MAX_REPS)?;
    let limit = crate::fit::Limit::of(&a.budget)?;
    let model = crate::catalog::resolve(&a.model)?;
    let file = crate::load::map(&model)?;
    let mut tm = crate::load::text_model(&model, &file)?;
    let threads = a.threads.resolve();
    // The largest batch size's plan, checked before anything is held; every size then
    // reserves its KV and scratch in the same ledger.
    let file_bytes = file.bytes().len() as u64;
    let most = a.seqs.iter().copied().max().unwrap_or(1);
    let facts =
        crate::plan::ModelFacts::new(tm.model.cfg.clone(), file_bytes, tm.tokenizer.table_bytes());
    let need =
        engine::memory::plan(&facts.input(a.prompt + a.gen_tokens, most, a.kv_type, threads))
            .total_bytes;
    limit.check("this bench", need, || {
        vec!["fewer --seqs, a shorter --prompt or --gen, or --kv-type int8".to_string()]
    })?;
    let accounts = limit.accounts()?;
    tm.account(&accounts, file_bytes)?;
    // Warm-up: page the weights in and settle the threads, untimed.
    let warm = BatchArgs {
        model: a.model.clone(),
        seqs: Vec::new(),
        gen_tokens: a.gen_tokens.min(8),
        reps: 1,
        kv_type: a.kv_type,
        threads: a.threads.clone(),
        budget: a.budget.clone(),
        ..*a
    };
    size(&tm.model, &warm, threads, a.seqs[0], &accounts)?;
    let mut results = Vec::new();
    for &n in &a.seqs {
        let r = size(&tm.model, a, threads, n, &accounts)?;
        if !a.json {
            eprintln!(
                "{n:>5} seqs: pp {:>8.1} tok/s  tg {:>8.1} tok/s  KV {:>8.1} MiB  \
                 (per CPU-second: pp {:.1}, tg {:.1})",
                r.pp_tok_s,
                r.tg_tok_s,
                r.kv_bytes as f64 / f64::from(1 << 20),
                r.pp_tok_per_cpu_s.unwrap_or(0.0),
                r.tg_tok_per_cpu_s.unwrap_or(0.0),
            );
            let timed = [
                ("prefill", &r.prefill_phases_ms),
                ("decode step", &r.decode_phases_ms),
            ];
            for (what, ph) in timed {
                let Some(ph) = ph else { continue };
                let total: f64 = ph.values().sum();
                let parts: Vec<String> = engine::phases::Phase::ALL
                    .iter()
                    .filter_map(|p| ph.get(p.name()).map(|ms| format!("{} {ms:.2}", p.name())))
                    .collect();
                eprintln!("             {what} {total:.2} ms: {}", parts.join(", "));
            }
        }
        results.push(r);
    }
    let report = BatchReport {
        model: crate::bench::file_name(&model),
        threads,
        prompt: a.prompt,
        gen_tokens: a.gen_tokens,
        reps: a.reps,
        kv_type: a.kv_type,
        results,
        machine: MachineInfo::detect(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "model {}  threads {}  prompt {}  gen {}  KV {}  ({} reps, median)",
            report.model, threads, a.prompt, a.gen_tokens, a.kv_type, report.reps
        );
        println!(
            "{:>6} {:>12} {:>12} {:>10}",
            "seqs", "pp tok/s", "tg tok/s", "KV MiB"
        );
        for r in &report.results {
            println!(
                "{:>6} {:>12.1} {:>12.1} {:>10.1}",
                r.seqs,
                r.pp_tok_s,
                r.tg_tok_s,
                r.kv_bytes as f64 / f64::from(1 << 20)
            );
        }
    }
    Ok(())
}
