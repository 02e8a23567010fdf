use std::io;
use std::path::PathBuf;

use crate::{Compression, Corruption, DecodeError, Fault};

/// Everything that can go wrong in this crate.
/// A variant with a cause shows it in its message and does not also return it from
/// `source()`: an error chain printed whole would show the OS's words twice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// A file-system call failed; `op` says which (`"create"`, `"rename"`, …).
    #[error("{op} {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    /// A block file failed a check (or its name holds something other than a regular
    /// file). [`crate::BlockStore::get`] has removed it (unless the handle is read-only),
    /// so the block is recomputed rather than used.
    #[error("corrupt block file {path}: {what}")]
    Corrupt { path: PathBuf, what: Corruption },
    /// Another handle, in this process or another, holds the directory's lock.
    #[error("block directory {path} is in use by another BlockStore")]
    Locked { path: PathBuf },
    /// A write or removal through a handle opened [`crate::Access::ReadOnly`].
    #[error("block directory {path} is shared read-only: another BlockStore writes it")]
    ReadOnly { path: PathBuf },
    /// A payload over [`crate::MAX_RAW_BYTES`].
    #[error("payload of {len_bytes} bytes exceeds the cap of {cap_bytes}")]
    TooLarge { len_bytes: u64, cap_bytes: u64 },
    /// [`crate::decompress`] was handed bytes that do not decode to `raw_len` bytes.
    #[error("{codec} stream does not decode: {what}")]
    Decode {
        codec: Compression,
        what: DecodeError,
    },
    /// The encoder failed (in practice: zstd could not allocate its context, or zstd is
    /// not built in: the `zstd` feature is off).
    #[error("{codec} encoder failed: {detail}")]
    Codec { codec: Compression, detail: String },
    /// A block file is stored with a codec this build lacks (zstd, written by a build with
    /// the `zstd` feature). The file may well be valid, so unlike
    /// [`Corrupt`](Self::Corrupt) it is left in place; the block is unreadable here all
    /// the same and must be recomputed.
    #[error("block file {path} is stored with {codec}: {}", crate::codec::NO_ZSTD)]
    CodecNotBuilt { path: PathBuf, codec: Compression },
    /// A `put` stopped on purpose by [`crate::BlockStore::put_with_fault`], leaving the
    /// directory as a crash at that point would.
    #[doc(hidden)]
    #[error("put stopped by injected fault {0:?}")]
    InjectedFault(Fault),
}

impl DiskError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            cause: source,
        }
    }
}
