//! `llmem plan`: what a model needs in this machine, whether it fits, and what would.

use std::io::Write;
use std::path::PathBuf;

use budget::{Bytes, Profile};
use clap::Args;
use clap::builder::TypedValueParser;
use engine::config::ModelConfig;
use engine::memory::{Plan, PlanInput, plan};
use serde::Serialize;

use probe::{MemoryProbe, PlatformInfo};

use crate::exit::{CliError, input};
use crate::limits;

pub use kvcache::KvType;

/// The parser of `--kv-type` (every command that takes one): [`KvType`]'s names, listed
/// in `--help` and in the error for any other.
pub fn kv_type_parser() -> impl clap::builder::TypedValueParser<Value = KvType> {
    clap::builder::PossibleValuesParser::new(KvType::NAMES)
        .map(|s| s.parse::<KvType>().expect("a listed name parses"))
}

/// Bytes per token of a sequence of `ctx` tokens of `cfg`'s model at type `kv`, counting
/// the f16 transient of a session's micro-batch ([`kv_ubatch`]): see
/// [`KvType::bytes_per_token`].
pub fn kv_bytes_per_token(kv: KvType, cfg: &ModelConfig, ctx: usize) -> u64 {
    kv.bytes_per_token(&engine::forward::kv_layout(cfg), ctx, kv_ubatch(kv))
}

/// The most KV bytes one sequence of `ctx` tokens holds at type `kv`: see
/// [`KvType::seq_bytes`] (sliding-window layers count their window only).
pub fn kv_seq_bytes(kv: KvType, cfg: &ModelConfig, ctx: usize) -> u64 {
    kv.seq_bytes(&engine::forward::kv_layout(cfg), ctx, kv_ubatch(kv))
}

/// The most tokens (at most `max`) one sequence reaches in `bytes` of KV at type `kv`.
pub fn kv_tokens_within(kv: KvType, cfg: &ModelConfig, bytes: u64, max: usize) -> usize {
    kv.mix()
        .tokens_within(&engine::forward::kv_layout(cfg), bytes, max, kv_ubatch(kv))
}

/// Bytes one compute thread holds outside the ledger while it re-encodes a block: see
/// [`KvType::transcode_bytes`].
pub fn kv_transcode_bytes(kv: KvType, cfg: &ModelConfig, ctx: usize) -> u64 {
    kv.transcode_bytes(&engine::forward::kv_layout(cfg).geom(), ctx)
}

/// The prompt micro-batch a session with type `kv` uses (the session's rule).
pub fn kv_ubatch(kv: KvType) -> usize {
    engine::forward::effective_ubatch(PLAN_UBATCH, &kv.mix())
}

/// Where the budget comes from.
#[derive(Args, Debug, Clone, Default)]
pub struct BudgetArgs {
    /// Total memory llmem may use, with units (e.g. 512MiB, 8GiB).
    #[arg(long, conflicts_with = "profile")]
    pub budget: Option<String>,
    /// A built-in profile (production, development) scaled to this machine, or a YAML file.
    #[arg(long)]
    pub profile: Option<String>,
}

impl BudgetArgs {
    /// The profile the flags describe, if any (`None`: no limit given).
    pub fn profile(&self, machine_total: Bytes) -> Result<Option<Profile>, CliError> {
        if let Some(b) = &self.budget {
            let total: Bytes = b
                .parse()
                .map_err(|e| input(anyhow::anyhow!("--budget {b}: {e}")))?;
            if total == Bytes::ZERO {
                return Err(input(anyhow::anyhow!("--budget must be more than 0 bytes")));
            }
            return Ok(Some(flat_profile(total)?));
        }
        let Some(p) = &self.profile else {
            return Ok(None);
        };
        if Profile::BUILTIN.contains(&p.as_str()) {
            return Profile::builtin(p, machine_total)
                .map(Some)
                .map_err(|e| input(anyhow::anyhow!("--profile {p}: {e}")));
        }
        // Read with the profile's size cap: `--profile /dev/zero` stops after 64 KiB.
        Profile::from_yaml_file(std::path::Path::new(p))
            .map(Some)
            .map_err(|e| match e {
                budget::ProfileFileError::Read { .. } => input(anyhow::anyhow!(
                    "--profile: not a built-in profile ({}) and {e}",
                    Profile::BUILTIN.join(", ")
                )),
                _ => input(anyhow::anyhow!("--profile {e}")),
            })
    }
}

