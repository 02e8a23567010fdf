//! The block file format: a fixed 72-byte header, then the stored payload.
//!
//! All integers are little-endian.
//!
//! ```text
//! offset  size  field
//! ------  ----  -----------------------------------------------------------------
//!      0     8  magic "LLMKVBLK"
//!      8     2  format version (1)
//!     10     1  compression id: 0 none, 1 lz4 (block format), 2 zstd (one frame; only
//!                 decoded with the `zstd` feature, the header reads the same without)
//!     11     1  reserved, 0
//!     12     4  zstd level (i32) when id is 2, else 0; informative, not needed to decode
//!     16     8  model digest: must equal the store's (its directory name)
//!     24     8  key: must equal the key in the file name
//!     32     8  raw length, bytes           (<= 256 MiB)
//!     40     8  stored length, bytes        (<= the codec's bound for the raw length)
//!     48     8  xxh3-64 of the stored payload (checked before decoding)
//!     56     8  xxh3-64 of the raw bytes      (checked after decoding: catches codec bugs)
//!     64     8  xxh3-64 of header bytes 0..64
//!     72     -  stored payload, exactly `stored length` bytes, then end of file
//! ```
//!
//! The header checksum comes before any length is believed, so a flipped bit in a length
//! cannot send the reader into a huge allocation; the caps hold even for a header forged
//! with a valid checksum.

use xxhash_rust::xxh3::xxh3_64;

use crate::{Compression, DecodeError, MAX_RAW_BYTES};

/// Bytes before the payload.
pub const HEADER_LEN: usize = 72;
/// First eight bytes of every block file.
pub const MAGIC: [u8; 8] = *b"LLMKVBLK";
/// The one format version this build reads and writes.
pub const FORMAT_VERSION: u16 = 1;

/// What was wrong with a block file; carried by [`crate::DiskError::Corrupt`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// Shorter than a header.
    #[error("{file_bytes} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated { file_bytes: u64 },
    #[error("bad magic")]
    BadMagic,
    #[error("format version {found}, this build reads {FORMAT_VERSION}")]
    UnsupportedVersion { found: u16 },
    #[error("header checksum {stored:#018x}, computed {computed:#018x}")]
    HeaderChecksum { stored: u64, computed: u64 },
    #[error("unknown compression id {id}")]
    UnknownCompression { id: u8 },
    #[error("raw length {raw_bytes} bytes exceeds the cap of {cap_bytes}")]
    RawTooLarge { raw_bytes: u64, cap_bytes: u64 },
    #[error("stored length {stored_bytes} bytes exceeds the codec's bound of {cap_bytes}")]
    StoredTooLarge { stored_bytes: u64, cap_bytes: u64 },
    /// Written for another model (a file copied or moved between directories).
    #[error("model digest {found:016x}, expected {expected:016x}")]
    ModelDigest { expected: u64, found: u64 },
    /// Holds another key's block (a file renamed or copied).
    #[error("key {found:016x}, expected {expected:016x}")]
    Key { expected: u64, found: u64 },
    /// Truncated payload or trailing bytes.
    #[error("file is {file_bytes} bytes, header says {expected_bytes}")]
    FileLength {
        expected_bytes: u64,
        file_bytes: u64,
    },
    #[error("payload checksum {stored:#018x}, computed {computed:#018x}")]
    PayloadChecksum { stored: u64, computed: u64 },
    #[error("payload does not decode: {0}")]
    Decode(DecodeError),
    #[error("raw checksum {stored:#018x}, computed {computed:#018x}")]
    RawChecksum { stored: u64, computed: u64 },
    /// The block's name holds a FIFO, a directory, a symlink, a device…
    #[error("{kind}, not a regular file")]
    NotRegularFile { kind: &'static str },
}

/// A decoded, self-consistent header. Fields are only trusted after [`Header::decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub compression: Compression,
    pub model_digest: u64,
    pub key: u64,
    pub raw_len: u64,
    pub stored_len: u64,
    pub stored_xxh3: u64,
    pub raw_xxh3: u64,
}

