//! [`BlockStore`]: one file per block under `root/<model digest>/`.
//!
//! ```text
//! root/
//!   00c0ffee12345678/            model digest, 16 lowercase hex digits
//!     LOCK                       flock'd by the one open BlockStore
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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::xxh3_64;

use crate::codec::decompress_raw;
use crate::format::{HEADER_LEN, Header};
use crate::{Compression, Corruption, DiskError, MAX_RAW_BYTES, compress};

const BLOCK_EXT: &str = ".kvb";
const TEMP_PREFIX: &str = "tmp-";
const LOCK_NAME: &str = "LOCK";

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

/// Checksummed, crash-safe block files for one model.
///
/// Blocks are opaque byte payloads keyed by a `u64` (the kvcache block hash). Files
/// written with any codec are readable whatever `compression` this handle writes with.
///
/// # Invariants
/// - While the handle lives it holds an exclusive lock on `dir/LOCK`: no other
///   `BlockStore` (in any process) writes or cleans this directory.
/// - Every file named `<16 hex>.kvb` in `dir` was complete and fsynced before it got that
///   name; any file that nonetheless fails a check is deleted by [`get`](Self::get).
/// - Names starting with `tmp-` are puts in flight; after [`open`](Self::open) returns
///   there are none left from earlier handles.
#[derive(Debug)]
pub struct BlockStore {
    dir: PathBuf,
    model_digest: u64,
    compression: Compression,
    /// Makes temp names unique among concurrent puts of this handle.
    temp_seq: AtomicU64,
    /// Held for the lock; never read or written.
    _lock: File,
}

impl BlockStore {
    /// Opens (creating if needed) the directory `root/<model digest as 16 hex digits>/`,
    /// takes its lock and removes temp files left by a crashed writer.
    ///
    /// Fails with [`DiskError::Locked`] while another `BlockStore` has it open.
    pub fn open(
        root: &Path,
        model_digest: u64,
        compression: Compression,
    ) -> Result<Self, DiskError> {
        let dir = root.join(format!("{model_digest:016x}"));
        fs::create_dir_all(&dir).map_err(|e| DiskError::io("create directory", &dir, e))?;
        // Make the new directory's own name durable; best effort, a lost directory is
        // only a cold cache.
        let _ = sync_dir(root);
        let lock_path = dir.join(LOCK_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| DiskError::io("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(DiskError::Locked { path: dir }),
            Err(fs::TryLockError::Error(e)) => return Err(DiskError::io("lock", &lock_path, e)),
        }
        let store = Self {
            dir,
            model_digest,
            compression,
            temp_seq: AtomicU64::new(0),
            _lock: lock,
        };
        store.remove_temp_files()?;
        Ok(store)
    }

    /// The directory holding this model's blocks.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Stores `payload` under `key`, replacing any previous block, atomically and durably
    /// (see the module doc). Returns the file's size in bytes.
    ///
    /// Fails with [`DiskError::TooLarge`] for a payload over [`MAX_RAW_BYTES`], with
    /// [`DiskError::Codec`] if the store's codec is zstd and the `zstd` feature is off,
    /// and with [`DiskError::Io`] when the file system does. After any error the key holds either
    /// the previous block (or none) or, if only the final directory fsync failed, the
    /// whole new block, which a power loss may roll back.
    pub fn put(&self, key: u64, payload: &[u8]) -> Result<u64, DiskError> {
        self.put_inner(key, payload, None)
    }

    /// [`put`](Self::put) that stops at `fault` with [`DiskError::InjectedFault`], leaving
    /// behind what a crash there would (the temp file is not cleaned up).
    #[doc(hidden)]
    pub fn put_with_fault(&self, key: u64, payload: &[u8], fault: Fault) -> Result<u64, DiskError> {
        self.put_inner(key, payload, Some(fault))
    }

    fn put_inner(&self, key: u64, payload: &[u8], fault: Option<Fault>) -> Result<u64, DiskError> {
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

        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}{key:016x}-{}-{seq}",
            std::process::id()
        ));
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
        if let Err(e) = fs::rename(&temp, &path) {
            let _ = fs::remove_file(&temp);
            return Err(DiskError::io("rename", &temp, e));
        }
        if fault == Some(Fault::BeforeDirSync) {
            return Err(DiskError::InjectedFault(Fault::BeforeDirSync));
        }
        sync_dir(&self.dir)?;
        Ok(file_bytes)
    }

    /// The block stored under `key`: `Ok(None)` if there is none, the exact bytes given
    /// to `put` otherwise.
    ///
    /// A file that fails any check gives [`DiskError::Corrupt`] naming the file and the
    /// check, and is deleted (best effort) so the caller recomputes the block. A sound
    /// file stored with zstd, read by a build without the `zstd` feature, gives
    /// [`DiskError::CodecNotBuilt`] and is kept (a build with zstd can still read it).
    pub fn get(&self, key: u64) -> Result<Option<Vec<u8>>, DiskError> {
        let path = self.block_path(key);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DiskError::io("open", &path, e)),
        };
        match self.read_block(&mut file, key) {
            Ok(raw) => Ok(Some(raw)),
            Err(ReadFailure::Io(op, e)) => Err(DiskError::io(op, &path, e)),
            Err(ReadFailure::CodecNotBuilt(codec)) => Err(DiskError::CodecNotBuilt { path, codec }),
            Err(ReadFailure::Corrupt(what)) => {
                drop(file);
                // If a concurrent put renamed a fresh file here meanwhile, this deletes a
                // good block: harmless for a cache, it is recomputed.
                let _ = fs::remove_file(&path);
                Err(DiskError::Corrupt { path, what })
            }
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
        self.block_path(key).is_file()
    }

    /// Deletes `key`'s block; absent is fine. The directory is not fsynced: a removal lost
    /// to a crash brings back a valid old block, which is harmless.
    pub fn remove(&self, key: u64) -> Result<(), DiskError> {
        let path = self.block_path(key);
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
        for temp in &temps {
            fs::remove_file(temp).map_err(|e| DiskError::io("remove temp file", temp, e))?;
        }
        if !temps.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn for_each_entry(&self, mut f: impl FnMut(&str, &fs::DirEntry)) -> Result<(), DiskError> {
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
fn parse_block_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(BLOCK_EXT)?;
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
