//! An OpenAI-compatible HTTP server over a scheduler per loaded model, admitting every
//! request by the memory budget.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (JSON or SSE streams),
//! `GET /v1/models`, `POST /v1/embeddings`, `POST /tokenize`, `POST /detokenize`,
//! `GET /health` (503 until the first model is loaded), `GET /metrics` (Prometheus
//! text), `GET /api/ps` and `GET /v1/llmem/status` (what is loaded; see [`models`]).
//!
//! Every generation request is planned before it is accepted: its prompt plus
//! `max_tokens` must fit the context and the KV the budget holds for one sequence, or it
//! is refused with a 400 that says what would fit; a full queue is a 503 with
//! `Retry-After`. Accepted work is never truncated. A client that goes away cancels its
//! sequences.
//!
//! The HTTP layer is hyper's HTTP/1 server on tokio, as the metrics endpoint: each
//! connection has a head-size cap (431), a timeout for its request head and one for its
//! body (slow clients are closed), and a body-size cap (413). Nothing a client sends ends
//! the server.

mod chat;
pub mod client;
mod embed;
mod error;
mod generate;
mod hook;
pub mod json;
mod metrics;
pub mod models;
mod sse;
mod stop;

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::sched::service::Service;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub use error::ApiError;
use generate::{GenBody, Job, Kind, Update};
use hook::Vocab;
use metrics::Metrics;
pub use models::{KeepAlive, Loaded, Loader, ModelSpec};
use models::{Lease, Models};

/// Tells a refused request what would make it fit, given the KV tokens it needs.
pub type FitHint = Arc<dyn Fn(usize) -> String + Send + Sync>;

/// How the server behaves.
#[derive(Clone)]
pub struct Options {
    /// Requests must carry `Authorization: Bearer <key>` (all but `/health`, `/metrics`).
    pub api_key: Option<String>,
    /// The models it answers for (the first is the default); none: one named `llmem`.
    pub models: Vec<ModelSpec>,
    /// How long a model stays loaded after its last request, unless the request says.
    pub keep_alive: KeepAlive,
    /// Loads a model of `models` on first use (none: only what [`Server::ready`] sets).
    pub loader: Option<Loader>,
    /// One JSON object per request log line instead of text.
    pub log_json: bool,
    /// Largest request body (413 beyond).
    pub max_body_bytes: usize,
    /// Largest request head (431 beyond).
    pub max_head_bytes: usize,
    /// Time a client has to send a request head.
    pub head_timeout: Duration,
    /// Time a client has to send a request body.
    pub body_timeout: Duration,
    pub fit_hint: Option<FitHint>,
    /// The ledger whose pools `/metrics` shows.
    pub ledger: Option<budget::Budget>,
    /// Compute threads of the HTTP side (tokio workers).
    pub http_threads: usize,
    /// Requests that may wait beyond the running ones, of each model; requests waiting
    /// for a model to load count in it too.
    pub queue_limit: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            api_key: None,
            models: Vec::new(),
            keep_alive: KeepAlive::For(Duration::from_secs(300)),
            loader: None,
            log_json: false,
            max_body_bytes: 10 << 20,
            max_head_bytes: 16 << 10,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            fit_hint: None,
            ledger: None,
            http_threads: 2,
            queue_limit: 64,
        }
    }
}

/// What a loaded model brings.
pub struct Ready {
    svc: Arc<Service>,
    vocab: Arc<Vocab>,
    max_running: usize,
    hint: Option<FitHint>,
}

struct App {
    opts: Options,
    models: Arc<Models>,
    metrics: Metrics,
    next_id: AtomicU64,
}

/// A running server. Dropping it leaves it running; [`Server::join`] waits for it.
pub struct Server {
    addr: SocketAddr,
    app: Arc<App>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Binds `addr` and serves from background threads; `/health` answers 503 and the
    /// API 503 until [`Server::ready`].
    ///
    /// # Errors
    /// When the address cannot be bound or the runtime cannot start.
    pub fn bind(addr: SocketAddr, opts: Options) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.http_threads.max(1))
            .thread_name("llmem-http")
            .enable_io()
            .enable_time()
            .build()?;
        let mut specs = opts.models.clone();
        if specs.is_empty() {
            specs.push(ModelSpec {
                id: "llmem".into(),
                aliases: Vec::new(),
                need_bytes: 0,
            });
        }
        let models = Arc::new(Models::new(
            specs,
            opts.keep_alive,
            opts.loader.clone(),
            opts.ledger.clone(),
            opts.queue_limit,
        ));
        let app = Arc::new(App {
            opts,
            models,
            metrics: Metrics::default(),
            next_id: AtomicU64::new(1),
        });
        let a = app.clone();
        let thread = std::thread::Builder::new()
            .name("llmem-serve".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // Models whose keep-alive ran out are unloaded within a quarter second.
                    let m = a.models.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(Duration::from_millis(250)).await;
                            m.expire(Instant::now());
                        }
                    });
                    accept_loop(listener, a).await;
                });
            })?;
        Ok(Server { addr, app, thread })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Model `i` of [`Options::models`] is being loaded by the caller: requests for it
    /// wait for [`Server::ready`] (counted in the queue bound) instead of loading it.
    pub fn loading(&self, i: usize) {
        self.app.models.set_loading(i);
    }

    /// Starts answering with model `i` of [`Options::models`] loaded (its keep-alive
    /// runs from now).
    pub fn ready(&self, i: usize, loaded: Loaded) {
        self.app.models.set_loaded(i, loaded);
    }

    /// Model `i` could not be loaded: `/health` says why (for the first).
    pub fn failed(&self, i: usize, why: String) {
        self.app.models.set_failed(i, why);
    }

    /// Blocks while the server runs.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

