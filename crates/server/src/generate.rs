//! Generation requests: the OpenAI body parsed into scheduler requests, and their events
//! turned back into text, stop strings, log-probabilities and finish reasons.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use engine::sampler::SamplerConfig;
use engine::sched::service::Service;
use engine::sched::{Event, FinishReason, Refused, ReqId, Request, Sink};
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::chat::{ChatMessage, Tools};
use crate::error::ApiError;
use crate::hook::{Hook, Rules};
use crate::json::Grammar;
use crate::stop::StopMatcher;
use crate::{App, Ready};

/// Most choices one request may ask for (`n`, times the prompts of a completion).
pub const MAX_CHOICES: usize = 16;
/// Most stop strings.
const MAX_STOPS: usize = 16;
/// Most alternatives per token (`top_logprobs`).
const MAX_TOP_LOGPROBS: usize = 20;

/// The body of `/v1/chat/completions` and `/v1/completions` (unknown fields are ignored).
#[derive(Deserialize, Default)]
pub struct GenBody {
    pub messages: Option<Vec<ChatMessage>>,
    pub prompt: Option<Value>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<u64>,
    pub response_format: Option<ResponseFormat>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub echo: Option<bool>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    pub json_schema: Option<JsonSchema>,
}

#[derive(Deserialize)]
pub struct JsonSchema {
    pub schema: Option<Value>,
}

#[derive(Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The prompts a `prompt` (or `input`) field holds: a string, strings, token ids or
/// arrays of token ids; anything else is a 400 naming `param`.
pub fn prompts_of(
    p: &Value,
    param: &str,
    encode: impl Fn(&str) -> Vec<u32>,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "{param} must be a string, an array of strings, an array of token ids or an array \
             of arrays of token ids"
        ))
        .param(param)
    };
    let ids = |v: &Value| -> Result<Vec<u32>, ApiError> {
        v.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|t| {
                t.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or_else(bad)
            })
            .collect()
    };
    Ok(match p {
        Value::String(s) => vec![encode(s)],
        Value::Array(a) if a.iter().all(Value::is_string) && !a.is_empty() => {
            a.iter().map(|s| encode(s.as_str().unwrap_or(""))).collect()
        }
        Value::Array(a) if a.iter().all(Value::is_number) => vec![ids(p)?],
        Value::Array(a) if a.iter().all(Value::is_array) && !a.is_empty() => {
            a.iter().map(ids).collect::<Result<_, _>>()?
        }
        _ => return Err(bad()),
    })
}

/// Which endpoint a job came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// A validated generation request.
pub struct Job {
    pub kind: Kind,
    /// One entry per prompt (chat: one).
    pub prompts: Vec<Vec<u32>>,
    pub n: usize,
    pub max_tokens: Option<usize>,
    pub sampler: SamplerConfig,
    pub stop: Vec<String>,
    pub top_logprobs: Option<usize>,
    pub rules: Rules,
    pub stream: bool,
    pub include_usage: bool,
    /// The tools offered to the template (chat), whose calls are read from the text.
    pub tools: Option<Tools>,
}

fn range<T: PartialOrd + Copy + std::fmt::Display>(
    v: Option<T>,
    name: &str,
    lo: T,
    hi: T,
) -> Result<Option<T>, ApiError> {
    match v {
        Some(x) if !(x >= lo && x <= hi) => Err(ApiError::invalid(format!(
            "{name} must be between {lo} and {hi}, got {x}"
        ))
        .param(name)),
        v => Ok(v),
    }
}