/// A budget of `total` bytes whose pools may each use all of it (the plan decides how it
/// is split; the ledger enforces the total).
fn flat_profile(total: Bytes) -> Result<Profile, CliError> {
    let yaml = format!(
        "name: budget\ntotal: {}\npools:\n  weights: {{ policy: persistent, limit: 0 }}\n  kv: {{ policy: tiered, limit: 0 }}\n  scratch: {{ policy: circular, limit: 0 }}\n",
        total.0
    );
    Profile::from_yaml_str(&yaml)
        .map_err(|e| CliError::Runtime(anyhow::anyhow!("internal profile: {e}")))
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// A GGUF file, or a catalog model's name (`llmem list`) in the models folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Context size in tokens.
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Concurrent sequences.
    #[arg(long, default_value_t = 1)]
    pub seqs: usize,
    /// KV cache element type.
    #[arg(long, default_value = "f16", value_parser = kv_type_parser())]
    pub kv_type: KvType,
    #[command(flatten)]
    pub budget: BudgetArgs,
    #[command(flatten)]
    pub threads: crate::threads::ThreadsArgs,
    #[arg(long, conflicts_with = "yaml")]
    pub json: bool,
    #[arg(long)]
    pub yaml: bool,
}

/// Prompt tokens per micro-batch the plan asks for (the session's default; a cache that
/// transcodes blocks uses fewer, see [`kv_ubatch`]).
const PLAN_UBATCH: usize = 512;

/// A model's fixed facts, read from its header (nothing is loaded), and the machine's page
/// size.
pub struct ModelFacts {
    pub cfg: ModelConfig,
    pub file_bytes: u64,
    pub tokenizer_bytes: u64,
    page_bytes: u64,
}

impl ModelFacts {
    pub fn new(cfg: ModelConfig, file_bytes: u64, tokenizer_bytes: u64) -> Self {
        let page_bytes = probe::NativeProbe::new()
            .platform()
            .map_or(PlatformInfo::default().page_size_bytes, |p| {
                p.page_size_bytes
            });
        ModelFacts {
            cfg,
            file_bytes,
            tokenizer_bytes,
            page_bytes,
        }
    }

    pub fn input(&self, n_ctx: usize, n_seqs: usize, kv: KvType, threads: usize) -> PlanInput<'_> {
        PlanInput {
            cfg: &self.cfg,
            file_bytes: self.file_bytes,
            tokenizer_bytes: self.tokenizer_bytes,
            n_ctx,
            n_seqs,
            kv_bytes_per_token: kv_bytes_per_token(kv, &self.cfg, n_ctx),
            threads,
            ubatch: kv_ubatch(kv),
            kv_transcode_bytes: kv_transcode_bytes(kv, &self.cfg, n_ctx),
            page_bytes: self.page_bytes,
        }
    }

    /// Largest context (a multiple of the 16-token block, at most the model's training
    /// context) that fits `budget`, if any.
    pub fn max_ctx(&self, budget: u64, n_seqs: usize, kv: KvType, threads: usize) -> Option<usize> {
        let fits = |ctx: usize| plan(&self.input(ctx, n_seqs, kv, threads)).total_bytes <= budget;
        if !fits(16) {
            return None;
        }
        // Beyond its training context a model's output degrades: never suggest more.
        let cap = self.cfg.ctx_train.clamp(16, limits::MAX_CTX_TOKENS);
        if fits(cap) {
            return Some(cap);
        }
        let (mut lo, mut hi) = (16usize, cap);
        while hi - lo > 16 {
            let mid = (lo + hi) / 2 / 16 * 16;
            if fits(mid) { lo = mid } else { hi = mid }
        }
        Some(lo)
    }

    /// Largest number of sequences of `ctx` tokens that fits `budget` (at most
    /// [`limits::MAX_SEQS`]).
    pub fn max_seqs(&self, budget: u64, ctx: usize, kv: KvType, threads: usize) -> usize {
        let fits = |seqs: usize| plan(&self.input(ctx, seqs, kv, threads)).total_bytes <= budget;
        let one = plan(&self.input(ctx, 1, kv, threads));
        if one.total_bytes > budget {
            return 0;
        }
        // Each sequence adds at least its KV, so no more than this fits (and never more
        // than limits::MAX_SEQS); the runtime's share grows less than linearly, so search
        // below it: O(log) plans, whatever the budget.
        let most = (budget - one.total_bytes) / one.kv_bytes.max(1);
        let (mut lo, mut hi) = (
            1usize,
            usize::try_from(most.saturating_add(1))
                .map_or(limits::MAX_SEQS, |h| h.min(limits::MAX_SEQS)),
        );
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) { lo = mid } else { hi = mid - 1 }
        }
        lo
    }
}

