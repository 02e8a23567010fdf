//! `llmem monitor --attach URL`: a running server's ledger, sequences, queue, KV per
//! tier and models, read from its `GET /v1/llmem/status` (this process loads nothing).

use std::io::{self, IsTerminal};
use std::time::Duration;

use serde_json::Value;

use crate::exit::{CliError, input};

fn fetch(url: &str) -> Result<Value, String> {
    let key = std::env::var("LLMEM_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    server::client::get_json(url, "/v1/llmem/status", key.as_deref())
}

/// One snapshot (`once`, as text or JSON), or the view redrawn every `interval` until
/// q, Esc or Ctrl-C (the terminal is restored on every way out).
pub fn run(url: &str, once: bool, json: bool, interval: Duration) -> Result<(), CliError> {
    if once {
        let v = fetch(url).map_err(|e| input(anyhow::anyhow!(e)))?;
        if json {
            println!("{v}");
        } else {
            print!("{}", render(url, &v).join("\n") + "\n");
        }
        return Ok(());
    }
    if !io::stdout().is_terminal() {
        return Err(input(anyhow::anyhow!(
            "the live view needs a terminal; use --once (or --once --json) for a snapshot"
        )));
    }
    super::ui::run_lines(interval, || match fetch(url) {
        Ok(v) => render(url, &v),
        Err(e) => vec![format!("llmem monitor: {url}"), String::new(), e],
    })
}

/// The status as text lines.
fn render(url: &str, v: &Value) -> Vec<String> {
    let b = |x: &Value| budget::Bytes(x.as_u64().unwrap_or(0)).to_string();
    let mut l = vec![format!("llmem monitor: attached to {url}"), String::new()];
    let ledger = &v["ledger"];
    if ledger.is_object() {
        l.push(format!(
            "ledger      {} used of {} (peak {})",
            b(&ledger["used_bytes"]),
            b(&ledger["total_bytes"]),
            b(&ledger["peak_bytes"])
        ));
        for p in ledger["pools"].as_array().into_iter().flatten() {
            l.push(format!(
                "  {:<9} {:>10} used  {:>10} peak",
                p["name"].as_str().unwrap_or("?"),
                b(&p["used_bytes"]),
                b(&p["peak_bytes"])
            ));
        }
    }
    l.push(format!(
        "sequences   {} running, {} waiting (queue holds {})",
        v["sequences_running"], v["sequences_waiting"], v["queue_limit"]
    ));
    let tiers = &v["kv_tier_bytes"];
    l.push(format!(
        "kv          {} (hot {}, warm {}, cold {}, disk {})",
        b(&v["kv_bytes"]),
        b(&tiers["hot"]),
        b(&tiers["warm"]),
        b(&tiers["cold"]),
        b(&tiers["disk"])
    ));
    l.push(String::new());
    l.push(format!(
        "{:<32} {:>8} {:>10} {:>10} {:>8}  UNTIL",
        "MODEL", "LOADED", "WEIGHTS", "KV", "RUNNING"
    ));
    for m in v["models"].as_array().into_iter().flatten() {
        let loaded = if m["loaded"] == true {
            "yes"
        } else if m["loading"] == true {
            "loading"
        } else {
            "no"
        };
        l.push(format!(
            "{:<32} {:>8} {:>10} {:>10} {:>8}  {}",
            m["id"].as_str().unwrap_or("?"),
            loaded,
            b(&m["weights_bytes"]),
            b(&m["kv_bytes"]),
            m["requests_running"],
            m["expires_at"].as_str().unwrap_or("-"),
        ));
    }
    l
}
