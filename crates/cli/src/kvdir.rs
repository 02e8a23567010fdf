//! `--kv-dir`: the disk tier of `llmem run` and the restart-surviving prefix cache of
//! `llmem serve`, wired so that it can only ever make a run faster. It is a cache:
//! whatever goes wrong with it (a directory that cannot be opened or is in use, a full
//! disk, a failing write) costs at most one warning on stderr and the run goes on
//! without it, or only reading it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use engine::batch::BatchConfig;
use engine::forward::Session;
use engine::sched::PrefixStore;
use kvcache::{Access, BlockStore, Compression};
use weights::{DigestCache, MappedFile};

use crate::exit::{CliError, input};

/// `--kv-dir-max`'s default: enough for hundreds of thousands of prompt tokens of a
/// small model, little beside today's disks.
pub const DEFAULT_MAX: &str = "4GiB";

/// How long a run waits for another run to release the directory before it shares it
/// read-only.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// `--kv-dir` and `--kv-dir-max`, as `llmem run` and `llmem serve` take them.
#[derive(clap::Args, Debug)]
pub struct KvDirArgs {
    /// Keep prompt-prefix KV blocks in this directory across runs and restarts
    /// (checksummed files, keyed by every byte of the model and by the KV type): a later
    /// run or request with the same prefix skips its prefill. A cache: any failure of it
    /// is a warning, never a failed run.
    #[arg(long)]
    pub kv_dir: Option<PathBuf>,
    /// Most bytes of block files kept under --kv-dir (all models and types together);
    /// the least valuable blocks go first.
    #[arg(long, default_value = DEFAULT_MAX)]
    pub kv_dir_max: String,
}

/// Parses `--kv-dir-max`.
pub fn parse_max(text: &str) -> Result<u64, CliError> {
    let bytes: budget::Bytes = text
        .parse()
        .map_err(|e| input(anyhow::anyhow!("--kv-dir-max {text}: {e}")))?;
    if bytes.0 == 0 {
        return Err(input(anyhow::anyhow!(
            "--kv-dir-max must be more than 0 bytes (leave out --kv-dir to keep nothing)"
        )));
    }
    Ok(bytes.0)
}

/// The open disk tier of one run.
pub struct KvDir {
    dir: PathBuf,
    max_bytes: u64,
    warned: bool,
}

/// Opens `dir` as `session`'s disk store, keyed by every byte of the model `file` and
/// everything else that decides a block's bytes. `None` (after one line on stderr) when
/// the KV type reuses nothing or the store cannot be opened.
pub fn open(
    session: &mut Session<'_, '_>,
    file: &MappedFile,
    dir: &Path,
    kv_type: &str,
    max_bytes: u64,
) -> Option<KvDir> {
    if session.reuse_rule().is_none() {
        eprintln!(
            "note: --kv-type {kv_type} reuses no KV across runs (a block's precision depends \
             on when it was demoted, so a stored block is not the one this run computes); \
             --kv-dir is not used"
        );
        return None;
    }
    let digest = file_digest(file, dir)?;
    let store = open_store(dir, session.kv_store_identity(digest, build_digest()))?;
    let shared = store.access() == Access::ReadOnly;
    if let Err(e) = session.set_store(store) {
        warn(dir, &e.to_string());
        return None;
    }
    Some(KvDir {
        dir: dir.to_path_buf(),
        max_bytes,
        warned: shared,
    })
}

/// Opens `dir` as the prefix store of one served model (`file`, evaluated as `batch`
/// says): a directory of its own under `dir`, so two models or two cache types never
/// share blocks. `None` (after one line on stderr) as for [`open`].
pub fn open_prefix_store(
    batch: &BatchConfig,
    file: &MappedFile,
    dir: &Path,
    kv_type: &str,
    max_bytes: u64,
) -> Option<PrefixStore> {
    if batch.kv_mix.uniform_format().is_none() {
        eprintln!(
            "note: --kv-type {kv_type} shares no KV between requests (a block's precision \
             depends on when it was demoted); --kv-dir is not used"
        );
        return None;
    }
    let digest = file_digest(file, dir)?;
    let store = open_store(dir, batch.kv_store_identity(digest, build_digest()))?;
    Some(PrefixStore {
        store: Arc::new(store),
        max_bytes,
    })
}

fn warn(dir: &Path, what: &str) {
    eprintln!(
        "warning: --kv-dir {}: {what}; running without it",
        dir.display()
    );
}

/// A digest of every byte of `file` (cached between runs).
fn file_digest(file: &MappedFile, dir: &Path) -> Option<u64> {
    file.content_digest(&DigestCache::User)
        .map_err(|e| warn(dir, &e.to_string()))
        .ok()
}

/// Opens the store `id` under `dir`, read-only (said on stderr) while another llmem
/// writes it.
fn open_store(dir: &Path, id: u64) -> Option<BlockStore> {
    let store = BlockStore::open_or_share(dir, id, Compression::None, LOCK_WAIT)
        .map_err(|e| warn(dir, &e.to_string()))
        .ok()?;
    if store.access() == Access::ReadOnly {
        eprintln!(
            "warning: --kv-dir {} is in use by another llmem; reusing its blocks read-only, \
             writing none",
            dir.display()
        );
    }
    Some(store)
}

/// A digest of this executable (cached as the model's is): blocks computed by another
/// build may round differently, so they are kept apart. On Linux `/proc/self/exe` is the
/// running file even if a rebuild has replaced it at its path since. 0 if it cannot be
/// read.
fn build_digest() -> u64 {
    let running = Path::new("/proc/self/exe");
    let exe = if running.exists() {
        Some(running.to_path_buf())
    } else {
        std::env::current_exe().ok()
    };
    exe.and_then(|p| MappedFile::open(&p).ok())
        .and_then(|f| f.content_digest(&DigestCache::User).ok())
        .unwrap_or(0)
}

impl KvDir {
    /// Says once, on stderr, if the store stopped being written (the run goes on).
    pub fn report(&mut self, session: &Session<'_, '_>) {
        if let Some(why) = session.store_failure()
            && !self.warned
        {
            self.warned = true;
            eprintln!(
                "warning: --kv-dir {}: {why}; continuing without writing to it",
                self.dir.display()
            );
        }
    }

    /// At the end of the run: holds the directory to `--kv-dir-max`, least valuable
    /// blocks first, then reports any failure.
    pub fn finish(mut self, session: &mut Session<'_, '_>) {
        session.trim_store(self.max_bytes);
        self.report(session);
    }
}
