//! [`BlockStore`]: one file per block under `root/<model digest>/`.
//!
//! ```text
//! root/
//!   00c0ffee12345678/            model digest, 16 lowercase hex digits
//!     LOCK                       flock'd by the one writing BlockStore
//!     USAGE                      reads and chain links per block (see `usage`), advisory
//!     000000000000002a.kvb       block for key 0x2a (format: see `format`)
//!     tmp-000000000000002b-…     a put in flight; removed by the next open
//! ```
//!
//! # Why a crash cannot leave a half-written block under a final name
//! `put` writes the whole file under a temp name, fsyncs it, then renames it over the
//! final name and fsyncs the directory. rename(2) within one directory is atomic: a
//! reader sees the old file or the new one. The fsync before the rename means that after
//! a power loss the name cannot point at a file whose data never reached the disk (the
//! zero-length-file-after-rename failure of ext4 `data=writeback` and others). A crash
//! before the rename leaves only a temp file, which `open` removes; a crash after it but
//! before the directory fsync may lose the rename, which leaves the previous content or
//! no file: both are valid answers for a cache. And should all of that fail anyway (a
//! lying disk, a bit rot, a file edited by hand), every read is checked end to end
//! (header checksum, lengths, digest, key, payload and raw xxh3) and a bad file is
//! deleted and reported as [`DiskError::Corrupt`], never returned.
//!
//! # Hostile names
//! A block's name may hold a FIFO, a directory, a symlink or a device instead of a file:
//! reads open with `O_NONBLOCK | O_NOFOLLOW` and check the type on the open handle (see
//! `fsx`), so such a name is reported corrupt (and removed where that is safe), never
//! followed and never waited on; a put over a squatting FIFO, symlink or empty directory
//! replaces it.
//!
//! # Sharing a directory
//! One handle at a time writes a directory (an exclusive `flock` on `LOCK`).
//! [`BlockStore::open_or_share`] waits a moment for that lock and otherwise opens the
//! directory [`Access::ReadOnly`]: reads verify as usual, but nothing is written, removed
//! or cleaned up, since the lock's holder may be mid-put.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

use crate::codec::decompress_raw;
use crate::format::{HEADER_LEN, Header};
use crate::fsx::{self, OpenRefusal};
use crate::usage::{self, BlockUse};
use crate::{Compression, Corruption, DiskError, MAX_RAW_BYTES, compress};

const BLOCK_EXT: &str = ".kvb";
const TEMP_PREFIX: &str = "tmp-";
const LOCK_NAME: &str = "LOCK";
pub(crate) const USAGE_NAME: &str = "USAGE";

/// A point at which [`BlockStore::put_with_fault`] stops, leaving the directory exactly
/// as a process killed there would. Testing hook, not part of the stable API.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// After this many bytes of the temp file are written (all of it if larger).
    AfterTempBytes(u64),
    /// Temp file fully written, not yet fsynced.
    BeforeTempSync,
    /// Temp file fsynced, not yet renamed.
    BeforeRename,
    /// Renamed to the final name, directory not yet fsynced.
    BeforeDirSync,
}

/// What a handle may do to its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Holds the directory's lock: reads, writes, removes and cleans up.
    Exclusive,
    /// Another handle holds the lock: reads and verifies only. Puts and removes fail with
    /// [`DiskError::ReadOnly`]; a corrupt file is reported but left for the lock holder.
    ReadOnly,
}

/// Mutable bookkeeping shared by the threads using one handle.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Keys whose file this handle wrote or read back whole: [`BlockStore::verify`]
    /// does not read them again.
    known_good: HashSet<u64>,
    pub(crate) usage: HashMap<u64, BlockUse>,
    /// `usage` differs from the `USAGE` file.
    pub(crate) usage_dirty: bool,
}

