//! `llmem bench kv`: what each KV cache type costs (bytes per token), what it loses
//! (perplexity, KL divergence of next-token distributions against the all-f16 cache) and
//! how fast decode runs over it at depth; plus the cold codecs' throughput on real blocks.
//!
//! Method (as llama-perplexity's, so figures compare with llama.cpp's): the text is cut
//! into chunks of `--ctx` tokens, each starting with BOS; the second half of each chunk is
//! scored. Tokens are fed in steps of one block (16), so every query reads the earlier
//! blocks in the format under test (a quantized cache is read as it is written; only the
//! block being filled is still f16).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use engine::forward::{Logits, Session, SessionConfig};
use kvcache::KvType;
use kvcache::{Compression, KvFormat, TierMix};
use serde::Serialize;

use crate::exit::{CliError, input};
use crate::limits;
use crate::machine::MachineInfo;

#[derive(Args, Debug)]
pub struct KvArgs {
    /// A GGUF file, or a catalog model's name (`llmem list`) in the models folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Text to score.
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Chunks scored (0 = all the text holds).
    #[arg(long, default_value_t = 16)]
    pub chunks: usize,
    /// KV types to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = KvType::NAMES.map(String::from))]
    pub types: Vec<String>,
    /// Cache depth for the decode figure (0 skips it).
    #[arg(long, default_value_t = 4096)]
    pub depth: usize,
    /// Tokens decoded per speed repetition.
    #[arg(long, default_value_t = 64)]
    pub tg: usize,
    /// Speed repetitions (median reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    #[command(flatten)]
    pub threads: crate::threads::ThreadsArgs,
    #[arg(long)]
    pub json: bool,
    /// Do not save the codec and compressor rates (the KV eviction score's reload costs).
    #[arg(long)]
    pub no_save: bool,
    /// The sessions are held to this budget (default: the machine's memory); a bench
    /// that needs more is refused before it starts.
    #[command(flatten)]
    pub budget: crate::plan::BudgetArgs,
}

/// Most bytes of `--text` read when every chunk is scored (`--chunks 0`); with a chunk
/// count, only what those chunks can need is read. Eleven times wikitext-2's test set.
const MAX_TEXT_BYTES: u64 = 16 << 20;

#[derive(Serialize, Default)]
struct FormatReport {
    name: String,
    /// RAM bytes of KV per token at the end of a `ctx`-token chunk.
    bytes_per_token: f64,
    /// f16 bytes per token ÷ this type's.
    compression_vs_f16: f64,
    /// Tokens this type holds in the KV bytes all-f16 needs for `ctx` tokens.
    tokens_in_f16_budget: usize,
    ppl: f64,
    ppl_change_pct: f64,
    kl_mean: f64,
    kl_max: f64,
    /// KL at the 99th percentile of scored positions.
    kl_p99: f64,
    same_top_pct: f64,
    tg_d4096_tok_s: Option<f64>,
}

#[derive(Serialize)]
struct CodecReport {
    name: &'static str,
    #[serde(skip)]
    format: KvFormat,
    /// f16 bytes per second through quantization / out of dequantization.
    quantize_gb_s: f64,
    dequantize_gb_s: f64,
}

#[derive(Serialize)]
struct CompressorReport {
    name: String,
    on: &'static str,
    #[serde(skip)]
    codec: Compression,
    #[serde(skip)]
    on_format: KvFormat,
    ratio: f64,
    compress_gb_s: f64,
    decompress_gb_s: f64,
}

#[derive(Serialize)]
struct KvReport {
    model: String,
    text: String,
    ctx: usize,
    chunks: usize,
    scored_positions: usize,
    depth: usize,
    threads: usize,
    formats: Vec<FormatReport>,
    codecs: Vec<CodecReport>,
    compressors: Vec<CompressorReport>,
    machine: MachineInfo,
}

pub(crate) fn log_softmax(logits: &[f32], out: &mut Vec<f32>) {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|&x| f64::from(x - m).exp()).sum();
    let lz = m as f64 + z.ln();
    out.clear();
    out.extend(logits.iter().map(|&x| (f64::from(x) - lz) as f32));
}

/// Feeds `toks` block by block; calls `score(pos, logits)` for positions ≥ `first`.
pub(crate) fn score_chunk(
    s: &mut Session<'_, '_>,
    toks: &[u32],
    first: usize,
    step: usize,
    mut score: impl FnMut(usize, &[f32]),
) -> Result<(), CliError> {
    s.reset();
    let vocab = s.model().cfg.vocab;
    let mut pos = 0;
    for part in toks.chunks(step) {
        let logits = s.eval(part, Logits::All)?;
        for (i, row) in logits.chunks(vocab).enumerate() {
            if pos + i >= first && pos + i + 1 < toks.len() {
                score(pos + i, row);
            }
        }
        pos += part.len();
    }
    Ok(())
}