impl Job {
    /// Checks `body` and tokenizes its prompt (through the chat template for chat).
    pub fn parse(kind: Kind, body: GenBody, ready: &Ready) -> Result<Job, ApiError> {
        let tm = ready.svc.model().text();
        let mut tools = None;
        let prompts: Vec<Vec<u32>> = match kind {
            Kind::Chat => {
                let Some(msgs) = body.messages else {
                    return Err(ApiError::invalid("messages is required").param("messages"));
                };
                let conv = crate::chat::conversation(msgs)?;
                tools = Tools::parse(body.tools.as_ref(), body.tool_choice.as_ref(), tm)?;
                let mut text = tm
                    .render_chat_json(&conv, tools.as_ref().map(|t| t.offered.as_slice()))
                    .map_err(|e| ApiError::invalid(e.to_string()).param("messages"))?;
                text.push_str(tools.as_ref().map_or("", Tools::prefill));
                vec![tm.encode(&text)]
            }
            Kind::Completion => {
                let Some(p) = body.prompt else {
                    return Err(ApiError::invalid("prompt is required").param("prompt"));
                };
                prompts_of(&p, "prompt", |t| tm.encode(t))?
            }
        };
        if prompts.iter().any(Vec::is_empty) {
            return Err(ApiError::invalid("the prompt is empty").param("prompt"));
        }
        let n = range(body.n, "n", 1, MAX_CHOICES as u64)?.unwrap_or(1) as usize;
        if n * prompts.len() > MAX_CHOICES {
            return Err(ApiError::invalid(format!(
                "at most {MAX_CHOICES} choices per request (n times the prompts)"
            ))
            .param("n"));
        }
        let max = body.max_completion_tokens.or(body.max_tokens);
        let max_tokens = range(max, "max_tokens", 1, 1 << 24)?.map(|m| m as usize);
        let temperature = range(body.temperature, "temperature", 0.0, 100.0)?.unwrap_or(1.0);
        let top_p = range(body.top_p, "top_p", 0.0, 1.0)?.unwrap_or(1.0);
        if top_p == 0.0 {
            return Err(ApiError::invalid("top_p must be more than 0").param("top_p"));
        }
        let top_k = range(body.top_k, "top_k", -1, 1 << 20)?.unwrap_or(0).max(0) as usize;
        let min_p = range(body.min_p, "min_p", 0.0, 1.0)?.unwrap_or(0.0);
        let presence_penalty =
            range(body.presence_penalty, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0);
        let frequency_penalty =
            range(body.frequency_penalty, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0);
        let stop = match body.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.len() > MAX_STOPS {
            return Err(
                ApiError::invalid(format!("at most {MAX_STOPS} stop strings")).param("stop"),
            );
        }
        let vocab = ready.vocab.bytes.len();
        let mut logit_bias = Vec::new();
        for (k, v) in body.logit_bias.unwrap_or_default() {
            let id = k
                .parse::<u32>()
                .ok()
                .filter(|&t| (t as usize) < vocab)
                .ok_or_else(|| {
                    ApiError::invalid(format!("logit_bias: {k:?} is not a token id"))
                        .param("logit_bias")
                })?;
            if !(-100.0..=100.0).contains(&v) {
                return Err(
                    ApiError::invalid("logit_bias values must be between -100 and 100")
                        .param("logit_bias"),
                );
            }
            logit_bias.push((id, v));
        }
        // Chat: `logprobs: true` with `top_logprobs: k`; completions: `logprobs: k`.
        let top_logprobs = match (kind, &body.logprobs) {
            (_, None | Some(Value::Null)) | (Kind::Chat, Some(Value::Bool(false))) => None,
            (Kind::Chat, Some(Value::Bool(true))) => Some(
                range(
                    body.top_logprobs,
                    "top_logprobs",
                    0,
                    MAX_TOP_LOGPROBS as u64,
                )?
                .unwrap_or(0) as usize,
            ),
            (Kind::Completion, Some(Value::Number(k))) => Some(
                range(k.as_u64(), "logprobs", 0, 5)?
                    .ok_or_else(|| ApiError::invalid("logprobs must be 0 to 5").param("logprobs"))?
                    as usize,
            ),
            _ => {
                return Err(ApiError::invalid(match kind {
                    Kind::Chat => "logprobs must be a boolean",
                    Kind::Completion => "logprobs must be an integer from 0 to 5",
                })
                .param("logprobs"));
            }
        };
        let forced = tools.as_ref().and_then(|t| t.forced.clone());
        let grammar = match body.response_format {
            None => forced,
            Some(f) if f.kind == "text" => forced,
            Some(_) if forced.is_some() => {
                return Err(ApiError::invalid(
                    "response_format cannot be combined with a forced tool call (tool_choice \
                     \"required\" or a named function): the call's arguments follow the \
                     function's parameters",
                )
                .param("response_format"));
            }
            Some(f) => match f.kind.as_str() {
                "json_object" => Some(Arc::new(Grammar::any_object())),
                "json_schema" => {
                    let schema = f.json_schema.and_then(|s| s.schema).ok_or_else(|| {
                        ApiError::invalid("response_format json_schema needs json_schema.schema")
                            .param("response_format")
                    })?;
                    Some(Arc::new(Grammar::from_schema(&schema).map_err(|e| {
                        ApiError::invalid(format!("response_format: {e}")).param("response_format")
                    })?))
                }
                t => {
                    return Err(ApiError::invalid(format!(
                        "response_format type {t:?} is not one of text, json_object, json_schema"
                    ))
                    .param("response_format"));
                }
            },
        };
        if let (Some(g), Some(max)) = (&grammar, max_tokens) {
            // Every token of the shortest document takes at least one byte: with fewer
            // tokens than its bytes, the document could be cut short.
            let least = g.start().closing(g).len();
            if max < least {
                return Err(ApiError::invalid(format!(
                    "max_tokens {max} is fewer than the {least} the shortest output of this \
                     response_format (or forced tool call) may need; raise it so the output \
                     always parses"
                ))
                .param("max_tokens"));
            }
        }
        if kind == Kind::Completion && body.tools.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(ApiError::invalid("tools are for chat completions").param("tools"));
        }
        if body.echo == Some(true) {
            return Err(ApiError::invalid("echo is not supported").param("echo"));
        }
        let seed = body
            .seed
            .map_or_else(engine::sampler::random_seed, |s| s as u64);
        Ok(Job {
            kind,
            prompts,
            n,
            max_tokens,
            sampler: SamplerConfig {
                temperature,
                top_k,
                top_p,
                // The sampler's min-p: on the model's probabilities after the
                // penalties and the grammar's mask (the request's hook).
                min_p,
                seed,
            },
            stop,
            top_logprobs,
            rules: Rules {
                presence_penalty,
                frequency_penalty,
                logit_bias,
                grammar,
            },
            stream: body.stream.unwrap_or(false),
            include_usage: body.stream_options.is_some_and(|o| o.include_usage),
            tools,
        })
    }
}

