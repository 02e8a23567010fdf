//! End-to-end tests of the `llmem` binary: exit codes and messages on bad input, the tiny
//! synthetic model through `llmem run` and `llmem bench infer`, and the real model
//! (SmolLM2-135M-Instruct Q4_1) against llama.cpp's golden token ids.
//!
//! Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input; 101 would be a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;
use testkit::{TinyLlamaConfig, WeightType, byte_to_unicode, tiny_llama};

fn llmem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmem"))
        .args(args)
        .output()
        .expect("llmem starts")
}

/// [`llmem`] with the user's cache directory (where measured rates are saved) at `cache`.
fn llmem_cached(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmem"))
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .output()
        .expect("llmem starts")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The parsed JSON report of a run that must have succeeded.
fn json(o: &Output) -> Value {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// Asserts exit code 2 and one `llmem: error:` line on stderr; returns that line.
fn usage_error(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(err.starts_with("llmem: error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

/// A fresh directory for one test's files.
fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p.to_str().expect("UTF-8 path").to_owned()
}

fn tiny_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        tiny_llama(&TinyLlamaConfig {
            weight_type: WeightType::Q8_0,
            ..TinyLlamaConfig::default()
        })
        .bytes
    })
}

/// The tiny synthetic model, written once per test run.
fn tiny_model() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| write(&scratch_dir("tiny"), "tiny.gguf", tiny_bytes()))
}

/// `--temperature 0` unless `extra` sets the temperature: runs sample by default, and
/// these tests compare tokens.
fn greedy_unless_set(args: &mut Vec<&str>, extra: &[&str]) {
    if !extra.iter().any(|a| a.starts_with("--temperature")) {
        args.extend_from_slice(&["--temperature", "0"]);
    }
}

