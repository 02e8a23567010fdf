//! Model weights for llmem: a GGUF file mapped read-only into memory, its tensors used in
//! place, and control over which of its pages are resident.
//!
//! Weights are never copied into heap buffers: the kernels read quantized blocks straight
//! from the mapping, so the resident weight pages are file-backed (the kernel can drop and
//! re-read them under pressure instead of swapping) and a second process mapping the same
//! file shares them.
//!
//! [`MappedFile::content_digest`] hashes every byte of the file (cached per file version)
//! for keys of data derived from the whole model.
//!
//! ```no_run
//! let file = weights::MappedFile::open("model.gguf".as_ref()).unwrap();
//! let bytes: &[u8] = file.bytes();
//! println!("{} bytes mapped, {} resident", bytes.len(), file.resident_bytes(0..bytes.len()));
//! ```

mod digest;

pub use digest::DigestCache;

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Why a model file could not be mapped.
/// A variant with a cause shows it in its message and does not also return it from
/// `source()`: an error chain printed whole would show the OS's words twice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    #[error("cannot open {path}: {cause}")]
    Open {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot map {path}: {cause}")]
    Map {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How the kernel should treat a range of the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// Read ahead now (`MADV_WILLNEED`): the range is about to be used.
    WillNeed,
    /// The range can be dropped from memory (`MADV_DONTNEED`); it is re-read from the file
    /// on the next access.
    DontNeed,
    /// Accesses will be random: no read-ahead.
    Random,
}

/// A read-only memory mapping of a whole model file.
pub struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
    /// The handle that was mapped: the file's bytes are read back through it
    /// ([`MappedFile::content_digest`]), whatever the path names by then.
    file: File,
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<Self, MapError> {
        let file = File::open(path).map_err(|source| MapError::Open {
            path: path.into(),
            cause: source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| MapError::Open {
                path: path.into(),
                cause: source,
            })?
            .len();
        if len == 0 {
            return Err(MapError::Empty { path: path.into() });
        }
        // SAFETY: the mapping is read-only and private, so llmem never writes through it.
        // If another process truncates or rewrites the file while it is mapped, reads of
        // pages past the new end fault with SIGBUS and changed pages show new bytes: the
        // GGUF header is validated once at load, so a file modified underneath llmem can
        // yield wrong numbers or a crash, never memory unsafety beyond that fault. Model
        // files are treated as immutable while in use (as llama.cpp does); replace them by
        // rename, not in place.
        // SAFETY: (see above) read-only private mapping of a file treated as immutable.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| MapError::Map {
            path: path.into(),
            cause: source,
        })?;
        Ok(MappedFile {
            path: path.into(),
            map,
            file,
        })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Advises the kernel about `range` (rounded out to whole pages). Advice is a hint:
    /// errors are ignored because correctness never depends on it.
    pub fn advise(&self, range: Range<usize>, advice: Advice) {
        let (start, len) = self.page_span(range);
        if len == 0 {
            return;
        }
        let adv = match advice {
            Advice::WillNeed => memmap2::Advice::WillNeed,
            Advice::Random => memmap2::Advice::Random,
            Advice::DontNeed => {
                // SAFETY: DONTNEED on a private read-only file mapping only drops clean
                // pages; the next access re-reads them from the file, so no data is lost
                // and no reference into the mapping becomes invalid.
                let _ = unsafe {
                    self.map
                        .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
                };
                return;
            }
        };
        let _ = self.map.advise_range(adv, start, len);
    }

    /// Bytes of `range` currently resident in memory (by `mincore`).
    pub fn resident_bytes(&self, range: Range<usize>) -> u64 {
        let (start, len) = self.page_span(range);
        if len == 0 {
            return 0;
        }
        let page = page_size();
        let pages = len.div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range lies inside our live mapping and `vec` has one byte per page.
        let rc = unsafe {
            libc::mincore(
                self.map.as_ptr().add(start) as *mut libc::c_void,
                len,
                vec.as_mut_ptr().cast(),
            )
        };
        if rc != 0 {
            return 0;
        }
        vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page as u64
    }

    /// Reads one byte of every page of `range`, making it resident now.
    pub fn touch(&self, range: Range<usize>) -> u64 {
        let (start, len) = self.page_span(range);
        let page = page_size();
        let mut sum = 0u64;
        let mut off = start;
        while off < start + len {
            sum = sum.wrapping_add(u64::from(self.map[off]));
            off += page;
        }
        std::hint::black_box(sum)
    }

    fn page_span(&self, range: Range<usize>) -> (usize, usize) {
        let page = page_size();
        let end = range.end.min(self.map.len());
        let start = range.start.min(end) / page * page;
        (start, end - start)
    }
}

/// The system's page size, read at run time (16 KiB on Apple silicon, 4 KiB on most x86).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_reports_residency_and_refuses_bad_paths() {
        let dir = std::env::temp_dir().join(format!("llmem-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("w.bin");
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&p).unwrap().write_all(&data).unwrap();
        let f = MappedFile::open(&p).unwrap();
        assert_eq!(f.bytes(), &data[..]);
        f.touch(0..data.len());
        assert_eq!(f.resident_bytes(0..data.len()), data.len() as u64);
        f.advise(0..data.len(), Advice::WillNeed);
        assert!(matches!(
            MappedFile::open(&dir.join("missing")),
            Err(MapError::Open { .. })
        ));
        std::fs::File::create(dir.join("empty")).unwrap();
        assert!(matches!(
            MappedFile::open(&dir.join("empty")),
            Err(MapError::Empty { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
