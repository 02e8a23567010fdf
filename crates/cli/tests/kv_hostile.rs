//! `--kv-dir` against a hostile tester (issue 13): a reused prefix never changes an
//! answer — not across KV types, not across models that differ past their first bytes,
//! not for any KV type — and nothing the directory does (fill up, hold FIFOs or
//! directories where blocks should be, be in use by another run, hold damaged blocks)
//! fails a run or loses more than the cache.

mod common_cli;

use common_cli::{Output, Path, PathBuf, Value, json_of as json, llmem_cached, model, root};

/// The start of the evaluation text, `chars` characters: 2,400 make 569 tokens, past one
/// f16 micro-batch (512), so every type has a prefix to reuse.
fn prompt_text(chars: usize) -> String {
    let text = std::fs::read_to_string(root().join("testdata/eval/licenses.txt")).unwrap();
    text.chars().take(chars).collect()
}

const LONG: usize = 2400;

struct Runner {
    model: PathBuf,
    prompt: PathBuf,
    /// The user cache directory the runs see (where model digests are cached).
    cache: tempfile::TempDir,
    _prompt_dir: tempfile::TempDir,
}

impl Runner {
    fn new(model: PathBuf) -> Self {
        Self::with_prompt(model, LONG)
    }

    fn with_prompt(model: PathBuf, chars: usize) -> Self {
        let prompt_dir = tempfile::tempdir().unwrap();
        let prompt = prompt_dir.path().join("prompt.txt");
        std::fs::write(&prompt, prompt_text(chars)).unwrap();
        Runner {
            model,
            prompt,
            cache: tempfile::tempdir().unwrap(),
            _prompt_dir: prompt_dir,
        }
    }

    fn output(&self, model: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "run",
            "--model",
            model.to_str().unwrap(),
            "--prompt-file",
            self.prompt.to_str().unwrap(),
            "--max-tokens",
            "8",
            "--threads",
            "2",
            "--temperature",
            "0",
            "--json",
        ];
        args.extend_from_slice(extra);
        llmem_cached(self.cache.path(), &args)
    }

    fn run(&self, extra: &[&str]) -> Value {
        json(&self.output(&self.model, extra))
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn reused(v: &Value) -> u64 {
    v["kv"]["prefix_reused_tokens"].as_u64().unwrap()
}

/// Block files under `dir`, recursively.
fn block_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(block_files(&p));
        } else if p.extension().is_some_and(|x| x == "kvb") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Issue 13, finding 1: an int2 run's blocks were reused by an f16 run (544 tokens,
/// `tier_blocks` full of int2 blocks under `kv_type: f16`, another text).
#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn finding1_blocks_of_another_kv_type_are_never_reused() {
    let Some(m) = model() else { return };
    let r = Runner::new(m);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let int2 = r.run(&["--kv-type", "int2", "--kv-dir", d]);
    assert!(int2["kv"]["blocks_persisted"].as_u64().unwrap() > 30);
    let f16 = r.run(&["--kv-dir", d]);
    assert_eq!(reused(&f16), 0, "f16 took int2 blocks");
    assert_eq!(
        f16["kv"]["tier_blocks"][2], 0,
        "no cold blocks in an f16 cache"
    );
    let alone = r.run(&[]);
    assert_eq!(f16["token_ids"], alone["token_ids"]);
    // The same type still reuses its own blocks (the check above can fail).
    assert!(reused(&r.run(&["--kv-type", "int2", "--kv-dir", d])) > 0);
}

