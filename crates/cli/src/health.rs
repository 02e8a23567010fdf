//! `llmem health`: one reading of the machine and this process, scored, with what to change.
//!
//! The numbers and the score come from the probe crate (`Monitor` → `HealthReport`); this
//! module only gathers the model facts the probe cannot know (`--model`, `--ctx`) and
//! prints. The text writers here are shared with `llmem monitor --once`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use probe::{
    Alert, HealthContext, HealthReport, Monitor, NativeProbe, PressureLevel, PressureSource,
    Rating, Sample, format_bytes,
};

use crate::exit::{CliError, input};
use crate::load;

/// `llmem run`'s default context, assumed when `--model` comes without `--ctx`.
const DEFAULT_CTX_TOKENS: u64 = 4096;

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Print the report as JSON (probe's HealthReport; schema:
    /// crates/probe/health-report.schema.json).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// The model a report is about, so that recommendations on KV and context can be made.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// A GGUF model (a file, or a catalog model's name): its weights and its KV cache at
    /// --ctx feed the recommendations.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Context length the model would run with [default: 4096, as `llmem run`].
    #[arg(long, value_name = "N", requires = "model", value_parser = clap::value_parser!(u64).range(1..))]
    pub ctx: Option<u64>,
}

/// What a GGUF file says about the memory it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFacts {
    pub path: PathBuf,
    /// Sum of the tensors' sizes in the file.
    pub weight_bytes: u64,
    /// Hot-tier (f16) KV per context position: layers × 2 × KV heads × head dim × 2.
    pub kv_bytes_per_token: u64,
    /// The KV at full context as int8 (`--kv-type int8`), from the block format itself.
    pub kv_int8_bytes: u64,
    pub ctx_tokens: u64,
}

impl ModelFacts {
    /// Reads the GGUF header of `path`. The mapping is dropped before returning, so the
    /// file's pages do not count in the process's footprint of a later sample.
    pub fn read(path: &Path, ctx_tokens: Option<u64>) -> Result<Self, CliError> {
        if let Some(ctx) = ctx_tokens {
            crate::limits::context("--ctx", usize::try_from(ctx).unwrap_or(usize::MAX))?;
        }
        let path = &crate::catalog::resolve(path)?;
        let file = load::map(path)?;
        let gguf = gguf::GgufFile::parse(file.bytes())
            .with_context(|| format!("{} is not a usable GGUF file", path.display()))
            .map_err(input)?;
        let config = engine::config::ModelConfig::from_gguf(&gguf)
            .with_context(|| format!("cannot read the model shape of {}", path.display()))
            .map_err(input)?;
        let weight_bytes = gguf.tensors().iter().map(|t| t.size_bytes()).sum();
        let ctx = ctx_tokens.unwrap_or(DEFAULT_CTX_TOKENS);
        // Within 1..=MAX_CTX_TOKENS after `limits::context` (2^24), so it fits a usize.
        let ctx_usize = usize::try_from(ctx).unwrap_or(usize::MAX);
        let int8_per_token =
            crate::plan::kv_bytes_per_token(crate::plan::KvType::Int8, &config, ctx_usize);
        Ok(Self {
            path: path.to_owned(),
            weight_bytes,
            // The plan's f16 figure: sliding-window layers count their window only.
            kv_bytes_per_token: crate::plan::kv_bytes_per_token(
                crate::plan::KvType::F16,
                &config,
                ctx_usize,
            ),
            kv_int8_bytes: int8_per_token.saturating_mul(ctx),
            ctx_tokens: ctx,
        })
    }

    /// f16 KV at full context.
    pub fn kv_bytes(&self) -> u64 {
        self.ctx_tokens.saturating_mul(self.kv_bytes_per_token)
    }

    /// The probe's view of it. The KV is counted at full context in f16: that is what a
    /// run at this `--ctx` holds once its context is full.
    pub fn context(&self) -> HealthContext {
        HealthContext::new()
            .with_model_weights(self.weight_bytes)
            .with_ctx(self.ctx_tokens, self.kv_bytes_per_token)
            .with_kv_f16(self.kv_bytes())
            .with_kv_int8(self.kv_int8_bytes)
    }
}

impl ModelArgs {
    /// The model's facts, if `--model` was given.
    pub fn facts(&self) -> Result<Option<ModelFacts>, CliError> {
        self.model
            .as_deref()
            .map(|path| ModelFacts::read(path, self.ctx))
            .transpose()
    }
}

pub fn run(args: &HealthArgs) -> Result<(), CliError> {
    let facts = args.model.facts()?;
    let context = facts
        .as_ref()
        .map_or_else(HealthContext::new, ModelFacts::context);
    let mut monitor = Monitor::new(NativeProbe::new());
    // No ledger: this process loads no model, so it reserves nothing, and an empty ledger
    // would claim the whole process as drift.
    monitor.sample(None).context("reading the memory probe")?;
    let report = monitor.health(&context).context("no sample taken")?;
    let sample = monitor.latest().context("no sample taken")?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if args.json {
        // Serialized first so that a write failure stays an io::Error (a closed pipe is
        // success, see exit.rs).
        let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
        writeln!(out, "{json}")?;
    } else {
        write_memory(&mut out, sample)?;
        write_process(&mut out, sample)?;
        if let Some(facts) = &facts {
            write_model(&mut out, facts)?;
        }
        write_pressure(&mut out, sample)?;
        write_health(&mut out, &report)?;
    }
    out.flush()?;
    Ok(())
}

