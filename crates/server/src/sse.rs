//! Streamed answers: a request's events as server-sent events in the shape OpenAI's
//! clients parse (chat chunks with `delta`s, completion chunks with `text`, a last chunk
//! with `usage` when asked, then `[DONE]`).

use std::time::Instant;

use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::chat::{CallStream, Tools};
use crate::generate::{self, Job, Kind, Update};
use crate::{App, Ready, log, now_s};

/// Sends a request's events as server-sent events in the shape OpenAI's clients parse.
#[allow(clippy::too_many_arguments)]
pub async fn stream(
    app: &App,
    r: &Ready,
    model: &str,
    job: &Job,
    running: generate::Running,
    id: &str,
    tx: mpsc::UnboundedSender<Bytes>,
    arrived: Instant,
) {
    let created = now_s();
    let usage_null = job.include_usage;
    let base = |choices: Value| -> Value {
        json!({
            "id": id,
            "object": if job.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": created,
            "model": model,
            "system_fingerprint": "llmem",
            "choices": choices,
        })
    };
    let chunk = |choices: Value| -> Bytes {
        let mut v = base(choices);
        if usage_null {
            v["usage"] = Value::Null;
        }
        Bytes::from(format!("data: {v}\n\n"))
    };
    let choices = job.prompts.len() * job.n;
    if job.kind == Kind::Chat {
        for i in 0..choices {
            let c = json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
            if tx.send(chunk(c)).is_err() {
                return;
            }
        }
    }
    let want_lp = job.top_logprobs.is_some();
    let mut offsets = vec![0usize; choices];
    // Each choice's calls are held back from its content and sent whole at its end.
    let mut calls: Vec<Option<CallStream>> = (0..choices)
        .map(|_| job.tools.as_ref().map(Tools::stream))
        .collect();
    let result = generate::drive(app, r, job, running, |u| {
        let c = match u {
            Update::Text { index, text, lps } => match job.kind {
                Kind::Chat => {
                    let text = match &mut calls[index] {
                        Some(s) => s.push(&text),
                        None => text,
                    };
                    if text.is_empty() && lps.is_empty() {
                        return true;
                    }
                    json!([{
                    "index": index,
                    "delta": {"content": text},
                    "logprobs": if want_lp { json!({"content": generate::chat_lp(r, &lps)}) } else { Value::Null },
                    "finish_reason": null,
                    }])
                }
                Kind::Completion => {
                    let lp = if want_lp {
                        generate::completion_lp(r, &lps, &mut offsets[index])
                    } else {
                        Value::Null
                    };
                    json!([{"index": index, "text": text, "logprobs": lp, "finish_reason": null}])
                }
            },
            Update::Finish { index, reason } => match job.kind {
                Kind::Chat => {
                    let mut reason = reason;
                    if let Some(s) = calls[index].take() {
                        let p = s.finish();
                        reason = p.reason(reason);
                        let mut delta = json!({});
                        if let Some(c) = &p.content {
                            delta["content"] = json!(c);
                        }
                        if !p.calls.is_empty() {
                            delta["tool_calls"] = Value::Array(p.tool_calls());
                        }
                        let c = json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}]);
                        if delta != json!({}) && tx.send(chunk(c)).is_err() {
                            return false;
                        }
                    }
                    json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}])
                }
                Kind::Completion => json!([{"index": index, "text": "", "logprobs": null, "finish_reason": reason}]),
            },
        };
        tx.send(chunk(c)).is_ok()
    })
    .await;
    match result {
        Ok(totals) => {
            log(app, id, Some(&totals), arrived, 200);
            if job.include_usage {
                let mut v = base(json!([]));
                v["usage"] = totals.json();
                let _ = tx.send(Bytes::from(format!("data: {v}\n\n")));
            }
        }
        Err(e) => {
            log(app, id, None, arrived, e.status.as_u16());
            let _ = tx.send(Bytes::from(format!("data: {}\n\n", e.body())));
        }
    }
    let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n"));
}
