//! `llmem serve`: the OpenAI-compatible server (the `server` crate) on one or more models,
//! inside the budget the flags give.
//!
//! The port is bound first, so `/health` answers 503 while the first model loads. The
//! budget is checked before any weight page is read: each model's weights, scratch and
//! one short sequence must fit; the KV of the sequences then grows block by block in the
//! ledger's `kv` pool, and each request is admitted only if its prompt plus `max_tokens`
//! can ever fit there. The other models load on first use, the server unloading idle ones
//! (least recently used first) when the ledger lacks the room.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
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
    /// A GGUF model: a path, a catalog name or a file in the models folder, optionally
    /// `ALIAS=MODEL`. Repeat it to serve several: a request's `model` picks one (its
    /// alias, file stem or catalog name); the first loads at start, the others on first
    /// use.
    #[arg(long, required = true)]
    pub model: Vec<String>,
    /// How long a model stays loaded after its last request (`30s`, `5m`, `1h`; 0 unloads
    /// it at once, -1 never); a request's `keep_alive` overrides it. Default: a single
    /// model stays loaded; with several, each is unloaded 5m after its last request.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_keep_alive)]
    pub keep_alive: Option<server::KeepAlive>,
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
    #[command(flatten)]
    pub kv_dir: crate::kvdir::KvDirArgs,
}

fn parse_keep_alive(s: &str) -> Result<server::KeepAlive, String> {
    server::KeepAlive::parse_str(s)
        .ok_or_else(|| format!("{s:?} is not a duration: use 30s, 5m, 1h, 0 or -1"))
}

/// One `--model` argument: the name it is served as, its other names, and its file.
struct Named {
    id: String,
    aliases: Vec<String>,
    path: PathBuf,
}

fn named(arg: &str) -> Result<Named, CliError> {
    let (alias, model) = match arg.split_once('=') {
        Some((a, m)) if !a.is_empty() && !a.contains('/') && !Path::new(arg).exists() => {
            (Some(a.to_string()), m)
        }
        _ => (None, arg),
    };
    let path = crate::catalog::resolve(Path::new(model))?;
    let stem = path
        .file_stem()
        .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let mut aliases = vec![stem.clone()];
    if !model.contains(std::path::MAIN_SEPARATOR) && !model.contains('/') {
        aliases.push(model.to_string());
    }
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
    if let Some(e) = crate::catalog::find(model).or_else(|| crate::catalog::find(file)) {
        aliases.push(e.name.to_string());
        aliases.extend(e.aliases.iter().map(|a| (*a).to_string()));
    }
    let id = alias.unwrap_or(stem);
    let mut seen = std::collections::HashSet::new();
    aliases.retain(|a| *a != id && seen.insert(a.clone()));
    Ok(Named { id, aliases, path })
}