async fn accept_loop(listener: TcpListener, app: Arc<App>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("llmem serve: cannot listen: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let a = app.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let a = a.clone();
                async move { Ok::<_, Infallible>(handle(&a, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(app.opts.head_timeout)
                .max_buf_size(app.opts.max_head_bytes.max(8192))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(v).expect("a Value serializes");
    let len = bytes.len();
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.status, &e.body());
    if let Some(s) = e.retry_after {
        r.headers_mut().insert("retry-after", HeaderValue::from(s));
    }
    r
}

/// An SSE body fed by a channel; dropped with the connection when the client goes.
struct SseBody(mpsc::UnboundedReceiver<Bytes>);

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub(crate) fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let open = matches!(path.as_str(), "/health" | "/metrics");
    if !open && let Some(key) = &app.opts.api_key {
        let ok = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|k| k.trim() == key);
        if !ok {
            app.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            let e = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "a valid API key is required: send Authorization: Bearer <key>",
            )
            .code("invalid_api_key");
            return error_response(&e);
        }
    }
    let r = route(app, &method, &path, req).await;
    match r {
        Ok(resp) => resp,
        Err(e) => {
            if e.status == StatusCode::BAD_REQUEST || e.status == StatusCode::PAYLOAD_TOO_LARGE {
                app.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
            }
            error_response(&e)
        }
    }
}