/// Checksummed, crash-safe block files for one model.
///
/// Blocks are opaque byte payloads keyed by a `u64` (the kvcache block hash). Files
/// written with any codec are readable whatever `compression` this handle writes with.
///
/// # Invariants
/// - An [`Access::Exclusive`] handle holds an exclusive lock on `dir/LOCK` for its life:
///   no other handle (in any process) writes or cleans this directory meanwhile.
///   [`Access::ReadOnly`] handles never change it.
/// - Every file named `<16 hex>.kvb` in `dir` was complete and fsynced before it got that
///   name; any file that nonetheless fails a check is deleted by [`get`](Self::get) (by
///   an exclusive handle).
/// - Names starting with `tmp-` are puts in flight; after an exclusive
///   [`open`](Self::open) returns there are none left from earlier handles.
#[derive(Debug)]
pub struct BlockStore {
    pub(crate) root: PathBuf,
    pub(crate) dir: PathBuf,
    model_digest: u64,
    compression: Compression,
    pub(crate) access: Access,
    /// Makes temp names unique among concurrent puts of this handle.
    temp_seq: AtomicU64,
    /// Bytes puts may still write before they fail as on a full disk (testing hook,
    /// [`BlockStore::simulate_full_disk`]); `u64::MAX` = no limit.
    space_left: AtomicU64,
    state: Mutex<State>,
    /// Held for the lock; never read or written.
    _lock: File,
}

impl BlockStore {
    /// Opens (creating if needed) the directory `root/<model digest as 16 hex digits>/`,
    /// takes its lock and removes temp files left by a crashed writer.
    ///
    /// Fails with [`DiskError::Locked`] while another writing `BlockStore` has it open.
    pub fn open(
        root: &Path,
        model_digest: u64,
        compression: Compression,
    ) -> Result<Self, DiskError> {
        Self::open_with(root, model_digest, compression, None)
    }

    /// As [`open`](Self::open), but while another handle holds the lock this waits up to
    /// `wait` for it and then opens the directory [`Access::ReadOnly`] instead of failing:
    /// a second run on the same directory reuses its blocks and writes none.
    pub fn open_or_share(
        root: &Path,
        model_digest: u64,
        compression: Compression,
        wait: Duration,
    ) -> Result<Self, DiskError> {
        Self::open_with(root, model_digest, compression, Some(wait))
    }

    fn open_with(
        root: &Path,
        model_digest: u64,
        compression: Compression,
        share_after: Option<Duration>,
    ) -> Result<Self, DiskError> {
        let dir = root.join(format!("{model_digest:016x}"));
        fs::create_dir_all(&dir).map_err(|e| DiskError::io("create directory", &dir, e))?;
        // Make the new directory's own name durable; best effort, a lost directory is
        // only a cold cache.
        let _ = sync_dir(root);
        let lock_path = dir.join(LOCK_NAME);
        let lock = fsx::open_regular_for_write(&lock_path)
            .map_err(|e| DiskError::io("open", &lock_path, e))?;
        let started = Instant::now();
        let access = loop {
            match lock.try_lock() {
                Ok(()) => break Access::Exclusive,
                Err(fs::TryLockError::WouldBlock) => match share_after {
                    Some(wait) if started.elapsed() >= wait => break Access::ReadOnly,
                    Some(_) => std::thread::sleep(Duration::from_millis(20)),
                    None => return Err(DiskError::Locked { path: dir }),
                },
                Err(fs::TryLockError::Error(e)) => {
                    return Err(DiskError::io("lock", &lock_path, e));
                }
            }
        };
        let usage = match fsx::open_regular(&dir.join(USAGE_NAME)) {
            Ok(mut f) => usage::read_capped(&mut f).unwrap_or_default(),
            Err(_) => HashMap::new(),
        };
        let store = Self {
            root: root.to_path_buf(),
            dir,
            model_digest,
            compression,
            access,
            temp_seq: AtomicU64::new(0),
            space_left: AtomicU64::new(u64::MAX),
            state: Mutex::new(State {
                usage,
                ..State::default()
            }),
            _lock: lock,
        };
        if access == Access::Exclusive {
            store.remove_temp_files()?;
        }
        Ok(store)
    }

    /// The directory holding this model's blocks.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The digest this store was opened for (its directory's name).
    pub fn model_digest(&self) -> u64 {
        self.model_digest
    }

