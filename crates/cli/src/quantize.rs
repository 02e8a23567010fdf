//! `llmem quantize IN OUT --type T`: a GGUF model converted to another weight type with
//! llama.cpp's per-tensor mix (the `quantize` crate decides and encodes; this wires the
//! files, the budget and the messages).
//!
//! The new file is written as `OUT.tmp` and renamed to `OUT` once complete and synced, so
//! a failure or a kill never leaves a partial file under `OUT`.

use std::fs::File;
use std::io::{BufWriter, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use quantize::{Plan, QuantizeError, Requantize, Target};

use crate::exit::{CliError, input};

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The GGUF model to convert (F32, F16 or BF16; a quantized one with
    /// --allow-requantize), or a catalog model's name.
    pub input: PathBuf,
    /// The file to write (refused if it is the input).
    pub output: PathBuf,
    /// The new type: q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, q4_k_m, q5_k_m, bf16 or f16 (q4_k
    /// and q5_k are llama.cpp's Q4_K_S and Q5_K_S mixes).
    #[arg(long = "type", value_name = "TYPE")]
    pub target: String,
    /// Convert tensors that are already quantized (dequantized, then quantized again:
    /// quality is lost twice).
    #[arg(long)]
    pub allow_requantize: bool,
    #[command(flatten)]
    pub threads: crate::threads::ThreadsArgs,
    /// The conversion's scratch is held to this budget (default: the machine's memory).
    #[command(flatten)]
    pub budget: crate::plan::BudgetArgs,
}

/// What one conversion did.
pub struct Converted {
    pub tensors: usize,
    pub converted: usize,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub seconds: f64,
}

/// The target a `--type` names (exit 2 for an unknown one).
pub fn target(name: &str) -> Result<Target, CliError> {
    name.trim().parse::<Target>().map_err(input)
}

/// `OUT` with `.tmp` appended to its file name.
pub fn tmp_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    out.with_file_name(name)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Plans the conversion of `file` (mapped from `in_path`), refusing what cannot be done.
pub fn plan(
    in_path: &Path,
    file: &gguf::GgufFile<'_>,
    target: Target,
    requantize: Requantize,
) -> Result<Plan, CliError> {
    quantize::plan(file, target, requantize)
        .with_context(|| format!("cannot quantize {}", in_path.display()))
        .map_err(input)
}

/// Writes `plan` of `file` to `out` through `out.tmp`, holding its scratch in `accounts`.
pub fn convert(
    file: &gguf::GgufFile<'_>,
    plan: &Plan,
    out: &Path,
    threads: usize,
    accounts: &engine::memory::Accounts,
    mut progress: impl FnMut(usize, usize),
) -> Result<Converted, CliError> {
    let scratch = plan.scratch_bytes(threads);
    let _held = accounts
        .reserve(accounts.scratch, scratch)
        .context("the conversion's scratch does not fit the budget")?;
    let tmp = tmp_path(out);
    let t0 = Instant::now();
    let written = (|| -> Result<u64, CliError> {
        let f = File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))
            .map_err(input)?;
        let w = quantize::write(
            file,
            plan,
            BufWriter::with_capacity(1 << 20, f),
            threads,
            &mut progress,
        )
        .map_err(|e| write_error(e, &tmp, plan))?;
        let f = w
            .into_inner()
            .map_err(|e| write_error(QuantizeError::Write(e.into_error().into()), &tmp, plan))?;
        f.sync_all()
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
        Ok(f.metadata()?.len())
    })();
    let out_bytes = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))?;
    Ok(Converted {
        tensors: plan.steps.len(),
        converted: plan.steps.iter().filter(|s| s.converts()).count(),
        in_bytes: file.bytes().len() as u64,
        out_bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A write failure, with a full disk said in so many words.
fn write_error(e: QuantizeError, tmp: &Path, plan: &Plan) -> CliError {
    let full = match &e {
        QuantizeError::Write(gguf::WriteError::Io(io)) => {
            io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
        }
        _ => false,
    };
    if full {
        return CliError::Runtime(anyhow::anyhow!(
            "the disk is full: writing {} needs about {} MiB (removed the partial file)",
            tmp.display(),
            plan.tensor_bytes().div_ceil(1 << 20)
        ));
    }
    CliError::Runtime(anyhow::Error::new(e).context(format!("cannot write {}", tmp.display())))
}

/// `llmem quantize`.
pub fn run(a: &QuantizeArgs) -> Result<(), CliError> {
    let target = target(&a.target)?;
    let in_path = crate::catalog::resolve(&a.input)?;
    if a.output.is_dir() {
        return Err(input(anyhow::anyhow!(
            "output {} is a directory; give a file name",
            a.output.display()
        )));
    }
    if same_file(&in_path, &a.output) {
        return Err(input(anyhow::anyhow!(
            "output {} is the input file; write to another path",
            a.output.display()
        )));
    }
    let requantize = if a.allow_requantize {
        Requantize::Allow
    } else {
        Requantize::Refuse
    };
    let threads = a.threads.resolve();
    let limit = crate::fit::Limit::of(&a.budget)?;
    let mapped = crate::load::map(&in_path)?;
    let file = gguf::GgufFile::parse(mapped.bytes())
        .with_context(|| format!("{} is not a usable GGUF file", in_path.display()))
        .map_err(input)?;
    let plan = plan(&in_path, &file, target, requantize)?;
    if plan.requantized() > 0 {
        crate::out::warn(&format!(
            "requantizing {} already-quantized tensors to {target}: quality is lost twice \
             (start from an F16/BF16/F32 file where you can)",
            plan.requantized()
        ));
    }
    limit.check("this conversion", plan.scratch_bytes(threads), || {
        vec!["fewer --threads".to_string()]
    })?;
    let accounts = limit.accounts()?;
    let tty = std::io::stderr().is_terminal();
    let done = convert(&file, &plan, &a.output, threads, &accounts, |d, t| {
        if tty {
            crate::out::note_partial(&format!("\rtensor {d}/{t}"));
        }
    })?;
    if tty {
        crate::out::note("");
    }
    let mut counts: Vec<(gguf::GgmlType, usize)> = Vec::new();
    for s in &plan.steps {
        match counts.iter_mut().find(|(t, _)| *t == s.to) {
            Some((_, n)) => *n += 1,
            None => counts.push((s.to, 1)),
        }
    }
    let types: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!(
        "wrote {} ({target}): {} tensors ({}; {} converted), {:.1} MiB -> {:.1} MiB in {:.1} s",
        a.output.display(),
        done.tensors,
        types.join(", "),
        done.converted,
        done.in_bytes as f64 / (1 << 20) as f64,
        done.out_bytes as f64 / (1 << 20) as f64,
        done.seconds
    );
    Ok(())
}
