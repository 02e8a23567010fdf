//! `llmem bench quant`: what each weight type costs and loses. The model is quantized to
//! each type (`llmem quantize`'s path), then every file is measured: its bytes, perplexity
//! on a text and the mean KL divergence of its next-token distributions against the
//! source model's, prefill and decode speed.
//!
//! Perplexity is `bench kv`'s method (llama-perplexity's): chunks of `--ctx` tokens, each
//! starting with BOS, the second half of each scored. The source is quantized from
//! whatever it is (requantized when it is itself quantized, with a warning).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use engine::forward::{Logits, Session, SessionConfig};
use quantize::{Requantize, Target};
use serde::Serialize;

use crate::exit::{CliError, input};
use crate::limits;
use crate::machine::MachineInfo;

#[derive(Args, Debug)]
pub struct QuantArgs {
    /// A GGUF file, or a catalog model's name (`llmem list`) in the models folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Text to score.
    #[arg(long)]
    pub text: PathBuf,
    /// Weight types to measure, comma-separated (`llmem quantize --type` names).
    #[arg(long, value_delimiter = ',',
          default_values_t = ["q8_0", "q4_0", "q4_k", "q5_k", "q6_k", "bf16", "f16"].map(String::from))]
    pub types: Vec<String>,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Chunks scored (0 = all the text holds).
    #[arg(long, default_value_t = 16)]
    pub chunks: usize,
    /// Tokens decoded for the decode speed.
    #[arg(long, default_value_t = 32)]
    pub tg: usize,
    /// Where the quantized files go (default: a folder under the models folder's tmp/,
    /// removed afterwards).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    #[command(flatten)]
    pub threads: crate::threads::ThreadsArgs,
    #[arg(long)]
    pub json: bool,
    /// The sessions are held to this budget (default: the machine's memory).
    #[command(flatten)]
    pub budget: crate::plan::BudgetArgs,
}

/// Most bytes of `--text` read.
const MAX_TEXT_BYTES: u64 = 16 << 20;

#[derive(Serialize)]
struct TypeReport {
    name: String,
    file_bytes: u64,
    bits_per_weight: f64,
    ppl: f64,
    ppl_change_pct: f64,
    kl_mean: f64,
    same_top_pct: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    quantize_s: f64,
}

#[derive(Serialize)]
struct QuantReport {
    model: String,
    text: String,
    ctx: usize,
    chunks: usize,
    scored_positions: usize,
    threads: usize,
    source: TypeReport,
    types: Vec<TypeReport>,
    machine: MachineInfo,
}

/// Removes the folder it names when dropped (the default `--out-dir`).
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn out_dir(a: &QuantArgs) -> Result<(PathBuf, TempDir), CliError> {
    match &a.out_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("cannot create --out-dir {}", d.display()))
                .map_err(input)?;
            Ok((d.clone(), TempDir(None)))
        }
        None => {
            let d = crate::catalog::models_dir()?
                .join("tmp")
                .join(format!("bench-quant-{}", std::process::id()));
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            Ok((d.clone(), TempDir(Some(d))))
        }
    }
}

