//! Tier throughput: the rates the KV eviction score's reload cost (bytes ÷ measured tier
//! bandwidth) and the planner read, saved in the user's cache directory.
//!
//! Each bench fills in its part: `llmem bench memory` the DRAM copy rate and (with
//! `--disk`) the disk rates measured by [`measure_disk`]; `llmem bench kv` the KV codecs'
//! quantize/dequantize and the compressors' rates on real blocks; `llmem bench infer` the
//! model's prefill rate.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::TierError;
use crate::report::Stats;

/// Version of the saved file's shape; files of another version are refused, not guessed.
pub const SCHEMA_VERSION: u32 = 1;
/// File name inside `<user cache dir>/llmem/`.
const FILE_NAME: &str = "tier-throughput.json";

/// A KV quantization codec (hot f16 ↔ a colder format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CodecKind {
    /// Warm tier: int8, keys per-channel groups, values per-token, f16 scales.
    Int8,
    /// Cold tier: 4-bit, KIVI-style.
    Int4,
    /// Cold tier: 2-bit, KIVI-style.
    Int2,
}

/// A byte compressor applied to cold blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CompressorKind {
    /// LZ4 block format.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// Rates of one quantization codec on real KV block shapes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CodecThroughput {
    /// f16 bytes quantized per second, in GB/s (10⁹ B/s), counted on the hot (f16) side.
    pub quantize_gb_s: f64,
    /// f16 bytes produced per second by dequantization, in GB/s, counted on the f16 side.
    pub dequantize_gb_s: f64,
}

/// Rates of one compressor on quantized cold blocks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CompressorThroughput {
    /// Uncompressed bytes compressed per second, GB/s.
    pub compress_gb_s: f64,
    /// Uncompressed bytes produced per second by decompression, GB/s.
    pub decompress_gb_s: f64,
    /// Uncompressed ÷ compressed bytes on the measured blocks.
    pub ratio: f64,
}

/// Sequential file throughput of the disk tier's directory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DiskThroughput {
    /// Writing a whole file and `fsync`ing it, GB/s over the repetitions (the fsync is
    /// inside the timing: a demoted block counts as on disk only once it is durable).
    pub write_fsync_gb_s: Stats,
    /// Reading the file back with its pages dropped from the page cache first, GB/s.
    pub read_gb_s: Stats,
    /// File size measured, bytes.
    pub file_bytes: u64,
    /// Size of each write and read call, bytes.
    pub block_bytes: u64,
    /// Whether the OS accepted dropping (Linux `POSIX_FADV_DONTNEED`) or bypassing (macOS
    /// `F_NOCACHE`) the page cache before reads. When `false`, `read_gb_s` may be a memory
    /// rate, not a disk rate.
    pub cache_dropped: bool,
}

/// Measured tier rates, as saved in `<user cache dir>/llmem/tier-throughput.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierThroughput {
    /// Shape version of this record ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// CPU the rates were measured on; a reader on other hardware should re-measure.
    pub cpu_model: String,
    /// Main-memory copy rate (all threads, STREAM counting), GB/s: the reload rate of a
    /// block that only has to move within RAM.
    pub dram_copy_gb_s: Option<f64>,
    /// Quantize/dequantize rates per codec (empty until `bench kv` ran).
    pub codecs: BTreeMap<CodecKind, CodecThroughput>,
    /// Compress/decompress rates per compressor (empty until `bench kv` ran).
    pub compressors: BTreeMap<CompressorKind, CompressorThroughput>,
    /// Disk tier rates, when measured.
    pub disk: Option<DiskThroughput>,
    /// Prefill tokens per second by model (key: the model's digest, 16 hex digits): the
    /// rate at which a dropped block's prefix is recomputed.
    #[serde(default)]
    pub prefill_tok_s: BTreeMap<String, f64>,
}