pub fn level_name(level: PressureLevel) -> &'static str {
    match level {
        PressureLevel::Normal => "normal",
        PressureLevel::Warning => "warning",
        PressureLevel::Critical => "critical",
    }
}

pub fn source_name(source: PressureSource) -> &'static str {
    match source {
        PressureSource::MemAvailable => "mem_available",
        PressureSource::Cgroup => "cgroup",
        PressureSource::PsiSome => "psi_some",
        PressureSource::PsiFull => "psi_full",
        PressureSource::MacosLevel => "macos_level",
        PressureSource::Scripted => "scripted",
    }
}

pub fn rating_name(rating: Rating) -> &'static str {
    match rating {
        Rating::Critical => "critical",
        Rating::Poor => "poor",
        Rating::Fair => "fair",
        Rating::Good => "good",
        Rating::Excellent => "excellent",
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Memory by the OS's categories, swap, and GPUs.
pub fn write_memory(out: &mut impl Write, sample: &Sample) -> io::Result<()> {
    let s = &sample.system;
    let limit = s.memory_limit_bytes();
    if limit < s.mem_total_bytes {
        writeln!(
            out,
            "memory limit: {} (this process's cgroup; plans and budgets start here)",
            format_bytes(limit)
        )?;
    }
    writeln!(
        out,
        "memory: total {}, available {} ({:.0}%), free {}, cached {}",
        format_bytes(s.mem_total_bytes),
        format_bytes(s.mem_available_bytes),
        percent(s.mem_available_bytes, s.mem_total_bytes),
        format_bytes(s.mem_free_bytes),
        format_bytes(s.cached_bytes),
    )?;
    for c in &s.categories {
        writeln!(
            out,
            "  {:<14} {:>10}  {:>3.0}%",
            c.name,
            format_bytes(c.bytes),
            percent(c.bytes, s.mem_total_bytes)
        )?;
    }
    writeln!(
        out,
        "swap: {} used of {}",
        format_bytes(s.swap_used_bytes),
        format_bytes(s.swap_total_bytes)
    )?;
    if let Some(f) = s.fragmentation {
        writeln!(
            out,
            "fragmentation: {:.0}% of free memory unusable for 2 MiB blocks",
            f * 100.0
        )?;
    }
    for g in &sample.gpus {
        writeln!(
            out,
            "gpu {} {}: {} used of {}, {} free",
            g.index,
            g.name,
            format_bytes(g.used_bytes),
            format_bytes(g.total_bytes),
            format_bytes(g.free_bytes)
        )?;
    }
    Ok(())
}

/// This process's footprint.
pub fn write_process(out: &mut impl Write, sample: &Sample) -> io::Result<()> {
    let p = &sample.process;
    let kind = if p.phys_footprint_bytes.is_some() {
        "phys_footprint"
    } else {
        "rss"
    };
    write!(
        out,
        "process: {} ({kind})",
        format_bytes(p.footprint_bytes())
    )?;
    for (name, v) in [
        ("anon", p.rss_anon_bytes),
        ("file", p.rss_file_bytes),
        ("peak", p.rss_peak_bytes),
        ("swap", p.swap_bytes),
    ] {
        if let Some(v) = v {
            write!(out, ", {name} {}", format_bytes(v))?;
        }
    }
    writeln!(out)
}

pub fn write_model(out: &mut impl Write, m: &ModelFacts) -> io::Result<()> {
    writeln!(
        out,
        "model: {}: weights {} ({} bytes), KV f16 at ctx {}: {} ({} bytes per token)",
        m.path.display(),
        format_bytes(m.weight_bytes),
        m.weight_bytes,
        m.ctx_tokens,
        format_bytes(m.kv_bytes()),
        m.kv_bytes_per_token
    )
}

/// The one-line pressure summary: value, level, the signal that set it.
pub fn pressure_summary(sample: &Sample) -> String {
    let p = &sample.pressure;
    format!(
        "pressure: {:.2} {} (source: {})",
        p.value,
        level_name(p.level),
        source_name(p.source)
    )
}

/// The raw pressure signals, where known.
pub fn pressure_signals(sample: &Sample) -> Vec<String> {
    let signals = &sample.system.signals;
    let mut lines = Vec::new();
    if let Some(psi) = &signals.psi {
        let mut line = format!("PSI some avg10 {:.2}%", psi.some.avg10_pct);
        if let Some(full) = &psi.full {
            line.push_str(&format!(", full avg10 {:.2}%", full.avg10_pct));
        }
        lines.push(line);
    }
    if let Some(cg) = &signals.cgroup {
        let limit = cg
            .max_bytes
            .map_or_else(|| "no limit".to_owned(), format_bytes);
        let version = match cg.version {
            probe::parse::CgroupVersion::V1 => "v1",
            _ => "v2",
        };
        lines.push(format!(
            "cgroup {version} working set {} of {limit}",
            format_bytes(cg.working_set_bytes())
        ));
    }
    if let Some(level) = &signals.macos_level {
        lines.push(format!("macOS pressure level {level:?}").to_lowercase());
    }
    lines
}

pub fn write_pressure(out: &mut impl Write, sample: &Sample) -> io::Result<()> {
    write!(out, "{}", pressure_summary(sample))?;
    for line in pressure_signals(sample) {
        write!(out, "; {line}")?;
    }
    writeln!(out)
}

/// Active alerts.
pub fn write_alerts(out: &mut impl Write, alerts: &[Alert]) -> io::Result<()> {
    if alerts.is_empty() {
        return writeln!(out, "alerts: none");
    }
    writeln!(out, "alerts:")?;
    for a in alerts {
        writeln!(
            out,
            "  {} {:.2} (threshold {:.2})",
            a.kind.name(),
            a.value,
            a.threshold
        )?;
    }
    Ok(())
}

/// Score, rating, components and each recommendation.
pub fn write_health(out: &mut impl Write, report: &HealthReport) -> io::Result<()> {
    writeln!(
        out,
        "health: {:.2} {}",
        report.health_score,
        rating_name(report.rating)
    )?;
    for c in &report.components {
        match c.score {
            Some(score) => writeln!(
                out,
                "  {:<22} weight {:.2}  score {:.2}",
                c.component.name(),
                c.weight,
                score
            )?,
            None => writeln!(
                out,
                "  {:<22} weight {:.2}  unknown (left out)",
                c.component.name(),
                c.weight
            )?,
        }
    }
    if report.recommendations.is_empty() {
        return writeln!(out, "recommendations: none");
    }
    writeln!(out, "recommendations:")?;
    for (i, r) in report.recommendations.iter().enumerate() {
        writeln!(out, "  {}. {}", i + 1, r.message)?;
        writeln!(out, "     setting: {}", r.setting)?;
        writeln!(out, "     effect: {}", r.effect)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use probe::{FakeProbe, ProcessSnapshot, RecommendationKind, Sample, SystemSnapshot};

    use super::*;

    const GIB: u64 = 1 << 30;

    fn recommendations(
        system: SystemSnapshot,
        process: ProcessSnapshot,
        context: &HealthContext,
    ) -> Vec<probe::Recommendation> {
        let fake = FakeProbe::new();
        fake.set_system(system);
        fake.set_process(process);
        let sample = Sample::capture(&fake, None, 0).unwrap();
        HealthReport::assess(&sample, None, context).recommendations
    }

    #[test]
    fn finding9_every_recommended_flag_parses_as_llmem_run() {
        let mut all = Vec::new();
        // Tight memory and swap in use: int8 KV and a shorter context.
        let mut process = ProcessSnapshot::new(12 * GIB);
        process.swap_bytes = Some(GIB);
        all.extend(recommendations(
            SystemSnapshot::new(16 * GIB, GIB),
            process,
            &HealthContext::new()
                .with_kv_f16(6 * GIB)
                .with_kv_int8(3 * GIB)
                .with_ctx(8192, 768 * 1024),
        ));
        // KV at full context filling memory; then weights alone filling it.
        let roomy = SystemSnapshot::new(32 * GIB, 30 * GIB);
        all.extend(recommendations(
            roomy.clone(),
            ProcessSnapshot::new(GIB),
            &HealthContext::new()
                .with_model_weights(2 * GIB)
                .with_kv_f16(30 * GIB)
                .with_ctx(32_768, 30 * GIB / 32_768),
        ));
        all.extend(recommendations(
            roomy,
            ProcessSnapshot::new(GIB),
            &HealthContext::new().with_model_weights(31 * GIB),
        ));
        let flagged: Vec<_> = all.iter().filter(|r| r.setting.starts_with("--")).collect();
        for kind in [
            RecommendationKind::KvInt8,
            RecommendationKind::LowerCtx,
            RecommendationKind::FitMemory,
        ] {
            assert!(
                flagged.iter().any(|r| r.kind == kind),
                "{kind:?} not exercised: {all:?}"
            );
        }
        assert!(flagged.iter().any(|r| r.setting.starts_with("--model")));
        for r in flagged {
            let mut argv = vec!["llmem", "run", "--prompt", "hi"];
            if !r.setting.starts_with("--model") {
                argv.extend(["--model", "m.gguf"]);
            }
            argv.extend(r.setting.split_whitespace());
            if let Err(e) = crate::Cli::try_parse_from(&argv) {
                panic!(
                    "{:?} recommends `{}`, which llmem run refuses: {e}",
                    r.kind, r.setting
                );
            }
        }
    }
}
