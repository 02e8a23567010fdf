//! `llmem run`: generate text from a prompt, streaming it to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use engine::forward::{Logits, Session, SessionConfig};
use engine::sampler::{Sampler, SamplerConfig};
use serde::Serialize;

use crate::exit::{CliError, input};
use crate::machine;
use probe::MemoryProbe;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A GGUF file, or a catalog model's name (`llmem list`) in the models folder.
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Use the prompt as is, without the model's chat template.
    #[arg(long)]
    pub raw: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy [default: the model's `general.sampling.temp`,
    /// else 0.8].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Keep the K likeliest tokens, 0 for all [default: the model's, else 40].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the likeliest tokens up to this probability mass [default: the model's, else
    /// 0.95].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Keep tokens at least this fraction as likely as the likeliest, 0 for all [default:
    /// the model's, else 0.05].
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Random seed; the same seed repeats a run [default: a random one, reported by
    /// --json].
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub threads: crate::threads::ThreadsArgs,
    /// Context size in tokens (prompt + generated).
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Keep generating past end-of-generation tokens (for measurements).
    #[arg(long)]
    pub ignore_eos: bool,
    /// KV cache type: f16, int8, int4, int2, tiered (recent tokens f16, older ones int8,
    /// then 4-bit, then 2-bit) or tiered-4bit (never below 4-bit).
    #[arg(long, default_value = "f16", value_parser = crate::plan::kv_type_parser())]
    pub kv_type: kvcache::KvType,
    #[command(flatten)]
    pub kv_dir: crate::kvdir::KvDirArgs,
    #[command(flatten)]
    pub budget: crate::plan::BudgetArgs,
}

#[derive(Serialize)]
struct Timings {
    load_s: f64,
    prefill_s: f64,
    prefill_tok_s: f64,
    decode_s: f64,
    decode_tok_s: f64,
}

#[derive(Serialize)]
struct Memory {
    peak_rss_bytes: Option<u64>,
    weight_bytes: u64,
    weight_resident_bytes: u64,
    kv_bytes: u64,
    scratch_bytes: u64,
}

#[derive(Serialize)]
struct Ledger {
    /// The budget the run was held to (None: no limit given).
    budget_bytes: Option<u64>,
    /// What `llmem plan` says this run needs at its context.
    plan_total_bytes: u64,
    snapshot: budget::BudgetSnapshot,
    /// Resident memory as the OS counts it, and its file-backed / anonymous parts.
    rss_bytes: Option<u64>,
    rss_file_bytes: Option<u64>,
    rss_anon_bytes: Option<u64>,
    /// RSS − (ledger + the plan's runtime line): memory llmem holds that neither a
    /// reservation nor the plan accounts for.
    untracked_bytes: Option<i64>,
    untracked_ratio: Option<f64>,
}

/// The sampling a run used and where each setting came from.
#[derive(Serialize, Debug, PartialEq)]
struct Sampling {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    seed: u64,
    /// Whether `temperature` makes it greedy (the other settings then do nothing).
    greedy: bool,
    /// The settings taken from the model's `general.sampling.*` metadata.
    from_model: Vec<&'static str>,
}

/// The sampling settings: each flag given, else the model's recommendation, else
/// llama.cpp's default; the seed as given or else random.
fn sampling(a: &RunArgs, model: &engine::sampler::ModelSampling) -> Sampling {
    let d = SamplerConfig::SAMPLING;
    let mut from_model = Vec::new();
    let mut pick = |flag: Option<f32>, of_model: Option<f32>, default: f32, key| match flag {
        Some(v) => v,
        None => of_model.map_or(default, |v| {
            from_model.push(key);
            v
        }),
    };
    let temperature = pick(a.temperature, model.temperature, d.temperature, "temp");
    let top_p = pick(a.top_p, model.top_p, d.top_p, "top_p");
    let min_p = pick(a.min_p, model.min_p, d.min_p, "min_p");
    let top_k = match (a.top_k, model.top_k) {
        (Some(k), _) => k,
        (None, Some(k)) => {
            from_model.push("top_k");
            k
        }
        (None, None) => d.top_k,
    };
    Sampling {
        temperature,
        top_k,
        top_p,
        min_p,
        seed: a.seed.unwrap_or_else(engine::sampler::random_seed),
        // Finite and ≥ 0: the flag is checked and the model's value filtered.
        greedy: temperature < engine::sampler::GREEDY_BELOW_TEMPERATURE,
        from_model,
    }
}

#[derive(Serialize)]
struct RunReport {
    prompt_token_ids: Vec<u32>,
    token_ids: Vec<u32>,
    text: String,
    stop_reason: &'static str,
    sampling: Sampling,
    timings: Timings,
    memory: Memory,
    kv: KvReport,
    ledger: Ledger,
}

#[derive(Serialize)]
struct KvReport {
    kv_type: kvcache::KvType,
    /// Prompt tokens whose KV came from the cache (`--kv-dir` or shared blocks).
    prefix_reused_tokens: usize,
    /// Tokens run through the model.
    computed_tokens: u64,
    /// Blocks written to `--kv-dir` by this run.
    blocks_persisted: usize,
    /// Blocks per tier now: hot, warm, cold, disk.
    tier_blocks: [usize; 4],
}

pub fn run(a: &RunArgs) -> Result<(), CliError> {
    crate::limits::context("--ctx", a.ctx)?;
    if let Some(t) = a.temperature
        && !(t >= 0.0 && t.is_finite())
    {
        return Err(input(anyhow::anyhow!(
            "--temperature must be a finite number ≥ 0"
        )));
    }
    if let Some(p) = a.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(input(anyhow::anyhow!("--top-p must be in (0, 1]")));
    }
    if let Some(p) = a.min_p
        && !(0.0..=1.0).contains(&p)
    {
        return Err(input(anyhow::anyhow!("--min-p must be in [0, 1]")));
    }
    let kv_dir_max = crate::kvdir::parse_max(&a.kv_dir.kv_dir_max)?;
    let no_prompt = || input(anyhow::anyhow!("give --prompt TEXT or --prompt-file FILE"));
    if a.prompt.is_none() && a.prompt_file.is_none() {
        return Err(no_prompt());
    }
    let t_load = Instant::now();
    let threads = a.threads.resolve();
    let limit = crate::fit::Limit::of(&a.budget)?;
    let model = crate::catalog::resolve(&a.model)?;
    let file = crate::load::map(&model)?;
    let mut tm = crate::load::text_model(&model, &file)?;
    let settings = sampling(
        a,
        &gguf::GgufFile::parse(file.bytes())
            .map(|g| engine::sampler::ModelSampling::from_gguf(&g))
            .unwrap_or_default(),
    );
    let facts = crate::plan::ModelFacts::new(
        tm.model.cfg.clone(),
        file.bytes().len() as u64,
        tm.tokenizer.table_bytes(),
    );
    let kv = a.kv_type;
    let need = engine::memory::plan(&facts.input(a.ctx, 1, kv, threads));
    // Check the budget (or the machine's memory) before any weight page or buffer is
    // touched, and before the prompt is read.
    limit.check("this run", need.total_bytes, || {
        crate::plan::suggestions(&facts, &need, limit.usable_bytes, a.ctx, 1, kv, threads)
    })?;
    let accounts = limit.accounts()?;
    let prompt = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => crate::read::prompt_file(f, a.ctx, &tm.tokenizer)?,
        (None, None) => return Err(no_prompt()),
    };
    tm.account(&accounts, facts.file_bytes)?;
    let text = if a.raw {
        prompt
    } else {
        match tm.chat_format() {
            engine::text::ChatFormat::Raw => crate::out::note(
                "note: this model has no chat template and no known turn tokens \
                 (a pretrained base model?): the prompt is used as it is, as with --raw",
            ),
            engine::text::ChatFormat::GemmaTurns => {
                crate::out::note("note: this model has no chat template: using Gemma's turn format")
            }
            _ => {}
        }
        tm.chat_prompt(&prompt).map_err(input)?
    };
    let ids = tm.encode(&text);
    if ids.is_empty() {
        return Err(input(anyhow::anyhow!("the prompt is empty")));
    }
    if ids.len() > a.ctx {
        return Err(input(anyhow::anyhow!(
            "the prompt is {} tokens, longer than --ctx {}; raise --ctx or shorten the prompt",
            ids.len(),
            a.ctx
        )));
    }
    // The furthest this run can reach, not --ctx itself: the default 4096 is no reason to
    // warn about a short exchange with a model trained for 2048.
    let reach = a.ctx.min(ids.len().saturating_add(a.max_tokens));
    let what = format!("this run reaches {reach} tokens (prompt + --max-tokens, up to --ctx)");
    crate::limits::warn_past_training(&what, reach, &tm.model.cfg);
    let cfg = SessionConfig {
        kv_mix: a.kv_type.mix(),
        ..SessionConfig::new(a.ctx, threads, 512)
    };
    let mut session = Session::with_accounts(&tm.model, cfg, &accounts)?;
    session.set_rates(crate::tier::rates(
        crate::tier::load().as_ref(),
        tm.model.digest,
    ));
    let mut kv_dir =
        a.kv_dir.kv_dir.as_ref().and_then(|dir| {
            crate::kvdir::open(&mut session, &file, dir, a.kv_type.name(), kv_dir_max)
        });
    let reused = session.attach_prefix(&ids)?;
    let load_s = t_load.elapsed().as_secs_f64();

    let mut sampler = Sampler::new(SamplerConfig {
        temperature: settings.temperature,
        top_k: settings.top_k,
        top_p: settings.top_p,
        min_p: settings.min_p,
        seed: settings.seed,
    });
    let t_prefill = Instant::now();
    let sampled = |sampler: &mut Sampler, logits: &[f32], at: usize| {
        sampler
            .sample(logits)
            .map_err(|e| crate::load::non_finite(e, &model, &file, at))
    };
    let mut next = sampled(
        &mut sampler,
        session.eval(&ids[reused..], Logits::Last)?,
        ids.len(),
    )?;
    let prefill_s = t_prefill.elapsed().as_secs_f64();
    let persisted = session.persist()?;
    if let Some(k) = &mut kv_dir {
        k.report(&session);
    }

    let t_decode = Instant::now();
    let mut out_ids = Vec::new();
    let mut decoder = tm.stream_decoder();
    let mut text_out = String::new();
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    let stop_reason = loop {
        if out_ids.len() >= a.max_tokens {
            break "max_tokens";
        }
        if tm.is_eog(next) && !a.ignore_eos {
            break "eog";
        }
        out_ids.push(next);
        let piece = decoder.push(next);
        if !a.json {
            stdout.write_all(piece.as_bytes())?;
            stdout.flush()?;
        }
        text_out.push_str(&piece);
        if out_ids.len() >= a.max_tokens {
            break "max_tokens";
        }
        if session.n_past() >= a.ctx {
            break "ctx";
        }
        let at = session.n_past() + 1;
        next = sampled(&mut sampler, session.eval(&[next], Logits::Last)?, at)?;
    };
    let tail = decoder.finish();
    text_out.push_str(&tail);
    let decode_s = t_decode.elapsed().as_secs_f64();
    if let Some(k) = kv_dir {
        k.finish(&mut session);
    }
    // Decode speed counts tokens evaluated one by one: every generated token but the last
    // one was fed back through the model.
    let decoded = out_ids
        .len()
        .saturating_sub(1)
        .max(usize::from(stop_reason == "eog" && !out_ids.is_empty()));
    if a.json {
        let weight_range = 0..file.bytes().len();
        let snapshot = accounts.budget.snapshot();
        let proc_ = probe::NativeProbe::new().process().ok();
        let rss = proc_.as_ref().map(|p| p.rss_bytes);
        // The plan's runtime line (the binary's code, thread stacks, allocator arenas)
        // is held by every run and reserved in no pool: it is planned, not untracked.
        let accounted = snapshot.used.0 + need.runtime_bytes;
        let untracked = rss.map(|r| r as i64 - accounted as i64);
        let ledger = Ledger {
            budget_bytes: limit.profile.as_ref().map(|p| p.total().0),
            plan_total_bytes: need.total_bytes,
            rss_bytes: rss,
            rss_file_bytes: proc_.as_ref().and_then(|p| p.rss_file_bytes),
            rss_anon_bytes: proc_.as_ref().and_then(|p| p.rss_anon_bytes),
            untracked_bytes: untracked,
            untracked_ratio: untracked.zip(rss).map(|(u, r)| u as f64 / r.max(1) as f64),
            snapshot,
        };
        let report = RunReport {
            prompt_token_ids: ids.clone(),
            token_ids: out_ids,
            text: text_out,
            stop_reason,
            sampling: settings,
            timings: Timings {
                load_s,
                prefill_s,
                prefill_tok_s: (ids.len() - reused) as f64 / prefill_s.max(1e-9),
                decode_s,
                decode_tok_s: decoded as f64 / decode_s.max(1e-9),
            },
            memory: Memory {
                peak_rss_bytes: machine::peak_rss_bytes(),
                weight_bytes: tm.model.weight_bytes,
                weight_resident_bytes: file.resident_bytes(weight_range),
                kv_bytes: session.kv_bytes(),
                scratch_bytes: session.scratch_bytes(),
            },
            kv: KvReport {
                kv_type: a.kv_type,
                prefix_reused_tokens: reused,
                computed_tokens: session.computed_tokens(),
                blocks_persisted: persisted,
                tier_blocks: session.kv().pool().tier_counts(),
            },
            ledger,
        };
        serde_json::to_writer_pretty(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        stdout.write_all(tail.as_bytes())?;
        writeln!(stdout)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use engine::sampler::ModelSampling;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(extra: &[&str]) -> RunArgs {
        let argv = [&["llmem", "--model", "m.gguf", "--prompt", "hi"][..], extra].concat();
        Cli::parse_from(argv).run
    }

    #[test]
    fn sampling_defaults_are_llama_cpps_with_a_random_seed() {
        let s = sampling(&args(&[]), &ModelSampling::default());
        assert_eq!(
            (s.temperature, s.top_k, s.top_p, s.min_p, s.greedy),
            (0.8, 40, 0.95, 0.05, false)
        );
        assert!(s.from_model.is_empty());
        let other = sampling(&args(&[]), &ModelSampling::default());
        assert_ne!(s.seed, other.seed, "two runs drew the same seed");
        assert_eq!(
            sampling(&args(&["--seed", "9"]), &ModelSampling::default()).seed,
            9
        );
    }

    #[test]
    fn the_models_recommendation_beats_the_default_and_a_flag_beats_both() {
        let model = ModelSampling {
            temperature: Some(0.6),
            top_k: Some(20),
            top_p: None,
            min_p: Some(0.0),
        };
        let s = sampling(&args(&[]), &model);
        assert_eq!(
            (s.temperature, s.top_k, s.top_p, s.min_p),
            (0.6, 20, 0.95, 0.0)
        );
        assert_eq!(s.from_model, ["temp", "min_p", "top_k"]);
        let s = sampling(&args(&["--temperature", "0", "--top-k", "5"]), &model);
        assert_eq!((s.temperature, s.top_k, s.greedy), (0.0, 5, true));
        assert_eq!(s.from_model, ["min_p"]);
    }
}