impl TierThroughput {
    /// An empty record for `cpu_model`.
    #[must_use]
    pub fn new(cpu_model: impl Into<String>) -> TierThroughput {
        TierThroughput {
            schema_version: SCHEMA_VERSION,
            cpu_model: cpu_model.into(),
            dram_copy_gb_s: None,
            codecs: BTreeMap::new(),
            compressors: BTreeMap::new(),
            disk: None,
            prefill_tok_s: BTreeMap::new(),
        }
    }

    /// `<user cache dir>/llmem/tier-throughput.json`: `$XDG_CACHE_HOME` or `~/.cache` on
    /// Linux, `~/Library/Caches` on macOS.
    ///
    /// # Errors
    /// [`TierError::NoCacheDir`] when the system has no user cache directory.
    pub fn default_path() -> Result<PathBuf, TierError> {
        Ok(llmem_cache_dir()?.join(FILE_NAME))
    }

    /// Saves to [`TierThroughput::default_path`] and returns the path.
    ///
    /// # Errors
    /// As [`TierThroughput::save_to`], or [`TierError::NoCacheDir`].
    pub fn save(&self) -> Result<PathBuf, TierError> {
        let path = TierThroughput::default_path()?;
        self.save_to(&path)?;
        Ok(path)
    }

    /// Saves to `path` atomically (a temporary file beside it, then a rename), creating
    /// the directory if needed.
    ///
    /// # Errors
    /// [`TierError::Io`] when the directory or file cannot be written.
    pub fn save_to(&self, path: &Path) -> Result<(), TierError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        }
        let json = serde_json::to_string_pretty(self).map_err(|source| TierError::Json {
            path: path.to_owned(),
            cause: source,
        })?;
        let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
        std::fs::write(&tmp, json).map_err(io_error("write", &tmp))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error("rename", path)(e)
        })
    }

    /// Loads from [`TierThroughput::default_path`]; `Ok(None)` when nothing was saved yet.
    ///
    /// # Errors
    /// As [`TierThroughput::load_from`], or [`TierError::NoCacheDir`].
    pub fn load() -> Result<Option<TierThroughput>, TierError> {
        TierThroughput::load_from(&TierThroughput::default_path()?)
    }

    /// Loads from `path`; `Ok(None)` when the file does not exist.
    ///
    /// # Errors
    /// [`TierError::Io`] when it cannot be read, [`TierError::Json`] when it is malformed,
    /// [`TierError::Schema`] when it was written in another shape version.
    pub fn load_from(path: &Path) -> Result<Option<TierThroughput>, TierError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TierError::Io {
                    op: "read",
                    path: path.to_owned(),
                    cause: source,
                });
            }
        };
        #[derive(Deserialize)]
        struct Version {
            schema_version: u32,
        }
        let json = |source| TierError::Json {
            path: path.to_owned(),
            cause: source,
        };
        let version: Version = serde_json::from_str(&text).map_err(json)?;
        if version.schema_version != SCHEMA_VERSION {
            return Err(TierError::Schema {
                path: path.to_owned(),
                found: version.schema_version,
                expected: SCHEMA_VERSION,
            });
        }
        serde_json::from_str(&text).map(Some).map_err(json)
    }
}

/// Maps an I/O error on `path` during `op` to [`TierError::Io`].
fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TierError + 'a {
    move |source| TierError::Io {
        op,
        path: path.to_owned(),
        cause: source,
    }
}

fn llmem_cache_dir() -> Result<PathBuf, TierError> {
    dirs::cache_dir()
        .map(|d| d.join("llmem"))
        .ok_or(TierError::NoCacheDir)
}

/// What [`measure_disk`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Directory the test file is written in (the disk tier's directory).
    pub dir: PathBuf,
    /// Bytes written and read per repetition; large enough that the device, not the call
    /// overhead, sets the rate.
    pub file_bytes: u64,
    /// Bytes per write and read call.
    pub block_bytes: u64,
    /// Repetitions (the report gives median, min and max).
    pub reps: usize,
}

