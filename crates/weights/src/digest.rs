//! A digest of every byte of a model file, for keys of data derived from the whole model
//! (KV blocks kept on disk across runs).
//!
//! The file is read with ordinary buffered reads from the handle that was mapped (the same
//! inode, even if the path has been replaced since): the bytes pass through the page cache,
//! which the kernel can drop, not through this process's resident memory as touching
//! every page of the mapping would (that would make the whole model resident and count it
//! in the budget's RSS). Measured costs are in `docs/design/kvdisk.md`.
//!
//! Computing it costs a read of the whole file, so it is cached: one small file per model
//! file in a cache directory, named by the file's device and inode and holding its size,
//! modification and status-change times (ns) and the digest. Any change to the file
//! changes one of them (a write sets mtime and ctime, and ctime cannot be set back), so a
//! stale entry is never used; a damaged or foreign one is ignored and rewritten.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{MapError, MappedFile};

/// What identifies one version of a file on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    #[cfg(unix)]
    fn of(file: &File) -> io::Result<Option<Self>> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }))
    }

    /// Without inode numbers there is nothing safe to key a cache on.
    #[cfg(not(unix))]
    fn of(_: &File) -> io::Result<Option<Self>> {
        Ok(None)
    }

    fn line(&self, digest: u64) -> String {
        format!(
            "llmem-digest 1 {} {} {} {} {} {digest:016x}\n",
            self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns
        )
    }
}

/// Where [`MappedFile::content_digest`] keeps its results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DigestCache {
    /// `<user cache dir>/llmem/model-digests` (`$XDG_CACHE_HOME` or `~/.cache` on Linux,
    /// `~/Library/Caches` on macOS); no caching if there is none.
    User,
    /// This directory (tests).
    In(PathBuf),
    /// Always read the file.
    Off,
}

impl DigestCache {
    fn dir(&self) -> Option<PathBuf> {
        match self {
            DigestCache::User => dirs::cache_dir().map(|d| d.join("llmem").join("model-digests")),
            DigestCache::In(d) => Some(d.clone()),
            DigestCache::Off => None,
        }
    }
}

/// Bytes per read: large enough that the syscalls cost nothing beside hashing.
const CHUNK_BYTES: usize = 1 << 20;

impl MappedFile {
    /// xxh3-64 of the file's length and every byte of it (see the module doc), from the
    /// cache when this version of the file was hashed before.
    ///
    /// # Errors
    /// [`MapError::Read`] when the file cannot be read. A cache that cannot be read or
    /// written is not an error: the file is hashed instead.
    pub fn content_digest(&self, cache: &DigestCache) -> Result<u64, MapError> {
        let read_err = |source| MapError::Read {
            path: self.path.clone(),
            source,
        };
        let stamp = Stamp::of(&self.file).map_err(read_err)?;
        let entry = stamp
            .zip(cache.dir())
            .map(|(s, d)| (s, d.join(format!("{:x}-{:x}", s.dev, s.ino))));
        if let Some((s, path)) = &entry
            && let Some(d) = cached(path, s)
        {
            return Ok(d);
        }
        let digest = hash_file(&self.file).map_err(read_err)?;
        if let Some((s, path)) = &entry {
            // Best effort: a cache that cannot be written only costs the next run a read.
            let _ = store(path, &s.line(digest));
        }
        Ok(digest)
    }
}

/// The digest in the cache entry at `path` if it is for exactly `stamp`.
fn cached(path: &Path, stamp: &Stamp) -> Option<u64> {
    let mut text = String::new();
    File::open(path)
        .ok()?
        .take(256)
        .read_to_string(&mut text)
        .ok()?;
    let (head, hex) = text.trim_end().rsplit_once(' ')?;
    let digest = u64::from_str_radix(hex, 16).ok()?;
    (format!("{head} {hex}\n") == stamp.line(digest)).then_some(digest)
}

/// Writes `line` to `path` atomically (temp file, then rename).
fn store(path: &Path, line: &str) -> io::Result<()> {
    let dir = path.parent().ok_or(io::ErrorKind::InvalidInput)?;
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    let written = File::create(&temp)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// xxh3-64 of the file's length, then all its bytes, by buffered reads from the start.
fn hash_file(file: &File) -> io::Result<u64> {
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(0))?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&file.metadata()?.len().to_le_bytes());
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(h.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
    }

    /// Issue 13, finding 2: the KV key's model digest covered the header and the first
    /// 4 KiB of each tensor, so a model differing past them shared its blocks. This
    /// digest covers every byte; a changed byte anywhere changes it, cached or not.
    #[test]
    fn finding2_every_byte_of_the_file_is_in_the_digest_and_the_cache_never_goes_stale() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DigestCache::In(dir.path().join("cache"));
        let p = dir.path().join("m.gguf");
        let bytes: Vec<u8> = (0..3 * CHUNK_BYTES + 77).map(|i| (i % 251) as u8).collect();
        write(&p, &bytes);
        let first = MappedFile::open(&p).unwrap();
        let d = first.content_digest(&DigestCache::Off).unwrap();
        assert_eq!(first.content_digest(&cache).unwrap(), d, "computed");
        assert_eq!(first.content_digest(&cache).unwrap(), d, "cached");
        for at in [0, 4095, 4096, CHUNK_BYTES, bytes.len() - 1] {
            let mut changed = bytes.clone();
            changed[at] ^= 1;
            let q = dir.path().join(format!("m{at}.gguf"));
            write(&q, &changed);
            let f = MappedFile::open(&q).unwrap();
            assert_ne!(f.content_digest(&cache).unwrap(), d, "byte {at}");
        }
        // Rewritten in place, same size: the cache entry is stale and not used.
        let mut changed = bytes.clone();
        changed[2 * CHUNK_BYTES] ^= 0x80;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .write_all(&changed)
            .unwrap();
        let again = MappedFile::open(&p).unwrap();
        let d2 = again.content_digest(&cache).unwrap();
        assert_ne!(d2, d);
        assert_eq!(d2, again.content_digest(&DigestCache::Off).unwrap());
        // A damaged cache entry is ignored.
        for e in std::fs::read_dir(dir.path().join("cache")).unwrap() {
            write(
                &e.unwrap().path(),
                b"llmem-digest 1 garbage 0000000000000000\n",
            );
        }
        assert_eq!(again.content_digest(&cache).unwrap(), d2);
    }
}