impl Header {
    /// The header for `stored`, the output of compressing `raw` with `compression`.
    pub fn for_payload(
        compression: Compression,
        model_digest: u64,
        key: u64,
        raw: &[u8],
        stored: &[u8],
    ) -> Self {
        Self {
            compression,
            model_digest,
            key,
            raw_len: raw.len() as u64,
            stored_len: stored.len() as u64,
            stored_xxh3: xxh3_64(stored),
            raw_xxh3: xxh3_64(raw),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10] = self.compression.id();
        let level = match self.compression {
            Compression::Zstd(level) => level,
            _ => 0,
        };
        b[12..16].copy_from_slice(&level.to_le_bytes());
        b[16..24].copy_from_slice(&self.model_digest.to_le_bytes());
        b[24..32].copy_from_slice(&self.key.to_le_bytes());
        b[32..40].copy_from_slice(&self.raw_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.stored_len.to_le_bytes());
        b[48..56].copy_from_slice(&self.stored_xxh3.to_le_bytes());
        b[56..64].copy_from_slice(&self.raw_xxh3.to_le_bytes());
        let sum = xxh3_64(&b[..64]);
        b[64..72].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Parses and checks a header: magic, version, header checksum, codec id and the caps
    /// on both lengths. Digest and key are the caller's to compare.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, Corruption> {
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        if b[0..8] != MAGIC {
            return Err(Corruption::BadMagic);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err(Corruption::UnsupportedVersion { found: version });
        }
        let (stored_sum, computed) = (u64_at(64), xxh3_64(&b[..64]));
        if stored_sum != computed {
            return Err(Corruption::HeaderChecksum {
                stored: stored_sum,
                computed,
            });
        }
        let level = i32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        let compression = Compression::from_id(b[10], level)
            .ok_or(Corruption::UnknownCompression { id: b[10] })?;
        let raw_len = u64_at(32);
        if raw_len > MAX_RAW_BYTES as u64 {
            return Err(Corruption::RawTooLarge {
                raw_bytes: raw_len,
                cap_bytes: MAX_RAW_BYTES as u64,
            });
        }
        let stored_len = u64_at(40);
        // raw_len <= 256 MiB, so it fits a usize on every supported target.
        let cap = compression.max_stored_len(raw_len as usize) as u64;
        if stored_len > cap {
            return Err(Corruption::StoredTooLarge {
                stored_bytes: stored_len,
                cap_bytes: cap,
            });
        }
        Ok(Self {
            compression,
            model_digest: u64_at(16),
            key: u64_at(24),
            raw_len,
            stored_len,
            stored_xxh3: u64_at(48),
            raw_xxh3: u64_at(56),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header::for_payload(Compression::Zstd(7), 0xD1, 42, b"raw bytes", b"stored")
    }

    #[test]
    fn header_round_trips() {
        let h = sample();
        assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn every_single_bit_flip_in_the_header_is_caught() {
        let b = sample().encode();
        for i in 0..HEADER_LEN * 8 {
            let mut c = b;
            c[i / 8] ^= 1 << (i % 8);
            assert!(
                Header::decode(&c).is_err(),
                "bit {i} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn forged_lengths_are_capped_even_with_a_valid_checksum() {
        let mut h = sample();
        h.raw_len = 1 << 40;
        assert!(matches!(
            Header::decode(&h.encode()),
            Err(Corruption::RawTooLarge { .. })
        ));
        let mut h = sample();
        h.stored_len = u64::MAX;
        assert!(matches!(
            Header::decode(&h.encode()),
            Err(Corruption::StoredTooLarge { .. })
        ));
        let mut b = sample().encode();
        b[10] = 9;
        let sum = xxh3_64(&b[..64]);
        b[64..72].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(
            Header::decode(&b),
            Err(Corruption::UnknownCompression { id: 9 })
        );
    }
}
