//! The default model and llama.cpp's reference outputs for it, shared by the engine's
//! tests that run the real model.

// Each test binary uses a part of these helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The model, fetched by the project's script into the shared models folder (cached; a
/// checkout's older `models/` copy is taken over). Outside CI a missing network skips the
/// test with a message; under CI it fails.
pub fn model_path() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/fetch-model.sh"))
        .output();
    match out {
        Ok(o) if o.status.success() => Some(PathBuf::from(
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )),
        other => {
            let why = format!("could not fetch the model: {other:?}");
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

pub fn golden() -> serde_json::Value {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/golden/smollm2-greedy.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}