/// A lease on the model a request body's `model` names (the default without one),
/// loading it if needed, kept as its `keep_alive` says.
async fn lease(app: &App, body: &Value) -> Result<Lease, ApiError> {
    let i = app
        .models
        .resolve(body.get("model").and_then(Value::as_str))?;
    let keep = match body.get("keep_alive") {
        None | Some(Value::Null) => None,
        Some(v) => Some(KeepAlive::parse(v).map_err(|e| ApiError::invalid(e).param("keep_alive"))?),
    };
    if app.opts.loader.is_none() && !app.models.health().0 {
        let (_, failed) = app.models.health();
        return Err(models::loading_error(failed.as_deref()));
    }
    app.models.acquire(i, keep).await.inspect_err(|e| {
        if e.code == Some("queue_full") {
            app.metrics.rejected_queue.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// The id answers carry for the model a lease holds.
fn model_id(app: &App, l: &Lease) -> String {
    app.models.specs()[l.index()].id.clone()
}

async fn route(
    app: &Arc<App>,
    method: &Method,
    path: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let post = *method == Method::POST;
    let get = *method == Method::GET || *method == Method::HEAD;
    match path {
        "/health" | "/v1/health" if get => Ok(match app.models.health() {
            (true, _) => json_response(StatusCode::OK, &json!({"status": "ok"})),
            (false, Some(why)) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "error", "error": why}),
            ),
            (false, None) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "loading"}),
            ),
        }),
        "/metrics" if get => {
            let snap = app.models.snapshot();
            let body = app.metrics.render(snap.as_ref(), app.opts.ledger.as_ref());
            let mut resp = Response::new(full(body));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(probe::PROMETHEUS_CONTENT_TYPE),
            );
            resp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        "/v1/models" | "/models" if get => {
            let data: Vec<Value> = app
                .models
                .describe()
                .into_iter()
                .map(|m| {
                    json!({
                        "id": m["id"], "object": "model", "created": 0, "owned_by": "llmem",
                        "aliases": m["aliases"], "loaded": m["loaded"],
                        "weights_bytes": m["weights_bytes"], "kv_bytes": m["kv_bytes"],
                    })
                })
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": data}),
            ))
        }
        "/api/ps" if get => Ok(json_response(StatusCode::OK, &ps(app))),
        "/v1/llmem/status" if get => Ok(json_response(StatusCode::OK, &status(app))),
        "/v1/chat/completions" | "/chat/completions" if post => {
            generate(app, Kind::Chat, req).await
        }
        "/v1/completions" | "/completions" if post => generate(app, Kind::Completion, req).await,
        "/tokenize" if post => {
            let body = read_json(app, req).await?;
            let lease = lease(app, &body).await?;
            let r = &*lease.ready;
            let text = body
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid("content must be a string").param("content"))?;
            let special = body
                .get("add_special")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let tok = &r.svc.model().text().tokenizer;
            let ids: Vec<u32> = tok
                .encode(
                    text,
                    if special {
                        tokenizer::BosEos::Add
                    } else {
                        tokenizer::BosEos::Omit
                    },
                    tokenizer::Special::Parse,
                )
                .into_iter()
                .map(|t| t.0)
                .collect();
            Ok(json_response(StatusCode::OK, &json!({"tokens": ids})))
        }
        "/detokenize" if post => {
            let body = read_json(app, req).await?;
            let lease = lease(app, &body).await?;
            let r = &*lease.ready;
            let vocab = r.vocab.bytes.len();
            let ids: Vec<tokenizer::TokenId> = body
                .get("tokens")
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .map(|t| {
                            t.as_u64()
                                .filter(|&t| (t as usize) < vocab)
                                .map(|t| tokenizer::TokenId(t as u32))
                        })
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "tokens must be an array of token ids below {vocab}"
                    ))
                    .param("tokens")
                })?;
            let text = r
                .svc
                .model()
                .text()
                .tokenizer
                .decode(&ids, tokenizer::Render::Text)
                .map_err(|e| ApiError::invalid(e.to_string()))?;
            Ok(json_response(StatusCode::OK, &json!({"content": text})))
        }
        "/v1/embeddings" | "/embeddings" if post => {
            let arrived = Instant::now();
            let body = read_json(app, req).await?;
            app.metrics.requests.fetch_add(1, Ordering::Relaxed);
            if !body.is_object() {
                return Err(ApiError::invalid("the request body must be a JSON object"));
            }
            let lease = lease(app, &body).await?;
            let v = embed::answer(app, &lease, &body).await?;
            app.metrics.e2e.observe(arrived.elapsed().as_secs_f64());
            Ok(json_response(StatusCode::OK, &v))
        }
        "/health"
        | "/v1/health"
        | "/metrics"
        | "/v1/models"
        | "/models"
        | "/v1/chat/completions"
        | "/chat/completions"
        | "/v1/completions"
        | "/completions"
        | "/tokenize"
        | "/detokenize"
        | "/v1/embeddings"
        | "/embeddings"
        | "/api/ps"
        | "/v1/llmem/status" => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no such endpoint: {method} {path}"),
        )
        .code("unknown_url")),
    }
}

/// Reads a JSON body: 413 past the size cap, 408 when it does not arrive in time, 400
/// when it does not parse.
async fn read_json(app: &App, req: Request<Incoming>) -> Result<Value, ApiError> {
    let max = app.opts.max_body_bytes;
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    let body = Limited::new(req.into_body(), max);
    let bytes = match tokio::time::timeout(app.opts.body_timeout, body.collect()).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "the request body did not arrive in time",
            ));
        }
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(too_big());
            }
            return Err(ApiError::invalid(format!(
                "cannot read the request body: {e}"
            )));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))
}