/// Reverses the order of the rows that start past the first 4 KiB of `tensor`: the
/// file keeps its size and header, and the first 4 KiB of every tensor.
fn reverse_rows_past_4k(bytes: &mut [u8], tensor: &str) {
    let (off, len, row) = {
        let f = gguf::GgufFile::parse(bytes).unwrap();
        let t = f.tensor(tensor).unwrap();
        let data = f.tensor_data(t);
        let off = data.as_ptr() as usize - bytes.as_ptr() as usize;
        let rows = t.dims()[1] as usize;
        (off, data.len(), data.len() / rows)
    };
    let first = 4096usize.div_ceil(row);
    let n = len / row;
    let rows: Vec<Vec<u8>> = (first..n)
        .map(|i| bytes[off + i * row..off + (i + 1) * row].to_vec())
        .collect();
    for (k, r) in rows.iter().rev().enumerate() {
        let at = off + (first + k) * row;
        bytes[at..at + row].copy_from_slice(r);
    }
}

/// Issue 13, finding 2: a copy of the model whose K/V weights differ only past 4 KiB
/// reused the original's blocks (the digest covered the header and 4 KiB per tensor)
/// and generated nothing. The key now covers every byte.
#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn finding2_blocks_of_another_model_are_never_reused() {
    let Some(m) = model() else { return };
    let r = Runner::new(m.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut bytes = std::fs::read(&m).unwrap();
    let original = bytes.clone();
    reverse_rows_past_4k(&mut bytes, "blk.0.attn_k.weight");
    reverse_rows_past_4k(&mut bytes, "blk.0.attn_v.weight");
    assert_eq!(bytes.len(), original.len());
    assert_ne!(bytes, original);
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("changed.gguf");
    std::fs::write(&copy, &bytes).unwrap();
    drop((bytes, original));

    let first = r.run(&["--kv-dir", d]);
    assert!(first["kv"]["blocks_persisted"].as_u64().unwrap() > 30);
    let changed = json(&r.output(&copy, &["--kv-dir", d]));
    assert_eq!(
        reused(&changed),
        0,
        "the changed model took the original's blocks"
    );
    let alone = json(&r.output(&copy, &[]));
    assert_eq!(changed["token_ids"], alone["token_ids"]);
    // Each keeps reusing its own.
    assert!(reused(&json(&r.output(&copy, &["--kv-dir", d]))) > 0);
    assert!(reused(&r.run(&["--kv-dir", d])) > 0);
}

/// Issue 13, finding 3: with int4, int2 and tiered, a run reusing blocks gave other
/// greedy tokens than the run that wrote them. Now every type answers the same; the
/// mixes by age say so once and reuse nothing.
#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn finding3_reuse_gives_the_same_tokens_for_every_kv_type() {
    let Some(m) = model() else { return };
    let long = Runner::new(m.clone());
    // The quantized types read 128 tokens at a time: a shorter prompt shows their reuse.
    let short = Runner::with_prompt(m, 1300);
    for kv_type in ["f16", "int8", "int4", "int2", "tiered-4bit", "tiered"] {
        let r = if kv_type == "f16" { &long } else { &short };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let args = ["--kv-type", kv_type, "--kv-dir", d];
        // The first run finds nothing: it is a run without reuse.
        let first = r.output(&r.model, &args);
        let second = r.output(&r.model, &args);
        let (a, b) = (json(&first), json(&second));
        assert_eq!(reused(&a), 0);
        assert_eq!(a["token_ids"], b["token_ids"], "{kv_type}");
        if kv_type.starts_with("tiered") {
            assert_eq!(reused(&b), 0, "{kv_type}");
            assert_eq!(
                stderr(&second).matches("note:").count(),
                1,
                "{}",
                stderr(&second)
            );
        } else {
            // The reuse ends on a multiple of the micro-batch: 512 tokens for f16 (of
            // 569), 128 for the quantized types (of the short prompt's).
            let n = a["prompt_token_ids"].as_array().unwrap().len() as u64;
            let micro_batch = if kv_type == "f16" { 512 } else { 128 };
            assert_eq!(
                reused(&b),
                (n - 1) / 16 * 16 / micro_batch * micro_batch,
                "{kv_type}"
            );
            assert!(reused(&b) >= 256, "{kv_type}");
            assert_eq!(stderr(&second), "", "{kv_type}");
        }
    }
}

