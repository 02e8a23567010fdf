//! Cold KV block bytes at rest: compression (lz4, optionally zstd) and checksummed,
//! crash-safe block files keyed by a model digest.
//!
//! This is the bottom of the KV tier ladder in DESIGN.md ("disk: cold blocks in files,
//! xxh3 checksum per block, keyed by model digest"). It knows nothing of tokens, layers
//! or quantization: a block is an opaque byte payload, already quantized by `kvcache`,
//! and a key (the block's prefix hash).
//!
//! - [`Compression`], [`compress`], [`decompress`]: the codecs, usable on their own for
//!   the in-RAM cold tier. Decoding is safe on hostile input.
//! - [`BlockStore`]: one file per block under `root/<model digest>/`, written atomically
//!   (temp file, fsync, rename, directory fsync) and verified end to end on every read;
//!   one writer per directory, others may share it read-only ([`Access`]). It remembers
//!   each block's reads and chain [`Link`] so a caller can trim the directory to a cap by
//!   its own score ([`BlockStore::entries`]).
//!   The byte layout is in the `format` module's doc; the crash-safety argument in the
//!   `store` module's doc and in `docs/design/kvdisk.md`, with the codec measurements
//!   that chose the default.
//!
//! # Features
//! - `zstd` (off by default): the zstd codec, through the `zstd` crate, which compiles
//!   zstd's C sources. Without it the crate is pure Rust (and cross-compiles without a C
//!   toolchain for the target); [`Compression::Zstd`] stays in the API and the file
//!   format, but parsing, encoding and decoding it are errors, and a zstd block file
//!   reads as [`DiskError::CodecNotBuilt`]. Measured, zstd saves only 2–7 % on quantized
//!   KV blocks and decodes slower than a disk read (`docs/design/kvdisk.md`).
//!
//! ```
//! use kvdisk::{BlockStore, Compression};
//!
//! # fn main() -> Result<(), kvdisk::DiskError> {
//! let root = std::env::temp_dir().join(format!("kvdisk-doc-{}", std::process::id()));
//! let store = BlockStore::open(&root, 0x5eed_d16e_57, Compression::Lz4)?;
//! let block = vec![0x77u8; 64 * 1024];
//! let bytes_on_disk = store.put(42, &block)?;
//! assert!(bytes_on_disk < block.len() as u64);
//! assert_eq!(store.get(42)?, Some(block));
//! assert_eq!(store.get(43)?, None);
//! # drop(store);
//! # std::fs::remove_dir_all(&root).unwrap();
//! # Ok(())
//! # }
//! ```

mod codec;
mod error;
mod format;
mod fsx;
mod store;
mod usage;

pub use codec::{
    Compression, DEFAULT_ZSTD_LEVEL, DecodeError, MAX_RAW_BYTES, ParseCompressionError, compress,
    decompress,
};
pub use error::DiskError;
pub use format::{Corruption, FORMAT_VERSION, HEADER_LEN, MAGIC};
#[doc(hidden)]
pub use store::Fault;
pub use store::{Access, BlockStore};
pub use usage::{Entry, Link};