/// How many `ctx`-token chunks of a text of `n_tokens` are scored (`chunks` 0: all it
/// holds); a text shorter than one chunk is an input error.
pub(crate) fn chunk_count(n_tokens: usize, ctx: usize, chunks: usize) -> Result<usize, CliError> {
    let avail = n_tokens / ctx;
    let n = if chunks == 0 {
        avail
    } else {
        chunks.min(avail)
    };
    if n == 0 {
        return Err(input(anyhow::anyhow!(
            "the text holds {n_tokens} tokens, fewer than one chunk of {ctx}"
        )));
    }
    Ok(n)
}

/// One scored position against the reference log-probabilities `base`: the negative
/// log-likelihood of `next` under `lp`, KL(base ‖ lp), and whether the top tokens agree.
pub(crate) fn compare(base: &[f32], lp: &[f32], next: usize) -> (f64, f64, bool) {
    let kl: f64 = base
        .iter()
        .zip(lp)
        .map(|(&b, &q)| f64::from(b).exp() * f64::from(b - q))
        .sum();
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|x| x.0)
    };
    (
        -f64::from(lp[next]),
        kl.max(0.0),
        argmax(base) == argmax(lp),
    )
}

/// The most tokens `mix` holds in `budget` bytes.
fn tokens_in(mix: &TierMix, layout: &kvcache::KvLayout, budget: f64) -> usize {
    let bt = layout.block_tokens();
    let mut len = bt;
    while mix.bytes_per_token(layout, len + bt) * (len + bt) as f64 <= budget && len < 1 << 24 {
        len += bt;
    }
    len
}

/// The part of `--text` the chunks can use: `chunks` × `ctx` tokens of at most the
/// longest token's bytes each (and a few tokens over, so the last chunk's end tokenizes
/// as in the whole text), or up to [`MAX_TEXT_BYTES`] for every chunk. `bench kv --text
/// /dev/zero` read until memory ran out (finding 6).
fn text_cap(a: &KvArgs, tokenizer: &tokenizer::Tokenizer) -> (u64, u64) {
    let per_token = tokenizer.longest_token_bytes() as u64;
    let wanted = (a.chunks as u64)
        .saturating_mul(a.ctx as u64)
        .saturating_add(64)
        .saturating_mul(per_token);
    if a.chunks == 0 {
        (MAX_TEXT_BYTES, u64::MAX)
    } else {
        (wanted.min(MAX_TEXT_BYTES), wanted)
    }
}

