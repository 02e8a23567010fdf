//! The llmem binary: wires the library crates into the `llmem` command line.

mod bench;
mod bench_batch;
mod bench_kv;
mod bench_quant;
mod catalog;
mod exit;
mod fit;
mod health;
mod kvdir;
mod limits;
mod list;
mod load;
mod machine;
mod malloc;
mod metrics_http;
mod monitor;
mod out;
mod plan;
mod pressure;
mod ps;
mod qa;
mod quantize;
mod read;
mod run;
mod serve;
mod threads;
mod tier;

use clap::{Parser, Subcommand};

/// llmem: run LLMs on one machine inside one memory budget.
#[derive(Parser)]
#[command(name = "llmem", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt.
    Run(run::RunArgs),
    /// What a model needs in this machine, whether it fits, and what would.
    Plan(plan::PlanArgs),
    /// Measure speed: `llmem bench infer`.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// One reading of memory, pressure and health, with what to change (--json for scripts).
    Health(health::HealthArgs),
    /// OpenAI-compatible HTTP server: chat, completions, streaming, /metrics, inside the budget.
    Serve(serve::ServeArgs),
    /// The models a running llmem serve has loaded: bytes, KV, requests, expiry.
    Ps(ps::PsArgs),
    /// Live memory view at 1 Hz; --once prints one snapshot; --prometheus serves /metrics.
    Monitor(monitor::MonitorArgs),
    /// Fetch a catalog model into the models folder and verify it; prints its path.
    Pull(catalog::PullArgs),
    /// The catalog's models and the models folder: size, architecture, tensor types,
    /// whether each is here and fits this machine (--json for scripts).
    List(list::ListArgs),
    /// Documents to question/answer pairs (JSONL): bounded memory, resumable, exactly once.
    Qa(qa::QaArgs),
    /// Convert a GGUF model to another weight type (q8_0, q4_k_m, …) with llama.cpp's
    /// per-tensor mix; the result loads in llmem and llama.cpp.
    Quantize(quantize::QuantizeArgs),
}

fn main() {
    malloc::tune();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let result = match cli.command {
        Command::Run(a) => run::run(&a),
        Command::Plan(a) => plan::run(&a),
        Command::Bench(b) => bench::run(&b),
        Command::Health(a) => health::run(&a),
        Command::Monitor(a) => monitor::run(&a),
        Command::Pull(a) => catalog::run_pull(&a),
        Command::List(a) => list::run(&a),
        Command::Serve(a) => serve::run(&a),
        Command::Quantize(a) => quantize::run(&a),
        Command::Ps(a) => ps::run(&a),
        Command::Qa(a) => match qa::run(&a) {
            // Ctrl+C: what was in flight is finished and written; 130 as shells expect.
            Ok(true) => std::process::exit(130),
            r => r.map(|_| ()),
        },
    };
    std::process::exit(exit::report(result));
}