impl DiskConfig {
    /// 256 MiB in 1 MiB calls, 5 repetitions, in `<user cache dir>/llmem/`.
    ///
    /// # Errors
    /// [`TierError::NoCacheDir`] when the system has no user cache directory.
    pub fn in_cache_dir() -> Result<DiskConfig, TierError> {
        Ok(DiskConfig::in_dir(llmem_cache_dir()?))
    }

    /// 256 MiB in 1 MiB calls, 5 repetitions, in `dir`.
    #[must_use]
    pub fn in_dir(dir: impl Into<PathBuf>) -> DiskConfig {
        DiskConfig {
            dir: dir.into(),
            file_bytes: 256 << 20,
            block_bytes: 1 << 20,
            reps: 5,
        }
    }
}

/// Removes the test file however the measurement ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Measures sequential write-with-fsync and cold read throughput of `config.dir`.
///
/// # Errors
/// [`TierError::InvalidConfig`] for a zero size, block or repetition count;
/// [`TierError::Io`] when the directory or test file cannot be created, written or read.
pub fn measure_disk(config: &DiskConfig) -> Result<DiskThroughput, TierError> {
    let invalid = |what, value| Err(TierError::InvalidConfig { what, value });
    if config.block_bytes == 0 || config.block_bytes > 1 << 30 {
        return invalid("block_bytes must be 1 B to 1 GiB", config.block_bytes);
    }
    if config.file_bytes < config.block_bytes {
        return invalid("file_bytes must be at least block_bytes", config.file_bytes);
    }
    if config.reps == 0 {
        return invalid("reps must be at least 1", 0);
    }
    std::fs::create_dir_all(&config.dir).map_err(|source| TierError::Io {
        op: "create directory",
        path: config.dir.clone(),
        cause: source,
    })?;
    let file = TempFile(
        config
            .dir
            .join(format!("membench-disk-{}.tmp", std::process::id())),
    );
    let io = |op| io_error(op, &file.0);
    let block = usize::try_from(config.block_bytes).unwrap_or(usize::MAX);
    // Incompressible bytes, so a compressing or deduplicating file system cannot shrink
    // the work.
    let mut data = vec![0u8; block];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for byte in &mut data {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = (state >> 56) as u8;
    }
    let blocks = config.file_bytes / config.block_bytes;
    let bytes = (blocks * config.block_bytes) as f64;
    let (mut writes, mut reads, mut cache_dropped) = (Vec::new(), Vec::new(), true);
    for rep in 0..config.reps {
        let start = Instant::now();
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&file.0)
            .map_err(io("create"))?;
        cache_dropped &= page_cache::bypass(&f);
        for i in 0..blocks {
            // A different first word per block and repetition: no two blocks are equal.
            data[..8.min(block)]
                .copy_from_slice(&(i ^ ((rep as u64) << 48)).to_le_bytes()[..8.min(block)]);
            f.write_all(&data).map_err(io("write"))?;
        }
        f.sync_all().map_err(io("fsync"))?;
        writes.push(bytes / start.elapsed().as_secs_f64().max(1e-9) / 1e9);
        cache_dropped &= page_cache::drop_pages(&f);
        drop(f);

        let mut f = File::open(&file.0).map_err(io("open"))?;
        cache_dropped &= page_cache::bypass(&f) && page_cache::drop_pages(&f);
        let start = Instant::now();
        let mut read = 0u64;
        loop {
            let n = f.read(&mut data).map_err(io("read"))?;
            if n == 0 {
                break;
            }
            read += n as u64;
        }
        reads.push(read as f64 / start.elapsed().as_secs_f64().max(1e-9) / 1e9);
    }
    let stats = |v: &[f64]| {
        Stats::of(v).unwrap_or(Stats {
            median: 0.0,
            min: 0.0,
            max: 0.0,
        })
    };
    Ok(DiskThroughput {
        write_fsync_gb_s: stats(&writes),
        read_gb_s: stats(&reads),
        file_bytes: blocks * config.block_bytes,
        block_bytes: config.block_bytes,
        cache_dropped,
    })
}