/// One token's log-probability and its alternatives.
#[derive(Clone)]
pub struct Lp {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What the driver reports.
pub enum Update {
    /// Text of choice `index` (maybe empty when only log-probabilities come).
    Text {
        index: usize,
        text: String,
        lps: Vec<Lp>,
    },
    Finish {
        index: usize,
        reason: &'static str,
    },
}

/// Token counts of a whole request.
#[derive(Clone, Copy, Default)]
pub struct Totals {
    pub prompt: usize,
    pub completion: usize,
    pub cached: usize,
    pub ttft_s: Option<f64>,
}

impl Totals {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        })
    }
}

struct Choice<'t> {
    id: ReqId,
    decoder: engine::text::TextStream<'t>,
    stop: StopMatcher,
    lps: Vec<Lp>,
    tokens: usize,
    finished: bool,
    done: bool,
    prompt: usize,
    cached: usize,
    last: Option<Instant>,
}

/// The scheduler's refusal as an API error.
pub fn refused(app: &App, ready: &Ready, r: Refused, prompt: usize) -> ApiError {
    use std::sync::atomic::Ordering::Relaxed;
    match r {
        Refused::QueueFull { waiting } => {
            app.metrics.rejected_queue.fetch_add(1, Relaxed);
            let per = ready.max_running.max(1);
            ApiError::unavailable(
                format!("the server is busy ({waiting} requests are waiting); retry shortly"),
                (1 + waiting / per).min(60) as u64,
            )
            .code("queue_full")
        }
        Refused::ShuttingDown => ApiError::unavailable("the server is shutting down", 5),
        Refused::TooLong { prompt, n_ctx, .. } => {
            app.metrics.rejected_fit.fetch_add(1, Relaxed);
            ApiError::invalid(format!(
                "{r}; the prompt leaves room for at most {} tokens: lower max_tokens, or start \
                 the server with a larger --ctx",
                n_ctx.saturating_sub(prompt)
            ))
            .code("context_length_exceeded")
            .param("max_tokens")
        }
        Refused::NeverFits { needed, fits } => {
            app.metrics.rejected_fit.fetch_add(1, Relaxed);
            let hint = ready
                .hint
                .as_ref()
                .or(app.opts.fit_hint.as_ref())
                .map(|h| h(needed))
                .unwrap_or_default();
            ApiError::invalid(format!(
                "the request needs {needed} tokens of KV ({prompt} prompt + max_tokens) but \
                 this server's memory budget fits at most {fits} tokens for one sequence \
                 (at most {} to generate after this prompt){}{hint}",
                fits.saturating_sub(prompt),
                if hint.is_empty() { "" } else { "; " },
            ))
            .code("request_too_large")
            .param("max_tokens")
        }
        other => ApiError::invalid(other.to_string()),
    }
}