    /// Whether this handle may write.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The codec new blocks are written with (a block it does not shrink is written
    /// uncompressed).
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The file that holds `key`'s block (whether or not it exists).
    pub fn block_path(&self, key: u64) -> PathBuf {
        self.dir.join(format!("{key:016x}{BLOCK_EXT}"))
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // The state is bookkeeping only: a panic elsewhere cannot leave it unsafe to use.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn writable(&self) -> Result<(), DiskError> {
        match self.access {
            Access::Exclusive => Ok(()),
            Access::ReadOnly => Err(DiskError::ReadOnly {
                path: self.dir.clone(),
            }),
        }
    }

    /// Stores `payload` under `key`, replacing any previous block, atomically and durably
    /// (see the module doc). Returns the file's size in bytes.
    ///
    /// Fails with [`DiskError::TooLarge`] for a payload over [`MAX_RAW_BYTES`], with
    /// [`DiskError::Codec`] if the store's codec is zstd and the `zstd` feature is off,
    /// with [`DiskError::ReadOnly`] on a shared handle, and with [`DiskError::Io`] when
    /// the file system does (a full disk among others). After any error the key holds
    /// either the previous block (or none) or, if only the final directory fsync failed,
    /// the whole new block, which a power loss may roll back.
    pub fn put(&self, key: u64, payload: &[u8]) -> Result<u64, DiskError> {
        self.put_inner(key, payload, None)
    }

    /// [`put`](Self::put) that stops at `fault` with [`DiskError::InjectedFault`], leaving
    /// behind what a crash there would (the temp file is not cleaned up).
    #[doc(hidden)]
    pub fn put_with_fault(&self, key: u64, payload: &[u8], fault: Fault) -> Result<u64, DiskError> {
        self.put_inner(key, payload, Some(fault))
    }

    /// Makes puts fail once they would write more than `bytes` more bytes in all, with
    /// the error a full file system gives (ENOSPC). Testing hook.
    #[doc(hidden)]
    pub fn simulate_full_disk(&self, bytes: u64) {
        self.space_left.store(bytes, Ordering::Relaxed);
    }