/// Creates a non-empty directory at every block path `reference` has, under `dir`.
fn squat_every_block(reference: &Path, dir: &Path) {
    for f in block_files(reference) {
        let rel = f.strip_prefix(reference).unwrap();
        let p = dir.join(rel);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("keep"), b"someone's file").unwrap();
    }
}

/// Issue 13, finding 5: on a full disk `--kv-dir` failed the run with no output, and
/// every later run on that directory too. A write that fails now costs one warning; the
/// run answers as without the store, and so does the next one. (Shown with every block
/// name taken by a directory, which fails every write as a full disk does, without
/// needing a small file system; the kvdisk and kvcache tests inject ENOSPC itself.)
#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn finding5_a_failing_disk_degrades_to_no_store_with_one_warning() {
    let Some(m) = model() else { return };
    let r = Runner::new(m);
    let good = tempfile::tempdir().unwrap();
    let want = r.run(&["--kv-dir", good.path().to_str().unwrap()]);
    let bad = tempfile::tempdir().unwrap();
    squat_every_block(good.path(), bad.path());
    let d = bad.path().to_str().unwrap();
    for round in 0..2 {
        let o = r.output(&r.model, &["--kv-dir", d]);
        let v = json(&o);
        assert_eq!(v["token_ids"], want["token_ids"], "round {round}");
        assert_eq!(v["kv"]["blocks_persisted"], 0);
        let err = stderr(&o);
        assert_eq!(err.matches("warning:").count(), 1, "round {round}: {err}");
        assert!(err.contains("without writing"), "{err}");
    }
    // Someone's directories are left as they were.
    assert_eq!(
        block_files(bad.path()).len(),
        0,
        "no block was written over a directory"
    );
    // A directory that cannot be a store at all: a warning, and the run goes on.
    let file = bad.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let o = r.output(&r.model, &["--kv-dir", file.to_str().unwrap()]);
    assert_eq!(json(&o)["token_ids"], want["token_ids"]);
    assert!(stderr(&o).contains("running without it"), "{}", stderr(&o));
    // A bad cap is bad input.
    let o = r.output(&r.model, &["--kv-dir", d, "--kv-dir-max", "lots"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Issue 13, finding 5: a FIFO where a block file should be hung the run.
#[cfg(unix)]
#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn finding5_a_fifo_at_a_block_path_neither_hangs_nor_fails_the_run() {
    let Some(m) = model() else { return };
    let r = Runner::new(m);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let want = r.run(&["--kv-dir", d]);
    let files = block_files(dir.path());
    for f in &files {
        std::fs::remove_file(f).unwrap();
        let ok = std::process::Command::new("mkfifo")
            .arg(f)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (model, prompt, cache) = (
        r.model.clone(),
        r.prompt.clone(),
        r.cache.path().to_path_buf(),
    );
    let dd = d.to_string();
    std::thread::spawn(move || {
        let o = llmem_cached(
            &cache,
            &[
                "run",
                "--model",
                model.to_str().unwrap(),
                "--prompt-file",
                prompt.to_str().unwrap(),
                "--max-tokens",
                "8",
                "--threads",
                "2",
                "--temperature",
                "0",
                "--json",
                "--kv-dir",
                &dd,
            ],
        );
        let _ = tx.send(o);
    });
    let o = rx
        .recv_timeout(std::time::Duration::from_secs(300))
        .expect("the run hung on a FIFO");
    let v = json(&o);
    assert_eq!(v["token_ids"], want["token_ids"]);
    assert_eq!(reused(&v), 0, "a FIFO is no block");
    // Every FIFO was replaced by the recomputed block.
    for f in &files {
        assert!(f.metadata().unwrap().is_file(), "{}", f.display());
    }
    assert_eq!(reused(&r.run(&["--kv-dir", d])), 512);
}

/// Issue 13, item 9: a second run on a directory in use exited at once. It now waits a
/// moment, then reuses the blocks read-only (one warning) and answers the same.
#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn item9_a_second_run_on_a_busy_kv_dir_shares_it_read_only() {
    let Some(m) = model() else { return };
    let r = Runner::new(m);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let want = r.run(&["--kv-dir", d]);
    // A long run holds the directory while the second one starts.
    let mut holder = std::process::Command::new(common_cli::BIN)
        .args([
            "run",
            "--model",
            r.model.to_str().unwrap(),
            "--prompt",
            "Count to a thousand.",
            "--max-tokens",
            "8000",
            "--ctx",
            "8192",
            "--ignore-eos",
            // The same threads as the runs: the thread count is part of the store's key.
            "--threads",
            "2",
            "--temperature",
            "0",
            "--kv-dir",
            d,
        ])
        .env("XDG_CACHE_HOME", r.cache.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its first generated text means it holds the lock.
    let mut first = [0u8; 1];
    std::io::Read::read_exact(holder.stdout.as_mut().unwrap(), &mut first).unwrap();
    let o = r.output(&r.model, &["--kv-dir", d]);
    let _ = holder.kill();
    let _ = holder.wait();
    let v = json(&o);
    assert_eq!(v["token_ids"], want["token_ids"]);
    assert_eq!(reused(&v), 512, "read-only sharing still reuses");
    assert_eq!(v["kv"]["blocks_persisted"], 0);
    let err = stderr(&o);
    assert_eq!(err.matches("warning:").count(), 1, "{err}");
    assert!(err.contains("read-only"), "{err}");
}

/// Issue 13, item 9: with several damaged blocks, each run repaired only the first. One
/// run now repairs them all.
#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn item9_every_damaged_block_is_repaired_in_one_run() {
    let Some(m) = model() else { return };
    let r = Runner::new(m);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let want = r.run(&["--kv-dir", d]);
    let files = block_files(dir.path());
    assert!(files.len() > 30);
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    for f in [&files[3], &files[10], &files[20], &files[files.len() - 1]] {
        let mut b = std::fs::read(f).unwrap();
        let at = b.len() - 50;
        b[at] ^= 0x04;
        std::fs::write(f, &b).unwrap();
    }
    let second = r.run(&["--kv-dir", d]);
    assert_eq!(second["token_ids"], want["token_ids"]);
    assert!(reused(&second) < 512);
    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(
        before == after,
        "every damaged file was rewritten as it was"
    );
    let third = r.run(&["--kv-dir", d]);
    assert_eq!(reused(&third), 512);
    assert_eq!(third["token_ids"], want["token_ids"]);
}

fn block_bytes(dir: &Path) -> u64 {
    block_files(dir)
        .iter()
        .map(|f| f.metadata().unwrap().len())
        .sum()
}

/// Issue 13, finding 5: the store had no size cap. `--kv-dir-max` now holds every model
/// and type under the directory to it together, least valuable blocks first: the older
/// type's before the newer's, and a chain from its end, so what is kept is still a
/// prefix that is reused.
#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn finding5_the_kv_dir_is_held_to_its_cap_least_valuable_first() {
    let Some(m) = model() else { return };
    let r = Runner::new(m);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let cap = 3 * 1024 * 1024;
    let args = |t: &'static str| ["--kv-type", t, "--kv-dir", d, "--kv-dir-max", "3MiB"];
    let first = r.run(&args("int4"));
    assert_eq!(first["kv"]["blocks_persisted"], 35);
    let kept = block_bytes(dir.path());
    assert!(kept <= cap && kept > cap / 2, "{kept}");
    // What was kept is the start of the prompt: reused, to a micro-batch boundary.
    let again = r.run(&args("int4"));
    let n_kept = block_files(dir.path()).len() as u64;
    assert_eq!(reused(&again), n_kept * 16 / 128 * 128);
    assert_eq!(again["token_ids"], first["token_ids"]);
    // Another type: the older type's blocks go first.
    r.run(&args("int8"));
    assert!(block_bytes(dir.path()) <= cap);
    assert_eq!(
        reused(&r.run(&args("int4"))),
        0,
        "int4's blocks were evicted first"
    );
}