/// `llmem run` on the tiny model with `extra` arguments (greedy unless they say).
fn run_tiny(extra: &[&str]) -> Output {
    let mut args = vec!["run", "--model", tiny_model(), "--threads", "2"];
    greedy_unless_set(&mut args, extra);
    args.extend_from_slice(extra);
    llmem(&args)
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// What the tiny model's byte-level tokens spell (specials print nothing).
fn tiny_text(ids: &[u64]) -> Vec<u8> {
    let vocab = testkit::vocab();
    let byte_of = |c: char| {
        (0..=255u8)
            .find(|&b| byte_to_unicode(b) == c)
            .expect("a byte char")
    };
    ids.iter()
        .filter(|&&id| id >= 3)
        .flat_map(|&id| vocab[id as usize].chars().map(byte_of).collect::<Vec<_>>())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Bad input: exit 2 with one line that says what is wrong; never a panic.

#[test]
fn missing_model_file_is_a_usage_error_naming_the_path() {
    let missing = scratch_dir("missing").join("no-such-model.gguf");
    let missing = missing.to_str().unwrap();
    let o = llmem(&["run", "--model", missing, "--prompt", "hi"]);
    let err = usage_error(&o);
    assert!(err.contains(missing), "{err}");
}

#[test]
fn a_file_that_is_not_gguf_is_a_usage_error() {
    let dir = scratch_dir("not-gguf");
    let mut rng = testkit::SplitMix64::new(17);
    let noise: Vec<u8> = (0..4096).map(|_| rng.next_u64() as u8).collect();
    let path = write(&dir, "noise.gguf", &noise);
    let err = usage_error(&llmem(&["run", "--model", &path, "--prompt", "hi"]));
    assert!(err.contains("GGUF"), "{err}");
    assert!(err.contains(&path), "{err}");
}

/// Exit code and stderr of a run on a broken file: an error (or, for a harmless
/// corruption, a run), never a panic.
fn check_broken(path: &str, what: &str, allowed: &[i32]) {
    let o = llmem(&[
        "run",
        "--model",
        path,
        "--prompt",
        "hi",
        "--raw",
        "--max-tokens",
        "2",
        "--threads",
        "1",
        "--ctx",
        "64",
    ]);
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{what}: {err}");
    let code = o.status.code();
    assert!(
        code.is_some_and(|c| allowed.contains(&c)),
        "{what}: exit {code:?}, stderr {err}"
    );
}

#[test]
fn truncated_and_corrupted_models_fail_cleanly() {
    let bytes = tiny_bytes();
    let file = gguf::GgufFile::parse(bytes).expect("the tiny model parses");
    let data_offset = usize::try_from(file.data_offset()).unwrap();
    let data_end = file
        .tensors()
        .iter()
        .map(|t| data_offset + usize::try_from(t.offset() + t.size_bytes()).unwrap())
        .max()
        .unwrap();
    let dir = scratch_dir("broken");
    // Cuts: empty, in the magic, header, metadata, tensor index, data, last tensor byte.
    let cuts = [
        0,
        3,
        4,
        12,
        24,
        100,
        data_offset / 2,
        data_offset - 1,
        data_offset,
    ];
    let cuts = cuts.into_iter().chain([data_offset + 1000, data_end - 1]);
    for cut in cuts {
        let path = write(&dir, "cut.gguf", &bytes[..cut]);
        check_broken(&path, &format!("cut at {cut} of {}", bytes.len()), &[1, 2]);
    }
    // Dimensions the loader must validate: every integer hyper-parameter and the first
    // tensor dimensions, set to edge values.
    let edges = [0u32, 1, 3, 31, 1 << 20, 1 << 31, u32::MAX];
    let mut patches = Vec::new();
    for kv in file
        .metadata()
        .iter()
        .filter(|kv| kv.key().starts_with("llama."))
    {
        if let gguf::Value::U32(_) = kv.value() {
            let at = usize::try_from(kv.value_offset()).unwrap();
            patches.extend(edges.map(|v| (format!("{} = {v}", kv.key()), at, u64::from(v), 4)));
        }
    }
    for t in &file.tensors()[..3] {
        let dims_at = usize::try_from(t.info_offset()).unwrap() + 8 + t.name().len() + 4;
        for (d, v) in [(0, 0), (0, 16), (1, 1), (1, u64::MAX), (1, 1 << 40)] {
            patches.push((
                format!("{} dims[{d}] = {v}", t.name()),
                dims_at + 8 * d,
                v,
                8,
            ));
        }
    }
    for (what, at, value, width) in patches {
        let mut c = bytes.to_vec();
        match width {
            4 => testkit::corrupt::patch_u32(&mut c, at, value as u32),
            _ => testkit::corrupt::patch_u64(&mut c, at, value),
        }
        let path = write(&dir, "patched.gguf", &c);
        check_broken(&path, &what, &[0, 1, 2]);
    }
    // Seeded mutations of the header, metadata and tensor index. Some are harmless (a
    // flipped byte in the model's name), so a clean run is allowed too.
    for (i, c) in testkit::corrupt::corruptions_within(bytes, 0..data_offset, 2024, 40).enumerate()
    {
        let path = write(&dir, "mutated.gguf", &c);
        check_broken(&path, &format!("corruption {i} of seed 2024"), &[0, 1, 2]);
    }
}

#[test]
fn unsupported_architecture_is_a_usage_error() {
    let mut bytes = tiny_bytes().to_vec();
    // general.architecture: u64 key length, key, u32 type 8 (string), u64 length 5, "llama".
    let key = b"general.architecture";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the key")
        + key.len()
        + 12;
    assert_eq!(&bytes[at..at + 5], b"llama");
    bytes[at..at + 5].copy_from_slice(b"mamba");
    let path = write(&scratch_dir("arch"), "mamba.gguf", &bytes);
    let err = usage_error(&llmem(&["run", "--model", &path, "--prompt", "hi"]));
    assert!(err.contains("unsupported architecture 'mamba'"), "{err}");
}

#[test]
fn a_prompt_longer_than_the_context_is_a_usage_error_with_its_length() {
    // Nine byte tokens: no merge of the tiny vocabulary joins x, y or z.
    let err = usage_error(&run_tiny(&["--raw", "--prompt", "xyzxyzxyz", "--ctx", "5"]));
    assert!(err.contains("9 tokens") && err.contains("--ctx 5"), "{err}");
}

#[test]
fn bad_flags_are_usage_errors() {
    for (flags, says) in [
        (&["--top-p", "0"][..], "--top-p"),
        (&["--top-p", "1.5"], "--top-p"),
        (&["--ctx", "0"], "--ctx"),
        (&["--temperature=-1"], "--temperature"),
        (&["--min-p=1.5"], "--min-p"),
    ] {
        let mut args = vec!["--prompt", "hi"];
        args.extend_from_slice(flags);
        let err = usage_error(&run_tiny(&args));
        assert!(err.contains(says), "{flags:?}: {err}");
    }
    // Flags clap refuses: its own multi-line usage message, still exit 2.
    for args in [
        &["--prompt", "hi", "--no-such-flag"][..],
        &["--prompt", "hi", "--ctx", "many"],
    ] {
        let o = run_tiny(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("error:"), "{args:?}: {}", stderr(&o));
    }
    let o = llmem(&["no-such-command"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn a_prompt_is_required() {
    let err = usage_error(&run_tiny(&["--raw"]));
    assert!(err.contains("--prompt"), "{err}");
    let missing = scratch_dir("no-prompt-file").join("prompt.txt");
    let err = usage_error(&run_tiny(&["--prompt-file", missing.to_str().unwrap()]));
    assert!(err.contains("prompt.txt"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The tiny synthetic model runs.

#[test]
fn json_report_has_ids_text_timings_and_memory() {
    let r = json(&run_tiny(&[
        "--prompt",
        "hi",
        "--raw",
        "--max-tokens",
        "5",
        "--json",
    ]));
    // "hi": two byte tokens (h = byte 104, i = 105, after the 3 specials); no BOS.
    assert_eq!(ids(&r["prompt_token_ids"]), [3 + 104, 3 + 105]);
    let out = ids(&r["token_ids"]);
    assert!(!out.is_empty() && out.len() <= 5, "{out:?}");
    assert!(out.iter().all(|&id| id < 299), "{out:?}");
    // A run stops early only at an end-of-generation token, which is not emitted.
    let stop = r["stop_reason"].as_str().unwrap();
    assert!(
        out.len() == 5 || stop == "eog",
        "{} tokens, stop {stop}",
        out.len()
    );
    let bytes = tiny_text(&out);
    let text = r["text"].as_str().unwrap();
    match std::str::from_utf8(&bytes) {
        Ok(s) => assert_eq!(text, s),
        Err(_) => assert!(text.contains('\u{FFFD}'), "{text:?} for {bytes:?}"),
    }
    for key in ["load_s", "prefill_tok_s", "decode_tok_s"] {
        let v = r["timings"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("timings.{key}"));
        assert!(v.is_finite() && v >= 0.0, "timings.{key} = {v}");
    }
    let mem = &r["memory"];
    let file_len = tiny_bytes().len() as u64;
    let weight_bytes = mem["weight_bytes"].as_u64().unwrap();
    assert!(
        weight_bytes > 0 && weight_bytes <= file_len,
        "{weight_bytes} of {file_len}"
    );
    assert!(mem["peak_rss_bytes"].as_u64().unwrap() > weight_bytes);
    // At most 2 + 4 tokens are cached (the last generated one is not fed back): one
    // 16-token block of 2 layers × 2 (K, V) × 2 KV heads × 16 dims × 2 bytes per token.
    assert_eq!(mem["kv_bytes"].as_u64(), Some(16 * 256));
}

#[test]
fn greedy_runs_are_deterministic() {
    let args = [
        "--prompt",
        "the cat is on the mat",
        "--raw",
        "--max-tokens",
        "12",
        "--json",
    ];
    let (a, b) = (json(&run_tiny(&args)), json(&run_tiny(&args)));
    assert_eq!(a["token_ids"], b["token_ids"]);
    assert_eq!(a["text"], b["text"]);
    // More threads must not change greedy output either.
    let mut more = vec![
        "run",
        "--model",
        tiny_model(),
        "--threads",
        "3",
        "--temperature",
        "0",
    ];
    more.extend_from_slice(&args);
    assert_eq!(json(&llmem(&more))["token_ids"], a["token_ids"]);
}

#[test]
fn runs_sample_by_default_and_report_the_seed_that_repeats_them() {
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--model",
            tiny_model(),
            "--threads",
            "2",
            "--prompt",
            "hello",
            "--raw",
            "--max-tokens",
            "16",
            "--json",
        ];
        args.extend_from_slice(extra);
        json(&llmem(&args))
    };
    let r = run(&[]);
    let s = &r["sampling"];
    assert_eq!(s["temperature"].as_f64().unwrap() as f32, 0.8);
    assert_eq!(s["top_k"], 40);
    assert_eq!(s["top_p"].as_f64().unwrap() as f32, 0.95);
    assert_eq!(s["min_p"].as_f64().unwrap() as f32, 0.05);
    assert_eq!(s["greedy"], false);
    // The tiny model carries no recommendation.
    assert_eq!(s["from_model"], Value::Array(vec![]));
    let seed = s["seed"]
        .as_u64()
        .expect("the seed is reported")
        .to_string();
    assert_eq!(run(&["--seed", &seed])["token_ids"], r["token_ids"]);
    // Another run draws another seed.
    let seeds: Vec<u64> = (0..3)
        .map(|_| run(&[])["sampling"]["seed"].as_u64().unwrap())
        .collect();
    assert!(seeds.iter().any(|&x| x.to_string() != seed), "{seeds:?}");
    // --temperature 0 is greedy whatever the rest.
    let g = run(&["--temperature", "0", "--min-p", "0.5"]);
    assert_eq!(g["sampling"]["greedy"], true);
    assert_eq!(
        g["token_ids"],
        run(&["--temperature", "0"])["token_ids"],
        "greedy ignores min-p"
    );
}

#[test]
fn sampling_is_reproducible_for_a_seed() {
    let run = |seed: &str| {
        let args = [
            "--prompt",
            "hello",
            "--raw",
            "--max-tokens",
            "16",
            "--json",
            "--temperature",
            "0.8",
            "--seed",
            seed,
        ];
        json(&run_tiny(&args))["token_ids"].clone()
    };
    let first = run("7");
    assert_eq!(first, run("7"));
    // The seed matters: of a few other seeds, some give another continuation.
    assert!(
        ["8", "9", "10"].iter().any(|s| run(s) != first),
        "every seed gave {first}"
    );
}

#[test]
fn max_tokens_zero_generates_nothing() {
    let o = run_tiny(&["--prompt", "hi", "--raw", "--max-tokens", "0", "--json"]);
    // Either refused as a bad flag, or a run that generates nothing.
    if o.status.code() != Some(2) {
        assert_eq!(ids(&json(&o)["token_ids"]), Vec::<u64>::new());
    }
}

/// `bench infer` on the tiny model: one repetition, a 32-token prompt.
fn tiny_infer() -> [&'static str; 8] {
    let m = tiny_model();
    ["bench", "infer", "--model", m, "--reps", "1", "--pp", "32"]
}

#[test]
fn bench_infer_reports_the_three_figures() {
    let args = [&tiny_infer()[..], &["--tg", "8", "--depth", "64", "--json"]];
    let o = llmem(&[&args.concat()[..], &["--threads", "2", "--no-save"]].concat());
    let r = json(&o);
    for key in ["pp512_tok_s", "tg128_tok_s", "tg128_d4096_tok_s"] {
        let v = r[key].as_f64().unwrap_or_else(|| panic!("{key} in {r}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(r["threads"].as_u64(), Some(2));
    assert!(r["machine"]["cpu"].is_string() && r["machine"]["logical_cores"].as_u64() > Some(0));
}

#[test]
fn benches_save_measured_rates_that_plan_reads() {
    let cache = tempfile::tempdir().unwrap();
    let file = cache.path().join("llmem/tier-throughput.json");
    // No rates yet: plan says how to get a bound.
    let p = json(&llmem_cached(
        cache.path(),
        &["plan", "--model", tiny_model(), "--json"],
    ));
    assert!(p["decode_bound_tok_s"].is_null());
    let m = llmem_cached(
        cache.path(),
        &[
            "bench",
            "memory",
            "--sizes",
            "64K,8M",
            "--reps",
            "1",
            "--threads",
            "1",
            "--json",
        ],
    );
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    let args = tiny_infer();
    let i = llmem_cached(
        cache.path(),
        &[&args[..], &["--tg", "4", "--depth", "0"]].concat(),
    );
    assert!(i.status.success(), "{}", String::from_utf8_lossy(&i.stderr));
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(t["schema_version"], 1);
    let copy = t["dram_copy_gb_s"].as_f64().unwrap();
    assert!(copy > 0.0, "{t}");
    let prefill = t["prefill_tok_s"].as_object().unwrap();
    assert_eq!(prefill.len(), 1, "{t}");
    assert!(prefill.values().all(|v| v.as_f64().unwrap() > 0.0));
    // The bench memory run's rate survived the infer run's update, and plan uses it.
    let p = json(&llmem_cached(
        cache.path(),
        &["plan", "--model", tiny_model(), "--json"],
    ));
    assert_eq!(p["memory_copy_gb_s"].as_f64(), Some(copy));
    let need = (p["weights_bytes"].as_u64().unwrap() + p["kv_bytes"].as_u64().unwrap()) as f64;
    let bound = p["decode_bound_tok_s"].as_f64().unwrap();
    assert!((bound - copy * 1e9 / need).abs() <= 1e-6 * bound, "{bound}");
    // Hostile rates (zero, negative) are dropped, never divided by.
    let mut bad = t.clone();
    bad["dram_copy_gb_s"] = serde_json::json!(0.0);
    std::fs::write(&file, bad.to_string()).unwrap();
    let p = json(&llmem_cached(
        cache.path(),
        &["plan", "--model", tiny_model(), "--json"],
    ));
    assert!(p["decode_bound_tok_s"].is_null() && p["memory_copy_gb_s"].is_null());
    // A damaged file is reported and ignored, never fatal.
    std::fs::write(&file, "{ not json").unwrap();
    let o = llmem_cached(cache.path(), &["plan", "--model", tiny_model(), "--json"]);
    assert!(json(&o)["decode_bound_tok_s"].is_null());
    assert!(String::from_utf8_lossy(&o.stderr).contains("ignoring saved tier rates"));
}

// ---------------------------------------------------------------------------------------
// The real model.

/// The model, fetched by the project's script (cached in the models folder). Outside CI
/// a failed fetch skips the test with a message; under CI it fails.
fn real_model() -> Option<&'static str> {
    static PATH: OnceLock<Option<String>> = OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    PATH.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root.join("scripts/fetch-model.sh"))
            .output();
        match out {
            Ok(o) if o.status.success() => Some(stdout(&o).trim().to_owned()),
            other => {
                let why = format!("could not fetch the model: {other:?}");
                assert!(std::env::var_os("CI").is_none(), "{why}");
                eprintln!("SKIPPED: {why}");
                None
            }
        }
    })
    .as_deref()
}

/// The golden entry `name` of llama.cpp's greedy outputs.
fn golden(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/golden/smollm2-greedy.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let all: Value = serde_json::from_str(&text).expect("golden JSON");
    all["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("golden entry {name}"))
        .clone()
}

/// `llmem run` on the real model: `extra` then small context and two threads (greedy
/// unless `extra` says).
fn run_real(model: &str, extra: &[&str]) -> Output {
    let mut args = vec!["run", "--model", model];
    greedy_unless_set(&mut args, extra);
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--ctx", "512", "--threads", "2"]);
    llmem(&args)
}

const CAPITAL: &str = "The capital of France is";

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn real_model_completes_the_capital_of_france() {
    let Some(m) = real_model() else { return };
    let r = json(&run_real(
        m,
        &["--raw", "--prompt", CAPITAL, "--max-tokens", "8", "--json"],
    ));
    let g = golden("capital");
    assert_eq!(r["prompt_token_ids"], g["prompt_ids"]);
    let out = ids(&r["token_ids"]);
    assert_eq!(&out[..2], [7042, 30], "\" Paris.\"; text {}", r["text"]);
    // llama.cpp's greedy tokens, up to its first near-tie.
    let must = g["must_match"].as_u64().unwrap() as usize;
    assert_eq!(&out[..must], &ids(&g["gen_ids"])[..must]);
    assert!(
        r["text"].as_str().unwrap().starts_with(" Paris."),
        "{}",
        r["text"]
    );
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn real_model_chat_template_gives_llama_cpp_prompt_ids() {
    let Some(m) = real_model() else { return };
    let g = golden("chat-unified-memory");
    let user = g["user_message"].as_str().unwrap();
    assert_eq!(user, "What is unified memory?");
    let r = json(&run_real(
        m,
        &["--prompt", user, "--max-tokens", "3", "--json"],
    ));
    assert_eq!(r["prompt_token_ids"], g["prompt_ids"]);
    let must = (g["must_match"].as_u64().unwrap() as usize).min(3);
    assert_eq!(&ids(&r["token_ids"])[..must], &ids(&g["gen_ids"])[..must]);
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn real_model_prompt_file_equals_prompt() {
    let Some(m) = real_model() else { return };
    let path = write(
        &scratch_dir("prompt-file"),
        "prompt.txt",
        CAPITAL.as_bytes(),
    );
    let args = ["--raw", "--max-tokens", "4", "--json"];
    let from_file = json(&run_real(
        m,
        &[&args[..], &["--prompt-file", &path]].concat(),
    ));
    let inline = json(&run_real(m, &[&args[..], &["--prompt", CAPITAL]].concat()));
    assert_eq!(from_file["prompt_token_ids"], inline["prompt_token_ids"]);
    assert_eq!(from_file["token_ids"], inline["token_ids"]);
    assert_eq!(from_file["text"], inline["text"]);
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn real_model_streamed_text_equals_the_json_text() {
    let Some(m) = real_model() else { return };
    let args = ["--raw", "--prompt", CAPITAL, "--max-tokens", "8"];
    let streamed = run_real(m, &args);
    assert_eq!(streamed.status.code(), Some(0), "{}", stderr(&streamed));
    let r = json(&run_real(m, &[&args[..], &["--json"]].concat()));
    let text = r["text"].as_str().unwrap();
    assert!(!text.is_empty());
    // The stream ends with one newline after the generated text.
    assert_eq!(stdout(&streamed), format!("{text}\n"));
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn real_model_weights_are_mapped_not_copied() {
    let Some(m) = real_model() else { return };
    let r = json(&run_real(
        m,
        &["--raw", "--prompt", CAPITAL, "--max-tokens", "4", "--json"],
    ));
    let weight_bytes = r["memory"]["weight_bytes"].as_u64().unwrap();
    let peak = r["memory"]["peak_rss_bytes"]
        .as_u64()
        .expect("peak RSS is known on this OS");
    assert!(weight_bytes > 90_000_000, "weight_bytes {weight_bytes}");
    // Mapped weights count once in RSS; a heap copy would count them twice.
    assert!(
        peak <= weight_bytes + (64 << 20),
        "peak RSS {peak} > weights {weight_bytes} + 64 MiB"
    );
}