    fn put_inner(&self, key: u64, payload: &[u8], fault: Option<Fault>) -> Result<u64, DiskError> {
        self.writable()?;
        if payload.len() > MAX_RAW_BYTES {
            return Err(DiskError::TooLarge {
                len_bytes: payload.len() as u64,
                cap_bytes: MAX_RAW_BYTES as u64,
            });
        }
        let mut compressed = Vec::new();
        let (codec, stored) = match self.compression {
            Compression::None => (Compression::None, payload),
            c => {
                compress(c, payload, &mut compressed)?;
                // 4- and 2-bit KV codes are close to incompressible (docs/design/kvdisk.md):
                // a block the codec does not shrink is stored as is, so reading it costs a
                // copy, not a decode.
                if compressed.len() < payload.len() {
                    (c, &compressed[..])
                } else {
                    (Compression::None, payload)
                }
            }
        };
        let header = Header::for_payload(codec, self.model_digest, key, payload, stored).encode();
        let file_bytes = (HEADER_LEN + stored.len()) as u64;

        let temp = self.temp_path(&format!("{key:016x}"));
        let left = self.space_left.load(Ordering::Relaxed);
        if left != u64::MAX {
            if file_bytes > left {
                return Err(DiskError::io(
                    "write",
                    &temp,
                    io::Error::from(io::ErrorKind::StorageFull),
                ));
            }
            self.space_left.fetch_sub(file_bytes, Ordering::Relaxed);
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| DiskError::io("create", &temp, e))?;
        let result = write_synced(&mut file, &temp, [&header[..], stored], fault);
        drop(file);
        if let Err(e) = result {
            if !matches!(e, DiskError::InjectedFault(_)) {
                let _ = fs::remove_file(&temp);
            }
            return Err(e);
        }
        if fault == Some(Fault::BeforeRename) {
            return Err(DiskError::InjectedFault(Fault::BeforeRename));
        }
        let path = self.block_path(key);
        let renamed = fs::rename(&temp, &path).or_else(|e| {
            // rename(2) replaces a FIFO or a symlink but not a directory: an empty one
            // squatting on the name is removed and the rename tried once more.
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                fsx::remove_squatter(&path).map_err(|_| e)?;
                fs::rename(&temp, &path)
            } else {
                Err(e)
            }
        });
        if let Err(e) = renamed {
            let _ = fs::remove_file(&temp);
            return Err(DiskError::io("rename", &temp, e));
        }
        {
            let mut st = self.state();
            st.known_good.insert(key);
            let u = st.usage.entry(key).or_default();
            u.last_use_ms = usage::now_ms();
            st.usage_dirty = true;
        }
        if fault == Some(Fault::BeforeDirSync) {
            return Err(DiskError::InjectedFault(Fault::BeforeDirSync));
        }
        sync_dir(&self.dir)?;
        Ok(file_bytes)
    }

    pub(crate) fn temp_path(&self, what: &str) -> PathBuf {
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{TEMP_PREFIX}{what}-{}-{seq}", std::process::id()))
    }

    /// The block stored under `key`: `Ok(None)` if there is none, the exact bytes given
    /// to `put` otherwise. A successful read counts as a use of the block.
    ///
    /// A file that fails any check — or a name that holds something other than a regular
    /// file — gives [`DiskError::Corrupt`] naming the file and the check, and is deleted
    /// (best effort, by an exclusive handle) so the caller recomputes the block. A sound
    /// file stored with zstd, read by a build without the `zstd` feature, gives
    /// [`DiskError::CodecNotBuilt`] and is kept (a build with zstd can still read it).
    pub fn get(&self, key: u64) -> Result<Option<Vec<u8>>, DiskError> {
        let got = self.read(key)?;
        if got.is_some() && self.access == Access::Exclusive {
            let mut st = self.state();
            let u = st.usage.entry(key).or_default();
            u.uses = u.uses.saturating_add(1);
            u.last_use_ms = usage::now_ms();
            st.usage_dirty = true;
        }
        Ok(got)
    }

    /// Whether a sound block is stored under `key`. A file this handle wrote or read back
    /// whole is trusted; any other is read and checked end to end (a corrupt one is
    /// removed, as by [`get`](Self::get), and gives `Ok(false)`). Not a use of the block.
    pub fn verify(&self, key: u64) -> Result<bool, DiskError> {
        if self.state().known_good.contains(&key) && self.contains(key) {
            return Ok(true);
        }
        match self.read(key) {
            Ok(got) => Ok(got.is_some()),
            Err(DiskError::Corrupt { .. }) => Ok(false),
            Err(DiskError::CodecNotBuilt { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    fn read(&self, key: u64) -> Result<Option<Vec<u8>>, DiskError> {
        let path = self.block_path(key);
        let mut file = match fsx::open_regular(&path) {
            Ok(file) => file,
            Err(OpenRefusal::Missing) => {
                self.forget(key);
                return Ok(None);
            }
            Err(OpenRefusal::Io(e)) => return Err(DiskError::io("open", &path, e)),
            Err(OpenRefusal::NotRegular(kind)) => {
                if self.access == Access::Exclusive {
                    let _ = fsx::remove_squatter(&path);
                }
                self.forget(key);
                return Err(DiskError::Corrupt {
                    path,
                    what: Corruption::NotRegularFile { kind },
                });
            }
        };
        match self.read_block(&mut file, key) {
            Ok(raw) => {
                self.state().known_good.insert(key);
                Ok(Some(raw))
            }
            Err(ReadFailure::Io(op, e)) => Err(DiskError::io(op, &path, e)),
            Err(ReadFailure::CodecNotBuilt(codec)) => Err(DiskError::CodecNotBuilt { path, codec }),
            Err(ReadFailure::Corrupt(what)) => {
                drop(file);
                // If a concurrent put renamed a fresh file here meanwhile, this deletes a
                // good block: harmless for a cache, it is recomputed.
                if self.access == Access::Exclusive {
                    let _ = fs::remove_file(&path);
                }
                self.forget(key);
                Err(DiskError::Corrupt { path, what })
            }
        }
    }

    /// Drops what this handle remembers of `key` (its file is gone or bad).
    fn forget(&self, key: u64) {
        let mut st = self.state();
        st.known_good.remove(&key);
        if self.access == Access::Exclusive && st.usage.remove(&key).is_some() {
            st.usage_dirty = true;
        }
    }

    fn read_block(&self, file: &mut File, key: u64) -> Result<Vec<u8>, ReadFailure> {
        let file_bytes = file
            .metadata()
            .map_err(|e| ReadFailure::Io("stat", e))?
            .len();
        let mut hb = [0u8; HEADER_LEN];
        if file_bytes < HEADER_LEN as u64 {
            return Err(Corruption::Truncated { file_bytes }.into());
        }
        file.read_exact(&mut hb).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => Corruption::Truncated { file_bytes }.into(),
            _ => ReadFailure::Io("read", e),
        })?;
        let h = Header::decode(&hb)?;
        if h.model_digest != self.model_digest {
            return Err(Corruption::ModelDigest {
                expected: self.model_digest,
                found: h.model_digest,
            }
            .into());
        }
        if h.key != key {
            return Err(Corruption::Key {
                expected: key,
                found: h.key,
            }
            .into());
        }
        let expected_bytes = HEADER_LEN as u64 + h.stored_len;
        let length_err = |file_bytes| Corruption::FileLength {
            expected_bytes,
            file_bytes,
        };
        if file_bytes != expected_bytes {
            return Err(length_err(file_bytes).into());
        }
        // The header is sound and its lengths agree with the file: a codec this build
        // lacks says nothing against the file, so it is reported, not treated as corrupt.
        if !h.compression.is_available() {
            return Err(ReadFailure::CodecNotBuilt(h.compression));
        }
        // stored_len is capped by Header::decode and equals the file's size: this
        // allocation is bounded by both.
        let mut stored = Vec::new();
        stored
            .try_reserve_exact(h.stored_len as usize)
            .map_err(|_| {
                ReadFailure::Io("allocate", io::Error::from(io::ErrorKind::OutOfMemory))
            })?;
        // Read one byte past the end to notice a file that grew since the stat.
        let n = (&mut *file)
            .take(h.stored_len + 1)
            .read_to_end(&mut stored)
            .map_err(|e| ReadFailure::Io("read", e))?;
        if n as u64 != h.stored_len {
            return Err(length_err(HEADER_LEN as u64 + n as u64).into());
        }
        let computed = xxh3_64(&stored);
        if computed != h.stored_xxh3 {
            return Err(Corruption::PayloadChecksum {
                stored: h.stored_xxh3,
                computed,
            }
            .into());
        }
        let mut raw = Vec::new();
        decompress_raw(h.compression, &stored, h.raw_len as usize, &mut raw)
            .map_err(Corruption::Decode)?;
        let computed = xxh3_64(&raw);
        if computed != h.raw_xxh3 {
            return Err(Corruption::RawChecksum {
                stored: h.raw_xxh3,
                computed,
            }
            .into());
        }
        Ok(raw)
    }

    /// Whether a file exists for `key`. Cheap (one stat); does not verify the file, so a
    /// later [`get`](Self::get) may still find it corrupt.
    pub fn contains(&self, key: u64) -> bool {
        fs::symlink_metadata(self.block_path(key)).is_ok_and(|m| m.is_file())
    }

    /// Deletes `key`'s block; absent is fine. The directory is not fsynced: a removal lost
    /// to a crash brings back a valid old block, which is harmless.
    pub fn remove(&self, key: u64) -> Result<(), DiskError> {
        self.writable()?;
        let path = self.block_path(key);
        self.forget(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DiskError::io("remove", &path, e)),
        }
    }

    /// Keys with a block file, ascending. Like [`contains`](Self::contains), not verified.
    pub fn keys(&self) -> Result<Vec<u64>, DiskError> {
        let mut keys = Vec::new();
        self.for_each_entry(|name, _| {
            if let Some(key) = parse_block_name(name) {
                keys.push(key);
            }
        })?;
        keys.sort_unstable();
        Ok(keys)
    }

    /// Total size of the block files (not the lock or temp files), in bytes.
    pub fn bytes_on_disk(&self) -> Result<u64, DiskError> {
        let mut total = 0;
        self.for_each_entry(|name, entry| {
            if parse_block_name(name).is_some() {
                // A file removed between listing and stat counts as zero.
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        })?;
        Ok(total)
    }

    fn remove_temp_files(&self) -> Result<(), DiskError> {
        let mut temps = Vec::new();
        self.for_each_entry(|name, entry| {
            if name.starts_with(TEMP_PREFIX) {
                temps.push(entry.path());
            }
        })?;
        // Best effort: a temp name is never read as a block, so one that cannot be
        // removed (a directory with contents put there by hand) costs space, not a run.
        for temp in &temps {
            let _ = fsx::remove_squatter(temp);
        }
        if !temps.is_empty() {
            let _ = sync_dir(&self.dir);
        }
        Ok(())
    }

    pub(crate) fn for_each_entry(
        &self,
        mut f: impl FnMut(&str, &fs::DirEntry),
    ) -> Result<(), DiskError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| DiskError::io("list", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DiskError::io("list", &self.dir, e))?;
            if let Some(name) = entry.file_name().to_str() {
                f(name, &entry);
            }
        }
        Ok(())
    }
}