fn read_text(path: &Path) -> Result<String, CliError> {
    let (bytes, _) = crate::read::read_capped(path, MAX_TEXT_BYTES)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(input)?;
    crate::read::utf8_prefix(bytes).map_err(|e| {
        input(anyhow::anyhow!(
            "--text {} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Prefill of `ctx - tg` tokens and decode of `tg` tokens after them, tokens/s.
fn speeds(s: &mut Session<'_, '_>, ctx: usize, tg: usize) -> Result<(f64, f64), CliError> {
    let vocab = s.model().cfg.vocab;
    let n = ctx - tg;
    s.reset();
    let t = Instant::now();
    s.eval(&crate::bench::prompt(n, vocab), Logits::Last)?;
    let pp = n as f64 / t.elapsed().as_secs_f64();
    let tg_rate = if tg > 0 {
        crate::bench::decode(s, tg)?
    } else {
        0.0
    };
    Ok((pp, tg_rate))
}

pub fn quant(a: &QuantArgs) -> Result<(), CliError> {
    if a.ctx < 32 || !a.ctx.is_multiple_of(16) {
        return Err(input(anyhow::anyhow!(
            "--ctx must be a multiple of 16, at least 32"
        )));
    }
    limits::context("--ctx", a.ctx)?;
    limits::count("--tg", a.tg, 0, a.ctx / 2)?;
    let targets: Vec<Target> = a
        .types
        .iter()
        .map(|t| crate::quantize::target(t))
        .collect::<Result<_, _>>()?;
    if targets.is_empty() {
        return Err(input(anyhow::anyhow!("--types names no type")));
    }
    let limit = crate::fit::Limit::of(&a.budget)?;
    let threads = a.threads.resolve();
    let model = crate::catalog::resolve(&a.model)?;
    let text = read_text(&a.text)?;
    let src_map = crate::load::map(&model)?;
    let (dir, _cleanup) = out_dir(a)?;
    let stem = model
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());

    // Quantize every type first, each conversion's scratch held in the ledger.
    let mut paths = Vec::new();
    let mut quantize_s = Vec::new();
    {
        let src = gguf::GgufFile::parse(src_map.bytes())
            .with_context(|| format!("{} is not a usable GGUF file", model.display()))
            .map_err(input)?;
        let accounts = limit.accounts()?;
        let mut warned = false;
        for &t in &targets {
            let plan = crate::quantize::plan(&model, &src, t, Requantize::Allow)?;
            if plan.requantized() > 0 && !warned {
                crate::out::warn(
                    "the source is quantized: every type is requantized from it (quality is \
                     lost twice; start from an F16/BF16/F32 file for llama.cpp-comparable \
                     figures)",
                );
                warned = true;
            }
            limit.check("this conversion", plan.scratch_bytes(threads), || {
                vec!["fewer --threads".to_string()]
            })?;
            let out = dir.join(format!("{stem}.{t}.gguf"));
            if !a.json {
                crate::out::note_partial(&format!("\rquantizing {t}   "));
            }
            let done = crate::quantize::convert(&src, &plan, &out, threads, &accounts, |_, _| {})?;
            quantize_s.push(done.seconds);
            paths.push(out);
        }
    }
    let maps: Vec<weights::MappedFile> = paths
        .iter()
        .map(|p| crate::load::map(p))
        .collect::<Result<_, _>>()?;
    let mut src_tm = crate::load::text_model(&model, &src_map)?;
    let mut tms: Vec<engine::text::TextModel<'_>> = paths
        .iter()
        .zip(&maps)
        .map(|(p, m)| crate::load::text_model(p, m))
        .collect::<Result<_, _>>()?;
    limits::warn_past_training(&format!("--ctx {}", a.ctx), a.ctx, &src_tm.model.cfg);

    // Everything held at once: each model with one session of --ctx, and a chunk's logits.
    let src_bytes = src_map.bytes().len() as u64;
    let plan_of = |tm: &engine::text::TextModel<'_>, bytes: u64| {
        crate::bench::session_plan(tm, bytes, a.ctx, threads).total_bytes
    };
    let row = src_tm.model.cfg.vocab as u64 * 4;
    let need = tms
        .iter()
        .zip(&maps)
        .map(|(tm, m)| plan_of(tm, m.bytes().len() as u64))
        .chain([
            plan_of(&src_tm, src_bytes),
            (a.ctx as u64).saturating_mul(2).saturating_mul(row),
            (text.len() as u64).saturating_mul(5),
        ])
        .fold(0u64, u64::saturating_add);
    limit.check("this bench", need, || {
        vec!["fewer --types, a smaller --ctx".to_string()]
    })?;
    let accounts = limit.accounts()?;
    src_tm.account(&accounts, src_bytes)?;
    for (tm, m) in tms.iter_mut().zip(&maps) {
        tm.account(&accounts, m.bytes().len() as u64)?;
    }

    let all = src_tm.encode(&text);
    let bos = all.first().copied().unwrap_or(0);
    let n_chunks = crate::bench_kv::chunk_count(all.len(), a.ctx, a.chunks)?;
    let cfg = SessionConfig::new(a.ctx, threads, 512);
    let mut base = Session::with_accounts(&src_tm.model, cfg, &accounts)?;
    let mut sessions: Vec<Session<'_, '_>> = tms
        .iter()
        .map(|tm| Session::with_accounts(&tm.model, cfg, &accounts))
        .collect::<Result<_, _>>()?;
    let first = a.ctx / 2;
    let n_scored = n_chunks * (a.ctx - first - 1);
    let k_types = targets.len();
    let mut nll = vec![0.0f64; k_types + 1];
    let mut kl = vec![0.0f64; k_types];
    let mut same_top = vec![0usize; k_types];
    let mut base_lp: Vec<Vec<f32>> = Vec::new();
    let mut lp = Vec::new();
    for c in 0..n_chunks {
        let mut toks = all[c * a.ctx..(c + 1) * a.ctx].to_vec();
        toks[0] = bos;
        base_lp.clear();
        crate::bench_kv::score_chunk(&mut base, &toks, first, a.ctx, |pos, row| {
            let mut v = Vec::new();
            crate::bench_kv::log_softmax(row, &mut v);
            nll[k_types] -= f64::from(v[toks[pos + 1] as usize]);
            base_lp.push(v);
        })?;
        for (k, s) in sessions.iter_mut().enumerate() {
            let mut i = 0;
            crate::bench_kv::score_chunk(s, &toks, first, a.ctx, |pos, row| {
                crate::bench_kv::log_softmax(row, &mut lp);
                let (nl, d, same) =
                    crate::bench_kv::compare(&base_lp[i], &lp, toks[pos + 1] as usize);
                nll[k] += nl;
                kl[k] += d;
                same_top[k] += usize::from(same);
                i += 1;
            })?;
        }
        if !a.json {
            crate::out::note_partial(&format!("\rchunk {}/{n_chunks}      ", c + 1));
        }
    }
    if !a.json {
        crate::out::note("");
    }
    let n_weights: u64 = {
        let g = gguf::GgufFile::parse(src_map.bytes()).map_err(input)?;
        g.tensors().iter().map(|t| t.n_elements()).sum()
    };
    let ppl_src = (nll[k_types] / n_scored as f64).exp();
    let report_of =
        |name: String, bytes: u64, k: Option<usize>, s: &mut Session<'_, '_>, q_s: f64| {
            let (pp, tg) = speeds(s, a.ctx, a.tg)?;
            let ppl = (nll[k.unwrap_or(k_types)] / n_scored as f64).exp();
            Ok::<_, CliError>(TypeReport {
                name,
                file_bytes: bytes,
                bits_per_weight: bytes as f64 * 8.0 / n_weights.max(1) as f64,
                ppl,
                ppl_change_pct: (ppl / ppl_src - 1.0) * 100.0,
                kl_mean: k.map_or(0.0, |k| kl[k] / n_scored as f64),
                same_top_pct: k.map_or(100.0, |k| same_top[k] as f64 * 100.0 / n_scored as f64),
                prefill_tok_s: pp,
                decode_tok_s: tg,
                quantize_s: q_s,
            })
        };
    let source = report_of("source".into(), src_bytes, None, &mut base, 0.0)?;
    let mut types = Vec::new();
    for (k, s) in sessions.iter_mut().enumerate() {
        let bytes = maps[k].bytes().len() as u64;
        types.push(report_of(
            targets[k].to_string(),
            bytes,
            Some(k),
            s,
            quantize_s[k],
        )?);
    }
    let report = QuantReport {
        model: crate::bench::file_name(&model),
        text: crate::bench::file_name(&a.text),
        ctx: a.ctx,
        chunks: n_chunks,
        scored_positions: n_scored,
        threads,
        source,
        types,
        machine: MachineInfo::detect(),
    };
    print(&report, a.json)
}

fn print(r: &QuantReport, json: bool) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{} on {}: ctx {}, {} chunks ({} positions scored), {} threads",
        r.model, r.text, r.ctx, r.chunks, r.scored_positions, r.threads
    )?;
    writeln!(
        out,
        "| type   |   MiB | bits/w |      ppl |  Δppl % | KL mean | same top % | prefill t/s | decode t/s |"
    )?;
    writeln!(
        out,
        "| ------ | ----: | -----: | -------: | ------: | ------: | ---------: | ----------: | ---------: |"
    )?;
    for t in std::iter::once(&r.source).chain(&r.types) {
        writeln!(
            out,
            "| {:<6} | {:>5.1} | {:>6.2} | {:>8.4} | {:>+7.2} | {:>7.4} | {:>10.1} | {:>11.1} | {:>10.1} |",
            t.name,
            t.file_bytes as f64 / (1 << 20) as f64,
            t.bits_per_weight,
            t.ppl,
            t.ppl_change_pct,
            t.kl_mean,
            t.same_top_pct,
            t.prefill_tok_s,
            t.decode_tok_s
        )?;
    }
    Ok(())
}
