//! Error types, one enum per operation family.

use std::path::PathBuf;

/// Why a memory benchmark run could not be carried out.
/// A variant with a cause shows it in its message and does not also return it from
/// `source()`: an error chain printed whole would show the OS's words twice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The configuration asked for something the benchmark cannot measure.
    #[error("invalid benchmark configuration: {what} (got {value})")]
    InvalidConfig {
        /// Which setting is wrong and what it must be.
        what: &'static str,
        /// The value that was given.
        value: u64,
    },
    /// The operating system refused the memory for a working set.
    #[error("could not allocate {bytes} bytes for a working set: {cause}")]
    Alloc {
        /// Bytes requested, including alignment padding.
        bytes: u64,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// A worker thread could not be started.
    #[error("could not start benchmark worker thread {index}: {cause}")]
    Spawn {
        /// The worker's index in the pool.
        index: usize,
        /// What the OS said.
        cause: std::io::Error,
    },
}

/// Why a size list such as `4KiB,1MiB,1GiB` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseSizeError {
    /// An entry is empty (for example `4K,,8K`).
    #[error("empty size in list")]
    Empty,
    /// An entry's number or unit is not understood.
    #[error(
        "cannot parse size {text:?}: expected a number with an optional unit (K, KiB, M, MiB, G, GiB)"
    )]
    Invalid {
        /// The entry as given.
        text: String,
    },
    /// An entry does not fit in 64 bits.
    #[error("size {text:?} is too large")]
    Overflow {
        /// The entry as given.
        text: String,
    },
}

/// Why tier throughput could not be measured, saved or loaded.
/// Causes are shown in the messages only (see [`BenchError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TierError {
    /// A file operation failed.
    #[error("{op} {path}: {cause}")]
    Io {
        /// What was being done (`create`, `write`, `fsync`, `read`, `rename`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// A saved throughput file is not valid JSON of the expected shape.
    #[error("malformed tier throughput file {path}: {cause}")]
    Json {
        /// The file read.
        path: PathBuf,
        /// What the parser said.
        cause: serde_json::Error,
    },
    /// A saved throughput file was written by an incompatible version.
    #[error("tier throughput file {path} has schema version {found}, expected {expected}")]
    Schema {
        /// The file read.
        path: PathBuf,
        /// Version found in the file.
        found: u32,
        /// Version this code reads.
        expected: u32,
    },
    /// The platform has no user cache directory (no home directory).
    #[error("no user cache directory on this system")]
    NoCacheDir,
    /// The disk measurement was asked to do something impossible.
    #[error("invalid disk measurement configuration: {what} (got {value})")]
    InvalidConfig {
        /// Which setting is wrong and what it must be.
        what: &'static str,
        /// The value that was given.
        value: u64,
    },
}