/// A running request: its choices' scheduler ids and their events.
pub struct Running {
    ids: Vec<ReqId>,
    rx: mpsc::UnboundedReceiver<(usize, Event)>,
    svc: Arc<Service>,
    arrived: Instant,
}

impl Drop for Running {
    fn drop(&mut self) {
        // A client that went away: its sequences stop at the next step.
        for &id in &self.ids {
            self.svc.cancel(id);
        }
    }
}

/// Plans and submits every choice of `job`; a refusal of any cancels the others.
pub fn submit(app: &App, ready: &Ready, job: &Job, arrived: Instant) -> Result<Running, ApiError> {
    let svc = &ready.svc;
    let n_ctx = svc.n_ctx();
    let cap = svc.max_request_tokens();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut ids = Vec::new();
    let cancel_all = |ids: &[ReqId]| ids.iter().for_each(|&id| svc.cancel(id));
    for (p, prompt) in job.prompts.iter().enumerate() {
        if prompt.len() >= n_ctx {
            cancel_all(&ids);
            app.metrics
                .rejected_fit
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(ApiError::invalid(format!(
                "the prompt is {} tokens, but this server's context is {n_ctx} tokens \
                 (prompt and generated together); prompts are never truncated: shorten it, \
                 or start the server with a larger --ctx",
                prompt.len()
            ))
            .code("context_length_exceeded")
            .param(if job.kind == Kind::Chat {
                "messages"
            } else {
                "prompt"
            }));
        }
        let max_tokens = job
            .max_tokens
            .unwrap_or_else(|| cap.saturating_sub(prompt.len()).max(1));
        for j in 0..job.n {
            let index = p * job.n + j;
            let mut sampler = job.sampler;
            sampler.seed = sampler.seed.wrapping_add(j as u64);
            let hook = (!job.rules.is_empty()).then(|| {
                Box::new(Hook::new(
                    job.rules.clone(),
                    ready.vocab.clone(),
                    max_tokens,
                )) as Box<dyn engine::sched::TokenHook>
            });
            let req = Request {
                prompt: prompt.clone(),
                max_tokens,
                sampler,
                priority: 0,
                stop_tokens: ready.vocab.eog.clone(),
                logprobs: job.top_logprobs.is_some(),
                top_logprobs: job.top_logprobs.unwrap_or(0),
                prompt_logprobs: false,
                hook,
            };
            let tx = tx.clone();
            let sink: Sink = Box::new(move |ev| tx.send((index, ev)).is_ok());
            match svc.submit(req, sink) {
                Ok(id) => ids.push(id),
                Err(r) => {
                    cancel_all(&ids);
                    return Err(refused(app, ready, r, prompt.len()));
                }
            }
        }
    }
    Ok(Running {
        ids,
        rx,
        svc: svc.clone(),
        arrived,
    })
}

