//! Shared helpers for tests that need the real SmolLM2 vocabulary.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tokenizer::{Tokenizer, VocabSpec};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file under the repository's `testdata/` folder (see its README for sources).
pub fn testdata_file(relative: &str) -> PathBuf {
    workspace_root().join("testdata").join(relative)
}

/// Converts GGUF metadata into the plain description the tokenizer takes. This is what
/// the engine does; it lives here so the tokenizer crate stays independent of the reader.
pub fn spec_from_gguf(file: &gguf::GgufFile<'_>) -> VocabSpec {
    let string = |key: &str| file.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let strings = |key: &str| -> Vec<String> {
        file.get(key)
            .and_then(|v| v.as_array())
            .map_or_else(Vec::new, |a| {
                a.iter_str()
                    .expect(key)
                    .map(|s| s.expect(key).to_owned())
                    .collect()
            })
    };
    let id = |key: &str| {
        file.get(key)
            .and_then(|v| v.as_u64())
            .map(|v| u32::try_from(v).expect(key))
    };
    let flag = |key: &str| file.get(key).and_then(|v| v.as_bool());
    let array = |key: &str| file.get(key).and_then(|v| v.as_array());
    VocabSpec {
        model: string("tokenizer.ggml.model").unwrap_or_default(),
        pre: string("tokenizer.ggml.pre"),
        tokens: strings("tokenizer.ggml.tokens"),
        token_types: array("tokenizer.ggml.token_type")
            .map_or_else(Vec::new, |a| a.iter_i32().expect("token_type").collect()),
        merges: strings("tokenizer.ggml.merges"),
        scores: array("tokenizer.ggml.scores")
            .map_or_else(Vec::new, |a| a.iter_f32().expect("scores").collect()),
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        eot_id: id("tokenizer.ggml.eot_token_id"),
        eom_id: id("tokenizer.ggml.eom_token_id"),
        unknown_id: id("tokenizer.ggml.unknown_token_id"),
        padding_id: id("tokenizer.ggml.padding_token_id"),
        add_bos: flag("tokenizer.ggml.add_bos_token"),
        add_eos: flag("tokenizer.ggml.add_eos_token"),
        add_space_prefix: flag("tokenizer.ggml.add_space_prefix"),
    }
}

/// Runs the project's fetch script and returns the model path, or why it is unavailable.
fn fetch_model() -> Result<PathBuf, String> {
    let script = workspace_root().join("scripts/fetch-model.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(PathBuf::from(path))
}

/// Returns `value`, or `None` after printing why it is unavailable; with `CI` set, a
/// missing model fails the test instead.
fn available<T>(value: &'static Result<T, String>) -> Option<&'static T> {
    match value {
        Ok(v) => Some(v),
        Err(why) if std::env::var_os("CI").is_some() => panic!("SmolLM2 unavailable: {why}"),
        Err(why) => {
            eprintln!("skipped: SmolLM2 unavailable: {why}");
            None
        }
    }
}

/// SmolLM2's vocabulary as the engine would describe it, read once per test binary.
pub fn smollm2_spec() -> Option<&'static VocabSpec> {
    static SPEC: OnceLock<Result<VocabSpec, String>> = OnceLock::new();
    available(SPEC.get_or_init(|| {
        let path = fetch_model()?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = gguf::GgufFile::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(spec_from_gguf(&file))
    }))
}

/// The SmolLM2 tokenizer, built once per test binary.
pub fn smollm2() -> Option<&'static Tokenizer> {
    static TOKENIZER: OnceLock<Result<Tokenizer, String>> = OnceLock::new();
    let spec = smollm2_spec()?;
    available(TOKENIZER.get_or_init(|| Tokenizer::from_spec(spec).map_err(|e| e.to_string())))
}

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON array of integers as `u32`s.
pub fn u32s(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

/// The tokenizer of an optional reference model (`qwen05`, `qwen15`, `gemma3`), from the
/// path the build script found (see `scripts/model_cfg.rs`); `None` with a message when
/// that model is not on this machine.
pub fn reference_tokenizer(path: Option<&str>, name: &str) -> Option<Tokenizer> {
    let Some(path) = path else {
        eprintln!("skipped: the {name} model is not in $LLMEM_MODELS or ~/.cache/llmem/models");
        return None;
    };
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let file = gguf::GgufFile::parse(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
    Some(Tokenizer::from_spec(&spec_from_gguf(&file)).unwrap_or_else(|e| panic!("{path}: {e}")))
}
