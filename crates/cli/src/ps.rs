//! `llmem ps`: the models a running `llmem serve` has loaded (its `GET /api/ps`): bytes,
//! KV, requests running and when each unloads.

use clap::Args;

use crate::exit::{CliError, input};

#[derive(Args, Debug)]
pub struct PsArgs {
    /// The server to ask.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Print the server's JSON as it is.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &PsArgs) -> Result<(), CliError> {
    let key = std::env::var("LLMEM_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let v = server::client::get_json(&a.url, "/api/ps", key.as_deref())
        .map_err(|e| input(anyhow::anyhow!(e)))?;
    if a.json {
        println!("{v}");
        return Ok(());
    }
    let models = v["models"].as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        println!("no model loaded (they load on first use)");
        return Ok(());
    }
    println!(
        "{:<32} {:>10} {:>10} {:>8}  UNTIL",
        "NAME", "SIZE", "KV", "RUNNING"
    );
    for m in models {
        let b = |k: &str| budget::Bytes(m[k].as_u64().unwrap_or(0)).to_string();
        let until = match m["expires_at"].as_str() {
            Some(t) => t.to_string(),
            None if m["requests_running"].as_u64() > Some(0) => "in use".to_string(),
            None => "forever".to_string(),
        };
        println!(
            "{:<32} {:>10} {:>10} {:>8}  {until}",
            m["name"].as_str().unwrap_or("?"),
            b("size"),
            b("kv_bytes"),
            m["requests_running"].as_u64().unwrap_or(0),
        );
    }
    Ok(())
}
