//! `llmem qa`: a corpus of documents to question/answer pairs (JSONL), in bounded memory,
//! resumable: run it again with the same arguments after a crash or Ctrl+C and it goes on
//! where it stopped, with no record lost and none written twice.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use budget::{BudgetBuilder, Bytes, Policy};
use clap::{Args, ValueEnum};
use engine::batch::BatchConfig;
use engine::memory::Accounts;
use engine::sched::SchedConfig;
use engine::sched::service::Service;
use engine::shared::SharedModel;
use ingest::chunk::ChunkConfig;
use ingest::prompts::Prompts;
use ingest::record::Format;
use ingest::source::{Filter, Input};

use crate::exit::{CliError, input};
use crate::plan::KvType;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Messages,
    Alpaca,
    Sharegpt,
    Raw,
}

#[derive(Args, Debug)]
pub struct QaArgs {
    /// Files, folders (read recursively) or `-` (JSONL on stdin, a `text` field per line).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// The output JSONL (appended; its journal is OUT.journal).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub questions_per_chunk: u32,
    /// Chunk size in the model's tokens.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..=8192))]
    pub chunk_tokens: u32,
    /// Tokens each chunk repeats from the one before (at most half a chunk).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub overlap: u32,
    #[arg(long, value_enum, default_value = "messages")]
    pub format: FormatArg,
    /// Pairs the judge scores below this (1-10) are dropped.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub judge_threshold: u32,
    /// Pairs whose answer has less than this share of its words in runs of three found
    /// word for word in its chunk (0-1) are dropped: what a small judge passes wrongly.
    /// 0 keeps them all.
    #[arg(long, default_value_t = 0.65, value_parser = parse_share)]
    pub min_grounding: f32,
    /// Prompts ([question] and [judge] sections); the built-in ones otherwise.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sampling temperature of the questions and answers (judging is greedy). The default
    /// 0 is greedy, the most faithful to the chunk; each of a chunk's questions is sent to
    /// its own passage, so they differ without sampling.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Take only the corpus's first N chunks.
    #[arg(long)]
    pub max_chunks: Option<u64>,
    /// Chunk, hash and journal only (one chunk record per chunk).
    #[arg(long)]
    pub no_generate: bool,
    /// Chunks generating at once, counted by the requests they have left: a chunk down to
    /// its last judges makes room for the next (up to twice as many chunks). 1: strictly
    /// one at a time. Default: twice the threads, from 8 to 32 (on 16 cores, 32 chunks
    /// made 3.1-3.2× the pairs a minute of one at a time, 24 2.7-2.9×; on 2 cores more
    /// than 8 gains nothing).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_in_flight: Option<u32>,
    /// Most requests the engine computes side by side (default: every question of the
    /// chunks in flight). 1 computes one request at a time, with no batching at all;
    /// the others wait, their chunks' KV kept.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_sequences: Option<u32>,
    /// Most bytes of document buffers (chunks in flight): reading pauses when they are full.
    #[arg(long, default_value = "16MiB")]
    pub documents: String,
    /// Files in folders to take (globs: `*`, `?`, `**`; on the name, or the path below
    /// the folder when the glob has a `/`).
    #[arg(long)]
    pub include: Vec<String>,
    #[arg(long)]
    pub exclude: Vec<String>,
    /// The report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Time the engine's steps by phase (norms, products, attention, head, …), by step
    /// width, into the JSON report's `steps_by_tokens`.
    #[arg(long)]
    pub phases: bool,
    /// The report as JSON into this file too.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Dropped pairs (JSONL: pair, provenance, judge score, why dropped) appended here.
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,
    #[command(flatten)]
    pub threads: crate::threads::ThreadsArgs,
    #[command(flatten)]
    pub budget: crate::plan::BudgetArgs,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // A second Ctrl+C: stop now (the journal keeps what was committed).
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

fn catch_sigint() {
    let handler = on_sigint as extern "C" fn(libc::c_int);
    // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

/// Runs `llmem qa`; `Ok(true)` when Ctrl+C ended it (after finishing what was in flight).
pub fn run(a: &QaArgs) -> Result<bool, CliError> {
    // First: a Ctrl+C while the model loads ends the run as cleanly as one later on.
    catch_sigint();
    let docs_limit: Bytes = a
        .documents
        .parse()
        .map_err(|e| input(anyhow::anyhow!("--documents {}: {e}", a.documents)))?;
    if docs_limit < Bytes::mib(1) {
        return Err(input(anyhow::anyhow!(
            "--documents must be at least 1MiB (the reader's own buffers need 768KiB)"
        )));
    }
    if a.overlap * 2 > a.chunk_tokens {
        return Err(input(anyhow::anyhow!(
            "--overlap {} is more than half of --chunk-tokens {}",
            a.overlap,
            a.chunk_tokens
        )));
    }
    let prompts = match &a.prompt_file {
        None => Prompts::default_prompts(),
        Some(f) => {
            let (bytes, rest) = crate::read::read_capped(f, 1 << 20)
                .map_err(|e| input(anyhow::anyhow!("--prompt-file {}: {e}", f.display())))?;
            if rest == crate::read::Rest::More {
                return Err(input(anyhow::anyhow!("--prompt-file is over 1MiB")));
            }
            let text = String::from_utf8(bytes)
                .map_err(|_| input(anyhow::anyhow!("--prompt-file is not UTF-8")))?;
            Prompts::parse(&text).map_err(input)?
        }
    };
    let mut inputs = Vec::new();
    for i in &a.inputs {
        if i == "-" {
            inputs.push(Input::Stdin);
        } else {
            let p = PathBuf::from(i);
            if !p.exists() {
                crate::out::warn(&format!("skipped {i}: no such file or folder"));
                continue;
            }
            inputs.push(Input::Path(p));
        }
    }
    let limit = crate::fit::Limit::of(&a.budget)?;
    if !a.model.exists() {
        return Err(input(anyhow::anyhow!(
            "model file {} does not exist",
            a.model.display()
        )));
    }
    let threads = a.threads.resolve();
    let in_flight = a
        .max_in_flight
        .map_or_else(|| default_in_flight(threads), |n| n as usize);
    let running = in_flight * a.questions_per_chunk as usize;
    let n_ctx = ingest::needed_ctx(a.chunk_tokens as usize);
    // The process's own memory outside the ledger (code, thread stacks and arenas, page
    // rounding) comes off the top: the ledger's pools and it together stay within the
    // limit, so the run's RSS does, not its ledger alone. With the whole budget in the
    // ledger a run under `--budget 150MiB` peaked at 163 MiB.
    let facts = crate::plan::facts(&a.model)?;
    let runtime = engine::memory::runtime_bytes(&facts.input(n_ctx, running, KvType::F16, threads));
    if !a.no_generate {
        // The least that must fit: the weights, the scratch and one sequence of a chunk in
        // the ledger, beside the process's own memory for every sequence asked for.
        let least = engine::memory::plan(&facts.input(n_ctx, 1, KvType::F16, threads));
        let need = (least.total_bytes.saturating_sub(least.runtime_bytes)).saturating_add(runtime);
        limit.check("generating", need, || {
            vec![format!(
                "--budget {} (the weights, the scratch and one of a chunk's sequences), or \
                 fewer --max-in-flight",
                Bytes(need)
            )]
        })?;
    }
    let budget = match limit
        .profile
        .as_ref()
        .filter(|p| p.pools().iter().any(|s| s.name().as_str() == "documents"))
    {
        Some(p) => p.to_budget(),
        None => BudgetBuilder::new(Bytes(limit.total_bytes.saturating_sub(runtime)))
            .pool("weights", Policy::Persistent, Bytes::ZERO)
            .pool("kv", Policy::Tiered, Bytes::ZERO)
            .pool("scratch", Policy::Circular, Bytes::ZERO)
            .pool("documents", Policy::ContentHash, docs_limit)
            .build()
            .map_err(|e| input(anyhow::anyhow!("--documents {}: {e}", a.documents)))?,
    };
    let accounts = Accounts::of(&budget).map_err(input)?;
    let docs_id = budget.pool_id("documents").expect("checked above");
    let docs_pool_limit = budget
        .pools()
        .find(|(id, _)| *id == docs_id)
        .map(|(_, s)| s.limit())
        .unwrap_or(docs_limit);
    let docs = ingest::DocPool::new(
        budget.clone(),
        docs_id,
        docs_limit.min(docs_pool_limit).max(Bytes::mib(1)),
    );
    let model = SharedModel::load(&a.model, &accounts).map_err(input)?;
    let tok = &model.text().tokenizer;
    let opts = ingest::Options {
        inputs,
        filter: Filter {
            include: a.include.clone(),
            exclude: a.exclude.clone(),
        },
        out: a.out.clone(),
        chunk: ChunkConfig {
            chunk_tokens: a.chunk_tokens as usize,
            overlap: a.overlap as usize,
        },
        questions_per_chunk: a.questions_per_chunk as usize,
        format: match a.format {
            FormatArg::Messages => Format::Messages,
            FormatArg::Alpaca => Format::Alpaca,
            FormatArg::Sharegpt => Format::Sharegpt,
            FormatArg::Raw => Format::Raw,
        },
        judge_threshold: a.judge_threshold,
        min_grounding: a.min_grounding,
        prompts,
        seed: a.seed,
        max_chunks: a.max_chunks,
        model_digest: model.text().model.digest,
        rejects: a.rejects.clone(),
    };
    let generator = if a.no_generate {
        None
    } else {
        let block = engine::forward::BLOCK_TOKENS;
        // Room for every running request at a typical length; longer ones are handled by
        // the scheduler's pressure ladder.
        let typical = (a.chunk_tokens as usize + 1024).min(n_ctx);
        let batch = BatchConfig {
            kv_blocks: Some(running * typical.div_ceil(block)),
            ..BatchConfig::new(n_ctx, running, threads)
        };
        let sched = SchedConfig {
            max_running: a.max_sequences.map_or(running, |n| n as usize),
            time_phases: a.phases,
            ..SchedConfig::default()
        };
        let service = Service::start(model.clone(), batch, sched, accounts.clone())
            .map_err(|e| CliError::Runtime(anyhow::anyhow!("cannot start the engine: {e}")))?;
        Some(ingest::Generator {
            service: Arc::new(service),
            model: model.clone(),
            max_in_flight: in_flight,
            temperature: a.temperature,
        })
    };
    let mut log = |s: &str| crate::out::note(&format!("llmem qa: {s}"));
    let report = ingest::run(&opts, tok, &docs, generator.as_ref(), &STOP, &mut log).map_err(
        |e| match e {
            ingest::RunError::Journal(ingest::journal::JournalError::OutputShort { .. }) => {
                input(e)
            }
            e => CliError::Runtime(e.into()),
        },
    )?;
    let snap = budget.snapshot();
    let docs_peak = snap
        .pools
        .iter()
        .find(|p| p.name.as_str() == "documents")
        .map_or(0, |p| p.peak.0);
    // This process's own high-water mark (a parent's RSS does not count in it, as it does
    // in the rusage a parent reads after a vfork-and-exec spawn).
    let peak_rss = crate::machine::peak_rss_bytes();
    let sched_stats = generator.as_ref().map(|g| g.service.snapshot().stats);
    drop(generator);
    let mut stdout = std::io::stdout().lock();
    if a.json || a.report.is_some() {
        let v = serde_json::json!({
            "report": report,
            "documents_limit_bytes": docs.limit(),
            "documents_peak_bytes": docs_peak,
            "peak_rss_bytes": peak_rss,
            "ledger_peaks": snap
                .pools
                .iter()
                .map(|p| serde_json::json!({
                    "pool": p.name.as_str(),
                    "peak_bytes": p.peak.0,
                    "limit_bytes": p.limit.0,
                }))
                .collect::<Vec<_>>(),
            "scheduler": sched_stats.map(|s| serde_json::json!({
                "prompt_tokens": s.prompt_tokens,
                "cached_tokens": s.cached_tokens,
                "computed_tokens": s.computed_tokens,
                "generated_tokens": s.generated_tokens,
                "peak_running": s.peak_running,
                "preemptions": s.preemptions,
                "kept_dropped": s.kept_dropped,
                "steps": s.steps,
                "tokens_per_step": (s.computed_tokens + s.generated_tokens) as f64
                    / s.steps.max(1) as f64,
                "steps_by_tokens": engine::sched::STEP_CLASSES
                    .iter()
                    .enumerate()
                    .map(|(c, lo)| {
                        let mut j = serde_json::json!({
                            "min_tokens": lo,
                            "steps": s.steps_by_tokens[c],
                            "seconds": s.step_us_by_tokens[c] as f64 / 1e6,
                            "after_seconds": s.after_us_by_tokens[c] as f64 / 1e6,
                        });
                        if a.phases {
                            j["phases_ms"] = engine::phases::Phase::ALL
                                .iter()
                                .map(|&p| {
                                    let us = s.phase_us_by_tokens[c][p as usize];
                                    (p.name().to_string(), serde_json::json!(us as f64 / 1e3))
                                })
                                .collect::<serde_json::Map<_, _>>()
                                .into();
                        }
                        j
                    })
                    .collect::<Vec<_>>(),
            })),
        });
        if let Some(f) = &a.report {
            std::fs::write(f, format!("{v}\n"))
                .map_err(|e| input(anyhow::anyhow!("--report {}: {e}", f.display())))?;
        }
        if a.json {
            writeln!(stdout, "{v}")?;
        }
    }
    if !a.json {
        let judged = report.pairs_generated - report.pairs_invalid;
        writeln!(
            stdout,
            "{} files, {} chunks ({} done before), {} records written to {}",
            report.files,
            report.chunks,
            report.chunks_skipped,
            report.records,
            a.out.display()
        )?;
        if !a.no_generate {
            let minutes = report.elapsed_s / 60.0;
            writeln!(
                stdout,
                "{} pairs generated, {} invalid, {} below the judge threshold, {} not grounded \
                 in their chunk, {} restating the question, {} near-duplicates; {:.1} pairs/min; \
                 {} of {} prompt tokens reused from chunk prefixes",
                report.pairs_generated,
                report.pairs_invalid,
                report.dropped_judge,
                report.dropped_ungrounded,
                report.dropped_trivial,
                report.dropped_duplicate,
                report.records as f64 / minutes.max(1e-9),
                report.cached_tokens,
                report.prompt_tokens,
            )?;
            if judged > 0 {
                writeln!(
                    stdout,
                    "judge: mean score {:.2}, pass rate {:.0}%",
                    report.score_sum as f64 / judged as f64,
                    100.0 * (judged - report.dropped_judge) as f64 / judged as f64
                )?;
            }
        }
        writeln!(
            stdout,
            "documents pool: peak {} of {}",
            Bytes(docs_peak),
            Bytes(docs.limit())
        )?;
        let pools: Vec<String> = snap
            .pools
            .iter()
            .filter(|p| p.peak.0 > 0)
            .map(|p| format!("{} {}", p.name.as_str(), Bytes(p.peak.0)))
            .collect();
        writeln!(
            stdout,
            "peak RSS {}; ledger peaks: {}",
            peak_rss.map_or_else(|| "unknown".to_string(), |b| Bytes(b).to_string()),
            if pools.is_empty() {
                "none".to_string()
            } else {
                pools.join(", ")
            }
        )?;
        for (p, why) in &report.problems {
            writeln!(stdout, "skipped {p}: {why}")?;
        }
    }
    if report.interrupted {
        crate::out::note(
            "llmem qa: interrupted; what was finished is written and journaled: run the same \
             command again to go on",
        );
    }
    Ok(report.interrupted)
}

/// Chunks in flight when `--max-in-flight` is not given: twice the threads, from 8 to 32.
/// A prompt token costs the same at any width, so width pays only where the threads
/// would otherwise wait on narrow decode steps: many threads, not two.
fn default_in_flight(threads: usize) -> usize {
    (2 * threads).clamp(8, 32)
}

/// A share from 0 to 1 (`--min-grounding`).
fn parse_share(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|e| format!("{s}: {e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s}: must be from 0 to 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::default_in_flight;

    #[test]
    fn chunks_in_flight_default_to_twice_the_threads_from_8_to_32() {
        let got: Vec<usize> = [1, 2, 4, 5, 8, 16, 64].map(default_in_flight).to_vec();
        assert_eq!(got, [8, 8, 8, 10, 16, 32, 32]);
    }
}
