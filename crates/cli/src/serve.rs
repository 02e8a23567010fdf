//! `llmem serve`: the OpenAI-compatible server (the `server` crate) on one model, inside
//! the budget the flags give.
//!
//! The port is bound first, so `/health` answers 503 while the model loads. The budget
//! is checked before any weight page is read: the weights, the scratch and one short
//! sequence must fit; the KV of the sequences then grows block by block in the ledger's
//! `kv` pool, and each request is admitted only if its prompt plus `max_tokens` can ever
//! fit there.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use engine::batch::BatchConfig;
use engine::sched::SchedConfig;
use engine::sched::service::Service;
use engine::shared::SharedModel;

use crate::exit::{CliError, input};
use crate::limits;
use crate::plan::KvType;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Path to a GGUF model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Address to listen on (loopback by default; anything else needs a reason and a key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    #[command(flatten)]
    pub budget: crate::plan::BudgetArgs,
    /// KV cache type (see `llmem plan` for what each costs).
    #[arg(long, default_value = "f16", value_parser = crate::plan::kv_type_parser())]
    pub kv_type: KvType,
    /// Context of one request in tokens (prompt + generated).
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Most requests waiting beyond the running ones; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` (default: the LLMEM_API_KEY variable, if set).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Request log lines as text or JSON (on stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Seconds a client has to send a request head (and three times this for its body);
    /// slower clients are disconnected.
    #[arg(long, default_value_t = 10)]
    pub client_timeout: u64,
    #[command(flatten)]
    pub threads: crate::threads::ThreadsArgs,
}

pub fn run(a: &ServeArgs) -> Result<(), CliError> {
    limits::context("--ctx", a.ctx)?;
    limits::count("--parallel", a.parallel, 1, limits::MAX_SEQS)?;
    limits::count("--queue", a.queue, 0, 1 << 20)?;
    limits::count("--client-timeout", a.client_timeout as usize, 1, 3600)?;
    let threads = a.threads.resolve();
    let limit = crate::fit::Limit::of(&a.budget)?;
    let facts = crate::plan::facts(&a.model)?;
    limits::warn_past_training(&format!("--ctx {}", a.ctx), a.ctx, &facts.cfg);
    // The least that must fit: the weights, the scratch and one short sequence.
    let least = engine::memory::plan(&facts.input(16, 1, a.kv_type, threads));
    limit.check("serving this model", least.total_bytes, || {
        vec![format!(
            "--budget {} (the weights, the scratch and one short sequence)",
            budget::Bytes(least.total_bytes)
        )]
    })?;
    let full = engine::memory::plan(&facts.input(a.ctx, a.parallel, a.kv_type, threads));
    if full.total_bytes > limit.usable_bytes {
        let seqs = facts.max_seqs(limit.usable_bytes, a.ctx, a.kv_type, threads);
        crate::out::note(&format!(
            "llmem serve: {} sequences of --ctx {} need {} but {} allows {}: {seqs} fit at \
             full context; requests are admitted by what each needs, and the rest wait",
            a.parallel,
            a.ctx,
            budget::Bytes(full.total_bytes),
            limit.source,
            budget::Bytes(limit.usable_bytes),
        ));
    }
    let api_key = a
        .api_key
        .clone()
        .or_else(|| std::env::var("LLMEM_API_KEY").ok())
        .filter(|k| !k.is_empty());
    if !a.host.is_loopback() && api_key.is_none() {
        crate::out::note(&format!(
            "llmem serve: listening on {} without an API key: anyone who reaches it may use it",
            a.host
        ));
    }
    let accounts = limit.accounts()?;
    let model_id = a
        .model
        .file_stem()
        .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let opts = server::Options {
        api_key: api_key.clone(),
        model_id: model_id.clone(),
        log_json: a.log_format == LogFormat::Json,
        ledger: Some(accounts.budget.clone()),
        head_timeout: std::time::Duration::from_secs(a.client_timeout),
        body_timeout: std::time::Duration::from_secs(a.client_timeout.saturating_mul(3)),
        ..server::Options::default()
    };
    let srv = server::Server::bind(SocketAddr::new(a.host, a.port), opts).map_err(|e| {
        input(anyhow::anyhow!(
            "cannot listen on {}:{}: {e}",
            a.host,
            a.port
        ))
    })?;
    let addr = srv.local_addr();
    let auth = if api_key.is_some() {
        " -H 'Authorization: Bearer $LLMEM_API_KEY'"
    } else {
        ""
    };
    println!("llmem serve: listening on http://{addr} (model {model_id}, loading)");
    println!(
        "  try: curl http://{addr}/v1/chat/completions -H 'Content-Type: application/json'{auth} \
         -d '{{\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}],\"max_tokens\":32}}'"
    );
    let loaded = (|| -> Result<Service, CliError> {
        let model = SharedModel::load(&a.model, &accounts)
            .map_err(|e| input(anyhow::anyhow!("cannot load {}: {e}", a.model.display())))?;
        let batch = BatchConfig {
            kv_mix: a.kv_type.mix(),
            ..BatchConfig::new(a.ctx, a.parallel, threads)
        };
        let sched = SchedConfig {
            max_running: a.parallel,
            queue_cap: a.queue,
            ..SchedConfig::default()
        };
        Ok(Service::start(model, batch, sched, accounts.clone())?)
    })();
    let svc = match loaded {
        Ok(s) => Arc::new(s),
        Err(e) => {
            srv.failed(match &e {
                CliError::Input(e) | CliError::Runtime(e) => e.to_string(),
            });
            return Err(e);
        }
    };
    let fits = svc.max_request_tokens();
    let kv_avail = (fits as u64).saturating_mul(crate::plan::kv_bytes_per_token(
        a.kv_type, &facts.cfg, a.ctx,
    ));
    let cfg = facts.cfg.clone();
    let (kv, ctx) = (a.kv_type, a.ctx);
    let hint: server::FitHint = Arc::new(move |needed: usize| {
        let mut tips = Vec::new();
        for k in KvType::ALL {
            let per = crate::plan::kv_bytes_per_token(k, &cfg, ctx).max(1);
            let n = (kv_avail / per) as usize;
            if k != kv && n >= needed {
                tips.push(format!("--kv-type {} would fit {n}", k.name()));
            }
        }
        let more = (needed.saturating_sub(fits) as u64)
            .saturating_mul(crate::plan::kv_bytes_per_token(kv, &cfg, ctx));
        tips.push(format!(
            "a --budget {} larger would fit it with {} KV",
            budget::Bytes(more),
            kv.name()
        ));
        tips.join("; ")
    });
    srv.set_fit_hint(hint);
    // The machine's pressure reaches the KV cache through the ledger (the scheduler
    // preempts and recomputes rather than let the machine swap).
    let _pressure = crate::pressure::Watcher::start(
        Box::new(probe::NativeProbe::new()),
        accounts.budget.clone(),
        accounts.kv,
        std::time::Duration::from_secs(1),
    )
    .map_err(|e| crate::out::note(&format!("llmem serve: no pressure watcher: {e}")))
    .ok();
    srv.ready(svc, a.parallel);
    println!(
        "llmem serve: ready; one request holds up to {fits} tokens (--ctx {}, {} KV), {} at once",
        a.ctx,
        a.kv_type.name(),
        a.parallel
    );
    srv.join();
    Ok(())
}
