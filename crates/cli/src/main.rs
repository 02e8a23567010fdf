//! The llmem binary: wires the library crates into the `llmem` command line.

mod bench;
mod exit;
mod load;
mod machine;
mod run;

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
    /// Measure speed: `llmem bench infer`.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let result = match cli.command {
        Command::Run(a) => run::run(&a),
        Command::Bench(b) => bench::run(&b),
    };
    std::process::exit(exit::report(result));
}