fn read_text(a: &KvArgs, tokenizer: &tokenizer::Tokenizer) -> Result<String, CliError> {
    let (cap, wanted) = text_cap(a, tokenizer);
    let (bytes, rest) = crate::read::read_capped(&a.text, cap)
        .with_context(|| format!("cannot read {}", a.text.display()))
        .map_err(input)?;
    if rest == crate::read::Rest::More && cap < wanted {
        return Err(input(anyhow::anyhow!(
            "--text {} is over {cap} bytes, the most read for scoring; give --chunks N to \
             score its start",
            a.text.display()
        )));
    }
    crate::read::utf8_prefix(bytes).map_err(|e| {
        input(anyhow::anyhow!(
            "--text {} is not UTF-8 text (invalid byte at offset {})",
            a.text.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// What the bench holds at its peak: one f16 session and one per type at `--ctx` (each
/// with its KV and scratch), the f16 logits of a whole chunk and their log-softmax rows
/// for the scored half, the `--depth` session, and the text with at most one 4-byte token
/// id per byte of it.
fn need_bytes(
    a: &KvArgs,
    tm: &engine::text::TextModel<'_>,
    file_bytes: u64,
    threads: usize,
) -> u64 {
    let session = |n_ctx: usize| {
        let p = crate::bench::session_plan(tm, file_bytes, n_ctx, threads);
        (p.total_bytes, p.kv_bytes.saturating_add(p.scratch_bytes))
    };
    let (one, per_session) = session(a.ctx);
    let row = tm.model.cfg.vocab as u64 * 4;
    let logits = (a.ctx as u64)
        .saturating_add((a.ctx - a.ctx / 2) as u64)
        .saturating_mul(row);
    let deep = if a.depth > 0 {
        session(a.depth + a.tg + 16).1
    } else {
        0
    };
    let text = text_cap(a, &tm.tokenizer).0.saturating_mul(5);
    [
        per_session.saturating_mul(a.types.len() as u64),
        logits,
        deep,
        text,
    ]
    .into_iter()
    .fold(one, u64::saturating_add)
}

pub fn kv(a: &KvArgs) -> Result<(), CliError> {
    if a.ctx < 32 || !a.ctx.is_multiple_of(16) {
        return Err(input(anyhow::anyhow!(
            "--ctx must be a multiple of 16, at least 32"
        )));
    }
    limits::context("--ctx", a.ctx)?;
    limits::count("--reps", a.reps, 1, limits::MAX_REPS)?;
    if a.depth > 0 {
        limits::context_sum("--depth + --tg", &[a.depth, a.tg, 16])?;
    }
    let limit = crate::fit::Limit::of(&a.budget)?;
    let model = crate::catalog::resolve(&a.model)?;
    let file = crate::load::map(&model)?;
    let mut tm = crate::load::text_model(&model, &file)?;
    limits::warn_past_training(&format!("--ctx {}", a.ctx), a.ctx, &tm.model.cfg);
    if a.depth > 0 {
        let deep = a.depth + a.tg;
        limits::warn_past_training(&format!("--depth + --tg ({deep})"), deep, &tm.model.cfg);
    }
    let threads = a.threads.resolve();
    let mut mixes = Vec::new();
    for t in &a.types {
        let mix = t
            .parse::<KvType>()
            .map_err(|e| input(anyhow::Error::new(e)))?
            .mix();
        mixes.push((t.clone(), mix));
    }
    let file_bytes = file.bytes().len() as u64;
    let need = need_bytes(a, &tm, file_bytes, threads);
    let accounts = crate::bench::bench_accounts(&mut tm, file_bytes, need, &limit)?;
    let text = read_text(a, &tm.tokenizer)?;
    let all = tm.encode(&text);
    let bos = all.first().copied().unwrap_or(0);
    let n_chunks = chunk_count(all.len(), a.ctx, a.chunks)?;
    let vocab = tm.model.cfg.vocab;
    let cfg = SessionConfig::new(a.ctx, threads, 512);
    let mut base = Session::with_accounts(&tm.model, cfg, &accounts)?;
    let mut sessions: Vec<Session<'_, '_>> = mixes
        .iter()
        .map(|(_, m)| {
            Session::with_accounts(&tm.model, SessionConfig { kv_mix: *m, ..cfg }, &accounts)
        })
        .collect::<Result<_, _>>()?;
    let first = a.ctx / 2;
    let n_scored = n_chunks * (a.ctx - first - 1);
    let mut nll = vec![0.0f64; mixes.len()];
    let mut kls: Vec<Vec<f64>> = vec![Vec::with_capacity(n_scored); mixes.len()];
    let mut same_top = vec![0usize; mixes.len()];
    let mut bytes_end = vec![0u64; mixes.len()];
    let mut base_lp: Vec<Vec<f32>> = Vec::new();
    let mut lp = Vec::with_capacity(vocab);
    for c in 0..n_chunks {
        let mut toks = all[c * a.ctx..(c + 1) * a.ctx].to_vec();
        toks[0] = bos;
        base_lp.clear();
        score_chunk(&mut base, &toks, first, a.ctx, |_, row| {
            let mut v = Vec::new();
            log_softmax(row, &mut v);
            base_lp.push(v);
        })?;
        for (k, s) in sessions.iter_mut().enumerate() {
            let mut i = 0;
            score_chunk(s, &toks, first, 16, |pos, row| {
                log_softmax(row, &mut lp);
                let (nl, kl, same) = compare(&base_lp[i], &lp, toks[pos + 1] as usize);
                nll[k] += nl;
                kls[k].push(kl);
                same_top[k] += usize::from(same);
                i += 1;
            })?;
            bytes_end[k] = s.kv_bytes();
        }
        if !a.json {
            crate::out::note_partial(&format!("\rchunk {}/{n_chunks}", c + 1));
        }
    }
    if !a.json {
        crate::out::note("");
    }
    let layout = *base.kv().layout();
    let f16_bpt = layout.bytes_per_token() as f64;
    let f16_budget = f16_bpt * a.ctx as f64;
    let ppl_f16 = mixes
        .iter()
        .position(|(n, _)| n == "f16")
        .map(|k| (nll[k] / n_scored as f64).exp());
    let mut formats = Vec::new();
    for (k, (name, mix)) in mixes.iter().enumerate() {
        let mut sorted = kls[k].clone();
        sorted.sort_by(f64::total_cmp);
        let ppl = (nll[k] / n_scored as f64).exp();
        let bpt = bytes_end[k] as f64 / a.ctx as f64;
        formats.push(FormatReport {
            name: name.clone(),
            bytes_per_token: bpt,
            compression_vs_f16: f16_bpt / bpt,
            tokens_in_f16_budget: tokens_in(mix, &layout, f16_budget),
            ppl,
            ppl_change_pct: ppl_f16.map_or(0.0, |b| (ppl / b - 1.0) * 100.0),
            kl_mean: sorted.iter().sum::<f64>() / sorted.len().max(1) as f64,
            kl_max: sorted.last().copied().unwrap_or(0.0),
            kl_p99: sorted.get(sorted.len() * 99 / 100).copied().unwrap_or(0.0),
            same_top_pct: same_top[k] as f64 * 100.0 / n_scored.max(1) as f64,
            tg_d4096_tok_s: None,
        });
    }
    drop(sessions);
    // Decode speed at depth, one type at a time (one cache in memory at once).
    if a.depth > 0 {
        let prompt = crate::bench::prompt(a.depth, vocab);
        for (k, (_, mix)) in mixes.iter().enumerate() {
            let cfg = SessionConfig {
                kv_mix: *mix,
                ..SessionConfig::new(a.depth + a.tg + 16, threads, 512)
            };
            let mut s = Session::with_accounts(&tm.model, cfg, &accounts)?;
            s.eval(&prompt, Logits::Last)?;
            let mut runs = Vec::new();
            for r in 0..=a.reps.max(1) {
                s.truncate(a.depth)?;
                let v = crate::bench::decode(&mut s, a.tg)?;
                if r > 0 {
                    runs.push(v);
                }
            }
            runs.sort_by(f64::total_cmp);
            formats[k].tg_d4096_tok_s = Some(runs[runs.len() / 2]);
        }
    }
    let (codecs, compressors) = codec_rates(&mut base, &all[..a.ctx.min(all.len())])?;
    if !a.no_save {
        let path = save_rates(&codecs, &compressors)?;
        crate::out::note(&format!("codec rates saved to {}", path.display()));
    }
    let report = KvReport {
        model: crate::bench::file_name(&model),
        text: crate::bench::file_name(&a.text),
        ctx: a.ctx,
        chunks: n_chunks,
        scored_positions: n_scored,
        depth: a.depth,
        threads,
        formats,
        codecs,
        compressors,
        machine: MachineInfo::detect(),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "{} chunks × {} tokens, {} positions scored, {} threads",
            n_chunks, a.ctx, n_scored, threads
        )?;
        writeln!(
            out,
            "{:<8} {:>9} {:>6} {:>9} {:>8} {:>8} {:>9} {:>9} {:>7} {:>10}",
            "type",
            "B/token",
            "×f16",
            "tokens@f16",
            "ppl",
            "Δppl%",
            "KL mean",
            "KL max",
            "top%",
            "tg@depth"
        )?;
        for f in &report.formats {
            writeln!(
                out,
                "{:<8} {:>9.0} {:>6.2} {:>9} {:>8.3} {:>+8.2} {:>9.5} {:>9.4} {:>7.1} {:>10}",
                f.name,
                f.bytes_per_token,
                f.compression_vs_f16,
                f.tokens_in_f16_budget,
                f.ppl,
                f.ppl_change_pct,
                f.kl_mean,
                f.kl_max,
                f.same_top_pct,
                f.tg_d4096_tok_s.map_or("-".into(), |v| format!("{v:.1}"))
            )?;
        }
        for c in &report.codecs {
            writeln!(
                out,
                "codec {:<5} quantize {:.2} GB/s, dequantize {:.2} GB/s (f16 bytes)",
                c.name, c.quantize_gb_s, c.dequantize_gb_s
            )?;
        }
        for c in &report.compressors {
            writeln!(
                out,
                "{:<7} on {}: ratio {:.3}, compress {:.2} GB/s, decompress {:.2} GB/s",
                c.name, c.on, c.ratio, c.compress_gb_s, c.decompress_gb_s
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Files the codec rates and the compressors' rates on the cold (4-bit) tier's blocks,
/// zstd at its fastest measured level.
fn save_rates(
    codecs: &[CodecReport],
    compressors: &[CompressorReport],
) -> Result<std::path::PathBuf, CliError> {
    use membench::{CodecKind, CodecThroughput, CompressorKind, CompressorThroughput};
    crate::tier::update(|t| {
        for c in codecs {
            let kind = match c.format {
                KvFormat::Q8 => CodecKind::Int8,
                KvFormat::Q4 => CodecKind::Int4,
                KvFormat::Q2 => CodecKind::Int2,
                KvFormat::F16 => continue,
            };
            let rate = CodecThroughput {
                quantize_gb_s: c.quantize_gb_s,
                dequantize_gb_s: c.dequantize_gb_s,
            };
            t.codecs.insert(kind, rate);
        }
        let mut zstd_seen = false;
        for c in compressors.iter().filter(|c| c.on_format == KvFormat::Q4) {
            let kind = match c.codec {
                Compression::Lz4 => CompressorKind::Lz4,
                Compression::Zstd(_) if !zstd_seen => {
                    zstd_seen = true;
                    CompressorKind::Zstd
                }
                _ => continue,
            };
            let rate = CompressorThroughput {
                compress_gb_s: c.compress_gb_s,
                decompress_gb_s: c.decompress_gb_s,
                ratio: c.ratio,
            };
            t.compressors.insert(kind, rate);
        }
    })
}

/// Quantize/dequantize and compressor rates on the f16 blocks of one real chunk.
fn codec_rates(
    s: &mut Session<'_, '_>,
    toks: &[u32],
) -> Result<(Vec<CodecReport>, Vec<CompressorReport>), CliError> {
    s.reset();
    s.eval(toks, Logits::Last)?;
    let kv = s.kv();
    let layout = *kv.layout();
    let geom = layout.geom();
    let bt = layout.block_tokens();
    let blocks: Vec<Vec<u16>> = kv
        .seq_blocks(s.seq())?
        .iter()
        .filter(|&&id| kv.pool().meta(id).filled as usize == bt)
        .map(|&id| kv.pool().data(id).to_vec())
        .collect();
    let f16_bytes = (blocks.len() * geom.block_bytes(KvFormat::F16)) as f64;
    let time = |f: &mut dyn FnMut()| -> f64 {
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        best
    };
    let mut codecs = Vec::new();
    let mut compressors = Vec::new();
    // A head size a quantized format does not support has no codec to time (the cache
    // keeps such blocks f16); encoding one anyway was a panic.
    let formats = [KvFormat::Q8, KvFormat::Q4, KvFormat::Q2];
    for f in formats.into_iter().filter(|f| f.supports(&geom)) {
        let mut q: Vec<Vec<u8>> = blocks
            .iter()
            .map(|_| vec![0u8; geom.block_bytes(f)])
            .collect();
        let tq = time(&mut || {
            for (b, out) in blocks.iter().zip(q.iter_mut()) {
                kernels::kvquant::encode_block(f, &geom, b, bt, out);
            }
        });
        let mut back = vec![0u16; geom.block_bytes(KvFormat::F16) / 2];
        let td = time(&mut || {
            for b in &q {
                kernels::kvquant::decode_block(f, &geom, b, &mut back);
            }
        });
        codecs.push(CodecReport {
            name: f.name(),
            format: f,
            quantize_gb_s: f16_bytes / tq / 1e9,
            dequantize_gb_s: f16_bytes / td / 1e9,
        });
        if f == KvFormat::Q8 {
            continue;
        }
        for c in [Compression::Lz4, Compression::Zstd(1), Compression::Zstd(3)] {
            let raw: f64 = q.iter().map(|b| b.len() as f64).sum();
            let mut probe = Vec::new();
            if q.is_empty() || kvdisk::compress(c, &q[0], &mut probe).is_err() {
                continue; // codec not in this build
            }
            let mut packed: Vec<Vec<u8>> = vec![Vec::new(); q.len()];
            let tc = time(&mut || {
                for (b, out) in q.iter().zip(packed.iter_mut()) {
                    out.clear();
                    let _ = kvdisk::compress(c, b, out);
                }
            });
            let stored: f64 = packed.iter().map(|b| b.len() as f64).sum();
            let mut out = Vec::new();
            let tdz = time(&mut || {
                for (p, b) in packed.iter().zip(&q) {
                    let _ = kvdisk::decompress(c, p, b.len(), &mut out);
                }
            });
            compressors.push(CompressorReport {
                name: c.to_string(),
                on: f.name(),
                codec: c,
                on_format: f,
                ratio: raw / stored,
                compress_gb_s: raw / tc / 1e9,
                decompress_gb_s: raw / tdz / 1e9,
            });
        }
    }
    Ok((codecs, compressors))
}