pub fn run(a: &ServeArgs) -> Result<(), CliError> {
    limits::context("--ctx", a.ctx)?;
    limits::count("--parallel", a.parallel, 1, limits::MAX_SEQS)?;
    limits::count("--queue", a.queue, 0, 1 << 20)?;
    limits::count("--client-timeout", a.client_timeout as usize, 1, 3600)?;
    let threads = a.threads.resolve();
    let kv_dir_max = crate::kvdir::parse_max(&a.kv_dir.kv_dir_max)?;
    let limit = crate::fit::Limit::of(&a.budget)?;
    let mut models = Vec::new();
    for arg in &a.model {
        let n = named(arg)?;
        if let Some(o) = models.iter().find(|(m, _): &&(Named, _)| m.id == n.id) {
            return Err(input(anyhow::anyhow!(
                "two --model arguments are both named {}: give one an alias (ALIAS=MODEL); \
                 {} and {}",
                n.id,
                o.0.path.display(),
                n.path.display()
            )));
        }
        let facts = crate::plan::facts(&n.path)?;
        limits::warn_past_training(&format!("--ctx {}", a.ctx), a.ctx, &facts.cfg);
        // The least that must fit: the weights, the scratch and one short sequence.
        let least = engine::memory::plan(&facts.input(16, 1, a.kv_type, threads));
        limit.check(&format!("serving {}", n.id), least.total_bytes, || {
            vec![format!(
                "--budget {} (the weights, the scratch and one short sequence)",
                budget::Bytes(least.total_bytes)
            )]
        })?;
        let full = engine::memory::plan(&facts.input(a.ctx, a.parallel, a.kv_type, threads));
        if full.total_bytes > limit.usable_bytes {
            let seqs = facts.max_seqs(limit.usable_bytes, a.ctx, a.kv_type, threads);
            crate::out::note(&format!(
                "llmem serve: {}: {} sequences of --ctx {} need {} but {} allows {}: {seqs} fit \
                 at full context; requests are admitted by what each needs, and the rest wait",
                n.id,
                a.parallel,
                a.ctx,
                budget::Bytes(full.total_bytes),
                limit.source,
                budget::Bytes(limit.usable_bytes),
            ));
        }
        models.push((n, (facts, least)));
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
    let specs: Vec<server::ModelSpec> = models
        .iter()
        .map(|(n, (_, least))| server::ModelSpec {
            id: n.id.clone(),
            aliases: n.aliases.clone(),
            // What the ledger must have free: all but the process's own runtime line.
            need_bytes: least.total_bytes.saturating_sub(least.runtime_bytes),
        })
        .collect();
    let loader = {
        let files: Vec<(PathBuf, engine::config::ModelConfig)> = models
            .iter()
            .map(|(n, (f, _))| (n.path.clone(), f.cfg.clone()))
            .collect();
        let accounts = accounts.clone();
        let opts = LoadOpts {
            ctx: a.ctx,
            parallel: a.parallel,
            queue: a.queue,
            kv: a.kv_type,
            threads,
            kv_dir: a.kv_dir.kv_dir.clone(),
            kv_dir_max,
        };
        let l: server::Loader = Arc::new(move |i: usize| {
            let (path, cfg) = &files[i];
            load(path, cfg, &accounts, &opts).map_err(|e| match e {
                CliError::Input(e) | CliError::Runtime(e) => e.to_string(),
            })
        });
        l
    };
    let first = models[0].0.id.clone();
    let opts = server::Options {
        api_key: api_key.clone(),
        models: specs,
        keep_alive: a.keep_alive.unwrap_or(if models.len() == 1 {
            server::KeepAlive::Forever
        } else {
            server::KeepAlive::For(std::time::Duration::from_secs(300))
        }),
        loader: Some(loader.clone()),
        log_json: a.log_format == LogFormat::Json,
        ledger: Some(accounts.budget.clone()),
        head_timeout: std::time::Duration::from_secs(a.client_timeout),
        body_timeout: std::time::Duration::from_secs(a.client_timeout.saturating_mul(3)),
        queue_limit: a.queue,
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
    let others = if models.len() > 1 {
        format!(", {} more on first use", models.len() - 1)
    } else {
        String::new()
    };
    println!("llmem serve: listening on http://{addr} (model {first}, loading{others})");
    println!(
        "  try: curl http://{addr}/v1/chat/completions -H 'Content-Type: application/json'{auth} \
         -d '{{\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}],\"max_tokens\":32}}'"
    );
    srv.loading(0);
    let loaded = match loader(0) {
        Ok(l) => l,
        Err(why) => {
            srv.failed(0, why.clone());
            return Err(input(anyhow::anyhow!("{why}")));
        }
    };
    let fits = loaded.svc.max_request_tokens();
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
    srv.ready(0, loaded);
    println!(
        "llmem serve: ready; one request holds up to {fits} tokens (--ctx {}, {} KV), {} at once",
        a.ctx,
        a.kv_type.name(),
        a.parallel
    );
    srv.join();
    Ok(())
}

/// How every model is served.
struct LoadOpts {
    ctx: usize,
    parallel: usize,
    queue: usize,
    kv: KvType,
    threads: usize,
    kv_dir: Option<PathBuf>,
    kv_dir_max: u64,
}

/// Loads one model under `accounts` and starts its scheduler, with what a request refused
/// for its size is told would fit.
fn load(
    path: &Path,
    cfg: &engine::config::ModelConfig,
    accounts: &engine::memory::Accounts,
    o: &LoadOpts,
) -> Result<server::Loaded, CliError> {
    let (ctx, parallel, kv) = (o.ctx, o.parallel, o.kv);
    let model = SharedModel::load(path, accounts)
        .map_err(|e| input(anyhow::anyhow!("cannot load {}: {e}", path.display())))?;
    let batch = BatchConfig {
        kv_mix: kv.mix(),
        ..BatchConfig::new(ctx, parallel, o.threads)
    };
    // Each model's prefixes in a directory of their own under --kv-dir (the store's name
    // covers the model's bytes, the KV type and the evaluation).
    let prefix_store = o.kv_dir.as_deref().and_then(|dir| {
        crate::kvdir::open_prefix_store(&batch, model.file(), dir, kv.name(), o.kv_dir_max)
    });
    let sched = SchedConfig {
        max_running: parallel,
        queue_cap: o.queue,
        prefix_store,
        ..SchedConfig::default()
    };
    let svc = Arc::new(Service::start(model, batch, sched, accounts.clone())?);
    let fits = svc.max_request_tokens();
    // One sequence's KV at its longest (sliding-window layers count their window only).
    let kv_avail = crate::plan::kv_seq_bytes(kv, cfg, fits);
    let cfg = cfg.clone();
    let hint: server::FitHint = Arc::new(move |needed: usize| {
        let mut tips = Vec::new();
        for k in KvType::ALL {
            let n = crate::plan::kv_tokens_within(k, &cfg, kv_avail, ctx);
            if k != kv && n >= needed {
                tips.push(format!("--kv-type {} would fit {n}", k.name()));
            }
        }
        let more = crate::plan::kv_seq_bytes(kv, &cfg, needed).saturating_sub(kv_avail);
        tips.push(format!(
            "a --budget {} larger would fit it with {} KV",
            budget::Bytes(more),
            kv.name()
        ));
        tips.join("; ")
    });
    Ok(server::Loaded {
        svc,
        max_running: parallel,
        hint: Some(hint),
    })
}