async fn generate(
    app: &Arc<App>,
    kind: Kind,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let arrived = Instant::now();
    let value = read_json(app, req).await?;
    app.metrics.requests.fetch_add(1, Ordering::Relaxed);
    if !value.is_object() {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    }
    let lease = lease(app, &value).await?;
    let body: GenBody = serde_json::from_value(value)
        .map_err(|e| ApiError::invalid(format!("invalid request: {e}")))?;
    let r = &*lease.ready;
    let job = Job::parse(kind, body, r)?;
    let model = model_id(app, &lease);
    let running = generate::submit(app, r, &job, arrived)?;
    let n = app.next_id.fetch_add(1, Ordering::Relaxed);
    let id = match kind {
        Kind::Chat => format!("chatcmpl-{n}"),
        Kind::Completion => format!("cmpl-{n}"),
    };
    if job.stream {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let app2 = app.clone();
        tokio::spawn(async move {
            let r = &*lease.ready;
            sse::stream(&app2, r, &model, &job, running, &id, tx, arrived).await;
            drop(lease);
        });
        let mut resp = Response::new(SseBody(rx).boxed());
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(resp);
    }
    let choices = job.prompts.len() * job.n;
    let mut texts = vec![String::new(); choices];
    let mut lps: Vec<Vec<generate::Lp>> = vec![Vec::new(); choices];
    let mut reasons = vec!["stop"; choices];
    let totals = generate::drive(app, r, &job, running, |u| {
        match u {
            Update::Text {
                index,
                text,
                lps: l,
            } => {
                texts[index].push_str(&text);
                lps[index].extend(l);
            }
            Update::Finish { index, reason } => reasons[index] = reason,
        }
        true
    })
    .await;
    let totals = match totals {
        Ok(t) => t,
        Err(e) => {
            log(app, &id, None, arrived, e.status.as_u16());
            return Err(e);
        }
    };
    log(app, &id, Some(&totals), arrived, 200);
    let want_lp = job.top_logprobs.is_some();
    let choices: Vec<Value> = (0..choices)
        .map(|i| match kind {
            Kind::Chat => {
                let (message, reason) = match &job.tools {
                    Some(t) => {
                        let p = t.read(&texts[i]);
                        (p.message(), p.reason(reasons[i]))
                    }
                    None => (json!({"role": "assistant", "content": texts[i]}), reasons[i]),
                };
                json!({
                    "index": i,
                    "message": message,
                    "logprobs": if want_lp { json!({"content": generate::chat_lp(r, &lps[i])}) } else { Value::Null },
                    "finish_reason": reason,
                })
            }
            Kind::Completion => json!({
                "index": i,
                "text": texts[i],
                "logprobs": if want_lp { generate::completion_lp(r, &lps[i], &mut 0) } else { Value::Null },
                "finish_reason": reasons[i],
            }),
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": id,
            "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
            "created": now_s(),
            "model": model,
            "system_fingerprint": "llmem",
            "choices": choices,
            "usage": totals.json(),
        }),
    ))
}

/// One line per request on stderr: id, tokens, time to first token, speed, status.
pub(crate) fn log(
    app: &App,
    id: &str,
    t: Option<&generate::Totals>,
    arrived: Instant,
    status: u16,
) {
    let secs = arrived.elapsed().as_secs_f64();
    let t = t.copied().unwrap_or_default();
    let ttft = t.ttft_s.unwrap_or(0.0);
    let gen_s = (secs - ttft).max(1e-9);
    let tok_s = if t.completion > 1 {
        (t.completion - 1) as f64 / gen_s
    } else {
        0.0
    };
    if app.opts.log_json {
        eprintln!(
            "{}",
            json!({"id": id, "status": status, "prompt_tokens": t.prompt, "cached_tokens": t.cached,
                   "completion_tokens": t.completion, "ttft_ms": (ttft * 1e3).round(),
                   "tok_s": (tok_s * 10.0).round() / 10.0, "seconds": (secs * 1e3).round() / 1e3})
        );
    } else {
        eprintln!(
            "{id} {status} prompt {} (cached {}) completion {} ttft {:.0} ms {:.1} tok/s {:.2} s",
            t.prompt,
            t.cached,
            t.completion,
            ttft * 1e3,
            tok_s,
            secs
        );
    }
}

/// `GET /api/ps`: the loaded models in Ollama's shape, with llmem's KV and request
/// counts beside.
fn ps(app: &App) -> Value {
    let models: Vec<Value> = app
        .models
        .describe()
        .into_iter()
        .filter(|m| m["loaded"] == true)
        .map(|m| {
            json!({
                "name": m["id"], "model": m["id"],
                "size": m["weights_bytes"], "size_vram": 0,
                "expires_at": m["expires_at"],
                "kv_bytes": m["kv_bytes"], "scratch_bytes": m["scratch_bytes"],
                "requests_running": m["requests_running"],
                "keep_alive": m["keep_alive"],
            })
        })
        .collect();
    json!({"models": models})
}

/// `GET /v1/llmem/status`: what `llmem monitor --attach` shows — the ledger's pools,
/// the schedulers' sequences and KV per tier, and every configured model.
fn status(app: &App) -> Value {
    let snap = app.models.snapshot().unwrap_or_default();
    let tiers = ["hot", "warm", "cold", "disk"];
    json!({
        "ledger": app.opts.ledger.as_ref().map(budget::Budget::snapshot),
        "sequences_running": snap.stats.running,
        "sequences_waiting": snap.stats.waiting,
        "requests_finished": snap.stats.finished,
        "kv_bytes": snap.kv_bytes,
        "kv_tier_bytes": tiers.iter().zip(snap.kv_tier_bytes)
            .map(|(t, b)| (t.to_string(), Value::from(b)))
            .collect::<serde_json::Map<String, Value>>(),
        "scratch_bytes": snap.scratch_bytes,
        "queue_limit": app.opts.queue_limit,
        "models": app.models.describe(),
    })
}