/// Reads the model header and tokenizer sizes (the tensor pages are never touched).
pub fn facts(path: &std::path::Path) -> Result<ModelFacts, CliError> {
    let file = crate::load::map(path)?;
    let tm = crate::load::text_model(path, &file)?;
    Ok(ModelFacts::new(
        tm.model.cfg.clone(),
        file.bytes().len() as u64,
        tm.tokenizer.table_bytes(),
    ))
}

#[derive(Serialize)]
struct Fit {
    kv_type: KvType,
    kv_bytes_per_token: u64,
    max_ctx: Option<usize>,
    max_seqs_at_ctx: usize,
}

#[derive(Serialize)]
struct PlanReport {
    model: String,
    ctx: usize,
    seqs: usize,
    kv_type: KvType,
    /// Compute threads the plan is for (the runtime line counts each one's stack).
    threads: usize,
    weights_bytes: u64,
    tokenizer_bytes: u64,
    kv_bytes: u64,
    scratch_bytes: u64,
    runtime_bytes: u64,
    total_bytes: u64,
    budget_bytes: u64,
    budget_source: String,
    fits: bool,
    shortfall_bytes: u64,
    fits_by_kv_type: Vec<Fit>,
    suggestions: Vec<String>,
    /// Main-memory copy rate saved by `llmem bench memory` on this CPU, GB/s.
    memory_copy_gb_s: Option<f64>,
    /// Upper bound on decode speed per sequence at full context from that rate: each
    /// generated token reads every weight and the sequence's whole KV cache once.
    decode_bound_tok_s: Option<f64>,
}

/// What would make `need` fit in `budget`, cheapest first.
pub fn suggestions(
    f: &ModelFacts,
    p: &Plan,
    budget: u64,
    ctx: usize,
    seqs: usize,
    kv: KvType,
    threads: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    if p.total_bytes <= budget {
        return out;
    }
    if let Some(c) = f.max_ctx(budget, seqs, kv, threads) {
        out.push(format!(
            "--ctx {c} (largest context that fits with {} KV)",
            kv.name()
        ));
    }
    for k in KvType::ALL {
        if k != kv && plan(&f.input(ctx, seqs, k, threads)).total_bytes <= budget {
            out.push(format!(
                "--kv-type {} (the whole --ctx {ctx} fits)",
                k.name()
            ));
        }
    }
    if seqs > 1 {
        let s = f.max_seqs(budget, ctx, kv, threads);
        if s >= 1 {
            out.push(format!("--seqs {s}"));
        }
    }
    out.push(format!(
        "--budget {} (what this plan needs)",
        Bytes(p.total_bytes)
    ));
    out
}