/// Runs `run` to its end, reporting text as it comes to `emit` (which returns `false`
/// when nobody listens any more: the request is then cancelled).
pub async fn drive(
    app: &App,
    ready: &Ready,
    job: &Job,
    mut run: Running,
    mut emit: impl FnMut(Update) -> bool,
) -> Result<Totals, ApiError> {
    let tm = ready.svc.model().text();
    let mut choices: Vec<Choice<'_>> = run
        .ids
        .iter()
        .map(|&id| Choice {
            id,
            decoder: tm.stream_decoder(),
            stop: StopMatcher::new(job.stop.clone()),
            lps: Vec::new(),
            tokens: 0,
            finished: false,
            done: false,
            prompt: 0,
            cached: 0,
            last: None,
        })
        .collect();
    let mut totals = Totals::default();
    let mut failure: Option<String> = None;
    let want_lp = job.top_logprobs.is_some();
    while let Some((i, ev)) = run.rx.recv().await {
        let c = &mut choices[i];
        match ev {
            Event::Token {
                token,
                logprob,
                top,
            } => {
                let now = Instant::now();
                match c.last {
                    None => {
                        let t = now.duration_since(run.arrived).as_secs_f64();
                        app.metrics.ttft.observe(t);
                        totals.ttft_s.get_or_insert(t);
                    }
                    Some(l) => app.metrics.itl.observe(now.duration_since(l).as_secs_f64()),
                }
                c.last = Some(now);
                if c.finished {
                    continue;
                }
                c.tokens += 1;
                if ready.vocab.eog.contains(&token) {
                    continue;
                }
                if want_lp && let Some(logprob) = logprob {
                    c.lps.push(Lp {
                        token,
                        logprob,
                        top,
                    });
                }
                let piece = c.decoder.push(token);
                let (text, hit) = c.stop.push(&piece);
                if hit {
                    c.finished = true;
                    run.svc.cancel(c.id);
                }
                if !text.is_empty() || (hit && !c.lps.is_empty()) {
                    let lps = std::mem::take(&mut c.lps);
                    if !emit(Update::Text {
                        index: i,
                        text,
                        lps,
                    }) {
                        return Err(gone());
                    }
                }
                if hit
                    && !emit(Update::Finish {
                        index: i,
                        reason: "stop",
                    })
                {
                    return Err(gone());
                }
            }
            Event::PromptLogprob { .. } => {}
            Event::Done { reason, usage } => {
                c.done = true;
                c.prompt = usage.prompt_tokens;
                c.cached = usage.cached_tokens;
                if !c.finished {
                    c.finished = true;
                    let tail = c.decoder.finish();
                    let (mut text, hit) = c.stop.push(&tail);
                    if !hit {
                        text.push_str(&c.stop.flush());
                    }
                    let reason = match reason {
                        FinishReason::Stop | FinishReason::Hook => "stop",
                        FinishReason::Length => "length",
                        FinishReason::Cancelled => "cancelled",
                        FinishReason::Failed(why) => {
                            failure = Some(why);
                            "error"
                        }
                    };
                    let lps = std::mem::take(&mut c.lps);
                    if (!text.is_empty() || !lps.is_empty())
                        && !emit(Update::Text {
                            index: i,
                            text,
                            lps,
                        })
                    {
                        return Err(gone());
                    }
                    let reason = if hit { "stop" } else { reason };
                    if !emit(Update::Finish { index: i, reason }) {
                        return Err(gone());
                    }
                }
                if choices.iter().all(|c| c.done) {
                    break;
                }
            }
        }
    }
    // Prompts count once per prompt, not once per choice.
    for (p, _) in job.prompts.iter().enumerate() {
        let first = &choices[p * job.n];
        totals.prompt += first.prompt;
        totals.cached += first.cached;
    }
    totals.completion = choices.iter().map(|c| c.tokens).sum();
    app.metrics.e2e.observe(run.arrived.elapsed().as_secs_f64());
    if let Some(why) = failure {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("generation failed: {why}"),
        ));
    }
    Ok(totals)
}

fn gone() -> ApiError {
    ApiError::new(
        StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        "client_closed",
        "the client went away",
    )
}

/// The text of token `t` for log-probability answers.
pub fn token_text(ready: &Ready, t: u32) -> (String, Vec<u8>) {
    let b = ready
        .svc
        .model()
        .text()
        .tokenizer
        .token_bytes(tokenizer::TokenId(t))
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    (String::from_utf8_lossy(&b).into_owned(), b)
}

fn finite(x: f32) -> f32 {
    if x.is_finite() { x } else { -9999.0 }
}

/// Chat-style log-probabilities (`{"content": [...]}` entries).
pub fn chat_lp(ready: &Ready, lps: &[Lp]) -> Vec<Value> {
    lps.iter()
        .map(|l| {
            let (t, b) = token_text(ready, l.token);
            let top: Vec<Value> = l
                .top
                .iter()
                .map(|&(id, lp)| {
                    let (t, b) = token_text(ready, id);
                    json!({"token": t, "logprob": finite(lp), "bytes": b})
                })
                .collect();
            json!({"token": t, "logprob": finite(l.logprob), "bytes": b, "top_logprobs": top})
        })
        .collect()
}

/// Completion-style log-probabilities, `text_offset` counted from `offset`.
pub fn completion_lp(ready: &Ready, lps: &[Lp], offset: &mut usize) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    for l in lps {
        let (t, _) = token_text(ready, l.token);
        offsets.push(*offset);
        *offset += t.len();
        tokens.push(t);
        token_logprobs.push(finite(l.logprob));
        let m: serde_json::Map<String, Value> = l
            .top
            .iter()
            .map(|&(id, lp)| (token_text(ready, id).0, json!(finite(lp))))
            .collect();
        top.push(Value::Object(m));
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}