impl Drop for BlockStore {
    fn drop(&mut self) {
        // Best effort: the usage file only orders evictions.
        let _ = self.save_usage();
    }
}

enum ReadFailure {
    Corrupt(Corruption),
    Io(&'static str, io::Error),
    CodecNotBuilt(Compression),
}

impl From<Corruption> for ReadFailure {
    fn from(c: Corruption) -> Self {
        Self::Corrupt(c)
    }
}

/// `<16 lowercase hex digits>.kvb` → key.
pub(crate) fn parse_block_name(name: &str) -> Option<u64> {
    parse_hex16(name.strip_suffix(BLOCK_EXT)?)
}

/// Exactly 16 lowercase hex digits → their value (block names, directory names).
pub(crate) fn parse_hex16(hex: &str) -> Option<u64> {
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if hex.len() != 16 || !hex.bytes().all(lower_hex) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Writes `parts` in order and fsyncs, honouring the temp-file faults.
fn write_synced(
    file: &mut File,
    path: &Path,
    parts: [&[u8]; 2],
    fault: Option<Fault>,
) -> Result<(), DiskError> {
    let io_err = |e| DiskError::io("write", path, e);
    if let Some(Fault::AfterTempBytes(limit)) = fault {
        let mut left = limit;
        for part in parts {
            let n = part.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            file.write_all(&part[..n]).map_err(io_err)?;
            left -= n as u64;
        }
        return Err(DiskError::InjectedFault(Fault::AfterTempBytes(limit)));
    }
    for part in parts {
        file.write_all(part).map_err(io_err)?;
    }
    if fault == Some(Fault::BeforeTempSync) {
        return Err(DiskError::InjectedFault(Fault::BeforeTempSync));
    }
    file.sync_all().map_err(|e| DiskError::io("fsync", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DiskError::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::parse_block_name;

    #[test]
    fn only_canonical_block_names_parse() {
        assert_eq!(parse_block_name("000000000000002a.kvb"), Some(42));
        assert_eq!(parse_block_name("ffffffffffffffff.kvb"), Some(u64::MAX));
        for bad in [
            "000000000000002A.kvb",
            "2a.kvb",
            "000000000000002a.kvb.tmp",
            "tmp-000000000000002a-1-0",
            "+00000000000002a.kvb",
            "LOCK",
        ] {
            assert_eq!(parse_block_name(bad), None, "{bad}");
        }
    }
}