#[cfg(target_os = "linux")]
mod page_cache {
    use std::fs::File;
    use std::os::fd::AsRawFd;

    /// Linux has no per-descriptor "do not cache"; pages are dropped after the fsync.
    pub(super) fn bypass(_file: &File) -> bool {
        true
    }

    /// Asks the kernel to drop the file's clean cached pages.
    pub(super) fn drop_pages(file: &File) -> bool {
        // SAFETY: the descriptor is open for the duration of the call; the advice only
        // affects the page cache.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) == 0 }
    }
}

#[cfg(target_os = "macos")]
mod page_cache {
    use std::fs::File;
    use std::os::fd::AsRawFd;

    /// Turns off caching for this descriptor's reads and writes.
    pub(super) fn bypass(file: &File) -> bool {
        // SAFETY: the descriptor is open for the duration of the call.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_NOCACHE, 1) != -1 }
    }

    pub(super) fn drop_pages(_file: &File) -> bool {
        true
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod page_cache {
    use std::fs::File;

    pub(super) fn bypass(_file: &File) -> bool {
        false
    }

    pub(super) fn drop_pages(_file: &File) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("membench-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn saves_and_loads_round_trip() {
        let dir = scratch_dir("roundtrip");
        let path = dir.join("nested").join(FILE_NAME);
        assert!(TierThroughput::load_from(&path).unwrap().is_none());
        let mut t = TierThroughput::new("test cpu");
        t.dram_copy_gb_s = Some(21.5);
        t.codecs.insert(
            CodecKind::Int8,
            CodecThroughput {
                quantize_gb_s: 5.0,
                dequantize_gb_s: 9.0,
            },
        );
        t.compressors.insert(
            CompressorKind::Zstd,
            CompressorThroughput {
                compress_gb_s: 0.5,
                decompress_gb_s: 1.5,
                ratio: 1.3,
            },
        );
        let s = Stats {
            median: 1.0,
            min: 0.5,
            max: 2.0,
        };
        t.disk = Some(DiskThroughput {
            write_fsync_gb_s: s,
            read_gb_s: s,
            file_bytes: 1,
            block_bytes: 1,
            cache_dropped: true,
        });
        t.save_to(&path).unwrap();
        assert_eq!(TierThroughput::load_from(&path).unwrap(), Some(t));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"int8\"") && text.contains("\"zstd\""),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_other_schema_versions_and_garbage() {
        let dir = scratch_dir("schema");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        std::fs::write(&path, r#"{"schema_version": 99}"#).unwrap();
        let err = TierThroughput::load_from(&path).unwrap_err();
        assert!(matches!(
            err,
            TierError::Schema {
                found: 99,
                expected: SCHEMA_VERSION,
                ..
            }
        ));
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(
            TierThroughput::load_from(&path),
            Err(TierError::Json { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disk_measurement_reports_every_rep_and_cleans_up() {
        let dir = scratch_dir("disk");
        let config = DiskConfig {
            dir: dir.clone(),
            file_bytes: 1 << 20,
            block_bytes: 64 << 10,
            reps: 2,
        };
        let d = measure_disk(&config).unwrap();
        assert_eq!(d.file_bytes, 1 << 20);
        assert!(d.write_fsync_gb_s.min > 0.0 && d.read_gb_s.min > 0.0);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "test file left behind"
        );
        let bad = DiskConfig {
            block_bytes: 0,
            ..config
        };
        assert!(matches!(
            measure_disk(&bad),
            Err(TierError::InvalidConfig { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_path_ends_in_the_llmem_cache_dir() {
        if let Ok(path) = TierThroughput::default_path() {
            assert!(path.ends_with("llmem/tier-throughput.json"));
        }
    }
}
