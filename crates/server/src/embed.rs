//! `POST /v1/embeddings`: each input's final hidden states, mean-pooled and scaled to
//! unit length ([`engine::batch::Engine::embed`]), as floats or base64.
//!
//! The embedding runs on the model's scheduler thread between steps (the service owns
//! the one step loop), counted against the same queue bound and its KV reserved in the
//! same ledger while it runs.

use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::models::Lease;
use crate::{App, model_id};

/// Most inputs in one request (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

/// The answer to one embeddings request.
pub async fn answer(app: &App, lease: &Lease, body: &Value) -> Result<Value, ApiError> {
    let r = &*lease.ready;
    let tm = r.svc.model().text();
    let input = body
        .get("input")
        .ok_or_else(|| ApiError::invalid("input is required").param("input"))?;
    // An empty text has no tokens to pool (the model's start token alone says nothing).
    let empty_text = match input {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty() || a.iter().any(|s| s.as_str() == Some("")),
        _ => false,
    };
    let prompts = if empty_text {
        Vec::new()
    } else {
        crate::generate::prompts_of(input, "input", |t| tm.encode(t))?
    };
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(
            ApiError::invalid("input must not be empty (nor any of its items)").param("input"),
        );
    }
    if prompts.len() > MAX_INPUTS {
        return Err(
            ApiError::invalid(format!("at most {MAX_INPUTS} inputs per request")).param("input"),
        );
    }
    let base64 = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => {
            return Err(ApiError::invalid(format!(
                "encoding_format must be \"float\" or \"base64\", got {f:?}"
            ))
            .param("encoding_format"));
        }
    };
    let d = tm.model.cfg.d_model;
    if let Some(n) = body.get("dimensions").filter(|v| !v.is_null())
        && n.as_u64() != Some(d as u64)
    {
        return Err(ApiError::invalid(format!(
            "this model's embeddings have {d} dimensions; dimensions must be {d} or unset"
        ))
        .param("dimensions"));
    }
    let n_ctx = r.svc.n_ctx();
    if let Some(p) = prompts.iter().find(|p| p.len() > n_ctx) {
        return Err(ApiError::invalid(format!(
            "an input is {} tokens, but this server's context is {n_ctx} tokens; inputs are \
             never truncated: shorten it, or start the server with a larger --ctx",
            p.len()
        ))
        .code("context_length_exceeded")
        .param("input"));
    }
    let tokens: usize = prompts.iter().map(Vec::len).sum();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let (tx, rx) = oneshot::channel();
    r.svc
        .embed(
            prompts,
            Box::new(move |res| {
                let _ = tx.send(res);
            }),
        )
        .map_err(|e| crate::generate::refused(app, r, e, longest).param("input"))?;
    let vectors = rx
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the model was unloaded before the embedding ran",
            )
        })?
        .map_err(|why| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                format!("the embedding failed: {why}"),
            )
        })?;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let e = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::from(base64_encode(&bytes))
            } else {
                Value::from(v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>())
            };
            json!({"object": "embedding", "index": i, "embedding": e})
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model_id(app, lease),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

/// Standard base64 with padding (RFC 4648 §4), as OpenAI's client decodes it.
fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= c.len() {
                out.push(T[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64_encode;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(raw.as_bytes()), enc);
        }
        assert_eq!(base64_encode(&1.0f32.to_le_bytes()), "AACAPw==");
    }
}