pub fn run(a: &PlanArgs) -> Result<(), CliError> {
    limits::context("--ctx", a.ctx)?;
    limits::count("--seqs", a.seqs, 1, limits::MAX_SEQS)?;
    let threads = a.threads.resolve();
    let limit = crate::fit::Limit::of(&a.budget)?;
    let (budget_bytes, source) = (limit.total_bytes, limit.source);
    let model = crate::catalog::resolve(&a.model)?;
    let f = facts(&model)?;
    limits::warn_past_training(&format!("--ctx {}", a.ctx), a.ctx, &f.cfg);
    let p = plan(&f.input(a.ctx, a.seqs, a.kv_type, threads));
    let fits = p.total_bytes <= budget_bytes;
    let copy = crate::tier::load().and_then(|t| t.dram_copy_gb_s);
    let per_token = p.weights_bytes.saturating_add(p.kv_bytes / a.seqs as u64);
    let report = PlanReport {
        model: model.display().to_string(),
        ctx: a.ctx,
        seqs: a.seqs,
        kv_type: a.kv_type,
        threads,
        weights_bytes: p.weights_bytes,
        tokenizer_bytes: p.tokenizer_bytes,
        kv_bytes: p.kv_bytes,
        scratch_bytes: p.scratch_bytes,
        runtime_bytes: p.runtime_bytes,
        total_bytes: p.total_bytes,
        budget_bytes,
        budget_source: source,
        fits,
        shortfall_bytes: p.total_bytes.saturating_sub(budget_bytes),
        fits_by_kv_type: KvType::ALL
            .iter()
            .map(|&k| Fit {
                kv_type: k,
                kv_bytes_per_token: kv_bytes_per_token(k, &f.cfg, a.ctx),
                max_ctx: f.max_ctx(budget_bytes, a.seqs, k, threads),
                max_seqs_at_ctx: f.max_seqs(budget_bytes, a.ctx, k, threads),
            })
            .collect(),
        suggestions: suggestions(&f, &p, budget_bytes, a.ctx, a.seqs, a.kv_type, threads),
        memory_copy_gb_s: copy,
        decode_bound_tok_s: copy.map(|g| g * 1e9 / per_token.max(1) as f64),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else if a.yaml {
        let y = serde_saphyr::to_string(&report)
            .map_err(|e| CliError::Runtime(anyhow::anyhow!("{e}")))?;
        write!(out, "{y}")?;
    } else {
        write_table(&mut out, &report)?;
    }
    out.flush()?;
    Ok(())
}

/// The report as a table. Written, not printed: a closed stdout (`llmem plan | head -c
/// 0`) is an error that exits 0, where `println!` would panic.
fn write_table(out: &mut impl Write, r: &PlanReport) -> std::io::Result<()> {
    let b = |n: u64| Bytes(n).to_string();
    writeln!(
        out,
        "plan for {}  (ctx {}, {} seq, {} KV, {} threads)",
        r.model,
        r.ctx,
        r.seqs,
        r.kv_type.name(),
        r.threads
    )?;
    for (name, v, why) in [
        ("weights", r.weights_bytes, "mapped GGUF, resident"),
        ("tokenizer", r.tokenizer_bytes, "vocabulary tables"),
        (
            "kv",
            r.kv_bytes,
            "full context; windowed layers their window",
        ),
        ("scratch", r.scratch_bytes, "activations, attention, logits"),
        (
            "runtime",
            r.runtime_bytes,
            "code, thread stacks, allocator, KV re-encoding",
        ),
    ] {
        writeln!(out, "  {name:<10} {:>12}   {why}", b(v))?;
    }
    writeln!(out, "  {:<10} {:>12}", "total", b(r.total_bytes))?;
    writeln!(
        out,
        "  {:<10} {:>12}   ({})",
        "budget",
        b(r.budget_bytes),
        r.budget_source
    )?;
    if r.fits {
        writeln!(
            out,
            "fits, with {} to spare",
            b(r.budget_bytes - r.total_bytes)
        )?;
    } else {
        writeln!(out, "does NOT fit: short by {}", b(r.shortfall_bytes))?;
    }
    match (r.decode_bound_tok_s, r.memory_copy_gb_s) {
        (Some(t), Some(g)) => writeln!(
            out,
            "decode at most {t:.0} tok/s per sequence at full context (weights + its KV read \
             once per token at the measured {g:.1} GB/s memory rate)"
        )?,
        _ => writeln!(
            out,
            "run `llmem bench memory` once for a decode-speed bound"
        )?,
    }
    writeln!(
        out,
        "\n  kv type       bytes/token   largest ctx   seqs at ctx {}",
        r.ctx
    )?;
    for f in &r.fits_by_kv_type {
        let ctx = f
            .max_ctx
            .map_or_else(|| "none".to_string(), |c| c.to_string());
        writeln!(
            out,
            "  {:<12} {:>12} {:>13} {:>13}",
            f.kv_type.name(),
            f.kv_bytes_per_token,
            ctx,
            f.max_seqs_at_ctx
        )?;
    }
    if !r.suggestions.is_empty() {
        writeln!(out, "\nwhat would fit:")?;
        for s in &r.suggestions {
            writeln!(out, "  {s}")?;
        }
    }
    Ok(())
}
