//! Byte codecs for cold KV blocks: none, lz4 (block format) and zstd (one frame).
//!
//! Both directions work on caller-owned buffers so a hot loop can reuse them. Decoding
//! treats its input as hostile: a malformed stream is an error, never a panic, and the
//! output never grows past the `raw_len` the caller expects. zstd keeps one context per
//! thread and direction in a thread-local (decoding about 100 KiB; encoding about 1–2 MiB
//! at levels 1–3 for blocks of a few MiB), since creating one costs as much as
//! compressing a small block.
//!
//! zstd (C code, via the `zstd` crate) is only compiled in with this crate's `zstd`
//! feature, off by default. Without it [`Compression::Zstd`] still exists (the API and
//! the file format do not change with the feature) but every use of it is an error:
//! parsing `"zstd"`, [`compress`], [`decompress`] and reading a zstd block file.

#[cfg(feature = "zstd")]
use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;

use crate::DiskError;

/// Largest raw (uncompressed) block this crate will encode or decode: 256 MiB.
///
/// A cold KV block of an 8B model (16 tokens, 32 layers, 8 KV heads of 128, 4-bit) is
/// about 0.5 MiB; the cap leaves room for much larger spans while keeping a hostile
/// length field from asking for gigabytes.
pub const MAX_RAW_BYTES: usize = 256 << 20;

/// zstd level used when a configuration says just `"zstd"`.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// How block bytes are stored.
///
/// Text form (for configs and CLI flags): `none`, `lz4`, `zstd:LEVEL` (`zstd` alone means
/// level 3). zstd levels outside the library's range are rejected when parsed; a level
/// built directly is clamped by zstd itself. Without the crate's `zstd` feature the zstd
/// forms do not parse and [`Zstd`](Self::Zstd) cannot encode or decode
/// ([`is_available`](Self::is_available) says so).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Stored as is.
    None,
    /// lz4 block format (`lz4_flex`, pure Rust).
    Lz4,
    /// One zstd frame at this level. Needs the crate's `zstd` feature to encode or decode.
    Zstd(i32),
}

/// `None`: measured, 4- and 2-bit KV codes are close to incompressible (zstd:1 saves
/// 2–7 % and decodes at ~1.4 GB/s, slower than an NVMe read; lz4 saves nothing). See
/// `docs/design/kvdisk.md`.
impl Default for Compression {
    fn default() -> Self {
        Self::None
    }
}

impl Compression {
    /// The id written in block file headers.
    pub(crate) fn id(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Lz4 => 1,
            Self::Zstd(_) => 2,
        }
    }

    /// The codec for a header id; the zstd level is not needed to decode, so the one
    /// returned carries the level recorded in the header (informative only).
    pub(crate) fn from_id(id: u8, zstd_level: i32) -> Option<Self> {
        match id {
            0 => Some(Self::None),
            1 => Some(Self::Lz4),
            2 => Some(Self::Zstd(zstd_level)),
            _ => None,
        }
    }

    /// Whether this build can encode and decode with this codec: false only for
    /// [`Zstd`](Self::Zstd) without the crate's `zstd` feature.
    pub const fn is_available(self) -> bool {
        match self {
            Self::None | Self::Lz4 => true,
            Self::Zstd(_) => cfg!(feature = "zstd"),
        }
    }

    /// The largest stored form of `raw_len` bytes that this codec can produce: the cap
    /// on a stored length read from a file. The same with or without the `zstd` feature.
    pub fn max_stored_len(self, raw_len: usize) -> usize {
        match self {
            Self::None => raw_len,
            Self::Lz4 => lz4_flex::block::get_maximum_output_size(raw_len),
            Self::Zstd(_) => zstd_compress_bound(raw_len),
        }
    }
}

/// zstd's `ZSTD_COMPRESSBOUND` (zstd.h), written out so the bound does not depend on the
/// `zstd` feature; a test checks it against the library's.
const fn zstd_compress_bound(raw_len: usize) -> usize {
    const SMALL: usize = 128 << 10;
    let margin = if raw_len < SMALL {
        (SMALL - raw_len) >> 11
    } else {
        0
    };
    raw_len + (raw_len >> 8) + margin
}

/// What every zstd operation says in a build without the `zstd` feature.
pub(crate) const NO_ZSTD: &str = "this build has no zstd support (enable kvdisk's `zstd` feature)";

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Lz4 => f.write_str("lz4"),
            Self::Zstd(level) => write!(f, "zstd:{level}"),
        }
    }
}

/// A compression name that [`Compression::from_str`] does not accept: unknown, or zstd
/// in a build without the `zstd` feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseCompressionError {
    text: String,
    /// The accepted zstd levels; `None` when zstd is not built in.
    zstd_levels: Option<(i32, i32)>,
}

impl fmt::Display for ParseCompressionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = &self.text;
        let trimmed = text.trim();
        match self.zstd_levels {
            Some((min, max)) => write!(
                f,
                "unknown compression {text:?}: expected none, lz4, zstd or zstd:LEVEL ({min}..={max})"
            ),
            None if trimmed == "zstd" || trimmed.starts_with("zstd:") => {
                write!(f, "compression {text:?}: {NO_ZSTD}")
            }
            None => write!(
                f,
                "unknown compression {text:?}: expected none or lz4 (zstd needs kvdisk's `zstd` feature)"
            ),
        }
    }
}

impl std::error::Error for ParseCompressionError {}

impl FromStr for Compression {
    type Err = ParseCompressionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        #[cfg(feature = "zstd")]
        let zstd_levels = Some((
            zstd::zstd_safe::min_c_level(),
            zstd::zstd_safe::max_c_level(),
        ));
        #[cfg(not(feature = "zstd"))]
        let zstd_levels = None;
        let err = || ParseCompressionError {
            text: s.to_owned(),
            zstd_levels,
        };
        let Some((min, max)) = zstd_levels else {
            return match s.trim() {
                "none" => Ok(Self::None),
                "lz4" => Ok(Self::Lz4),
                _ => Err(err()),
            };
        };
        match s.trim() {
            "none" => Ok(Self::None),
            "lz4" => Ok(Self::Lz4),
            "zstd" => Ok(Self::Zstd(DEFAULT_ZSTD_LEVEL)),
            other => {
                let level = other.strip_prefix("zstd:").ok_or_else(err)?;
                let level: i32 = level.parse().map_err(|_| err())?;
                if (min..=max).contains(&level) {
                    Ok(Self::Zstd(level))
                } else {
                    Err(err())
                }
            }
        }
    }
}

/// Why a stored stream did not decode to the expected raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The expected raw length is over [`MAX_RAW_BYTES`].
    #[error("raw length {raw_bytes} bytes exceeds the cap of {cap_bytes}")]
    RawTooLarge { raw_bytes: u64, cap_bytes: u64 },
    /// The stream is longer than the codec can produce for that raw length.
    #[error("stored length {stored_bytes} bytes exceeds the codec's bound of {cap_bytes}")]
    StoredTooLarge { stored_bytes: u64, cap_bytes: u64 },
    /// The stream decoded, but to a different number of bytes.
    #[error("decoded {decoded_bytes} bytes, expected {expected_bytes}")]
    LengthMismatch {
        expected_bytes: u64,
        decoded_bytes: u64,
    },
    /// The lz4 decoder rejected the stream.
    #[error("lz4: {0}")]
    Lz4(String),
    /// The zstd decoder rejected the stream (zstd's error name).
    #[error("zstd: {0}")]
    Zstd(&'static str),
    /// The stream is zstd and this build has no zstd (the `zstd` feature is off).
    #[error("{}", NO_ZSTD)]
    ZstdNotBuilt,
    /// The output buffer could not be allocated.
    #[error("cannot allocate {bytes} bytes for the decoded block")]
    Alloc { bytes: u64 },
}

#[cfg(feature = "zstd")]
thread_local! {
    // Created on first use; see the module doc for why they are kept.
    static ZSTD_C: RefCell<Option<zstd::zstd_safe::CCtx<'static>>> = const { RefCell::new(None) };
    static ZSTD_D: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// Compresses `raw` into `out` (cleared first).
///
/// Errors: `raw` is over [`MAX_RAW_BYTES`] ([`DiskError::TooLarge`]), or zstd could not
/// get memory for its context or is not built in ([`DiskError::Codec`]).
pub fn compress(c: Compression, raw: &[u8], out: &mut Vec<u8>) -> Result<(), DiskError> {
    out.clear();
    if raw.len() > MAX_RAW_BYTES {
        return Err(DiskError::TooLarge {
            len_bytes: raw.len() as u64,
            cap_bytes: MAX_RAW_BYTES as u64,
        });
    }
    match c {
        Compression::None => out.extend_from_slice(raw),
        Compression::Lz4 => {
            out.resize(c.max_stored_len(raw.len()), 0);
            let n = lz4_flex::block::compress_into(raw, out).map_err(|e| DiskError::Codec {
                codec: c,
                detail: e.to_string(),
            })?;
            out.truncate(n);
        }
        #[cfg(not(feature = "zstd"))]
        Compression::Zstd(_) => {
            return Err(DiskError::Codec {
                codec: c,
                detail: NO_ZSTD.into(),
            });
        }
        #[cfg(feature = "zstd")]
        Compression::Zstd(level) => {
            out.reserve(c.max_stored_len(raw.len()));
            ZSTD_C.with_borrow_mut(|cctx| {
                let cctx = match cctx {
                    Some(cctx) => cctx,
                    None => cctx.insert(zstd::zstd_safe::CCtx::try_create().ok_or_else(|| {
                        DiskError::Codec {
                            codec: c,
                            detail: "cannot create context".into(),
                        }
                    })?),
                };
                cctx.compress(out, raw, level)
                    .map_err(|code| DiskError::Codec {
                        codec: c,
                        detail: zstd::zstd_safe::get_error_name(code).into(),
                    })
            })?;
        }
    }
    Ok(())
}

/// Decodes `stored` (written by [`compress`] with the same codec; the zstd level does not
/// matter) into `out`, which ends up exactly `raw_len` bytes long.
///
/// `stored` may be hostile: any malformed input gives [`DiskError::Decode`] and leaves
/// `out` empty, as does zstd in a build without it ([`DecodeError::ZstdNotBuilt`]).
/// `out` is never grown past `raw_len`, which itself is capped at [`MAX_RAW_BYTES`].
pub fn decompress(
    c: Compression,
    stored: &[u8],
    raw_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), DiskError> {
    decompress_raw(c, stored, raw_len, out).map_err(|e| {
        out.clear();
        DiskError::Decode { codec: c, what: e }
    })
}

/// [`decompress`] without the error wrapping; leaves `out` in an unspecified state on error.
pub(crate) fn decompress_raw(
    c: Compression,
    stored: &[u8],
    raw_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    if !c.is_available() {
        return Err(DecodeError::ZstdNotBuilt);
    }
    if raw_len > MAX_RAW_BYTES {
        return Err(DecodeError::RawTooLarge {
            raw_bytes: raw_len as u64,
            cap_bytes: MAX_RAW_BYTES as u64,
        });
    }
    let cap = c.max_stored_len(raw_len);
    if stored.len() > cap {
        return Err(DecodeError::StoredTooLarge {
            stored_bytes: stored.len() as u64,
            cap_bytes: cap as u64,
        });
    }
    // Reuse what `out` already holds instead of zeroing it: both decoders write the output
    // front to back and only read back bytes they wrote, and the length check below makes
    // sure every byte was written.
    out.truncate(raw_len);
    out.try_reserve_exact(raw_len - out.len())
        .map_err(|_| DecodeError::Alloc {
            bytes: raw_len as u64,
        })?;
    out.resize(raw_len, 0);
    let decoded = match c {
        Compression::None => {
            if stored.len() != raw_len {
                return Err(DecodeError::LengthMismatch {
                    expected_bytes: raw_len as u64,
                    decoded_bytes: stored.len() as u64,
                });
            }
            out.copy_from_slice(stored);
            raw_len
        }
        Compression::Lz4 => lz4_flex::block::decompress_into(stored, out)
            .map_err(|e| DecodeError::Lz4(e.to_string()))?,
        #[cfg(not(feature = "zstd"))]
        Compression::Zstd(_) => return Err(DecodeError::ZstdNotBuilt),
        #[cfg(feature = "zstd")]
        Compression::Zstd(_) => ZSTD_D.with_borrow_mut(|dctx| {
            let dctx = match dctx {
                Some(dctx) => dctx,
                None => dctx.insert(
                    zstd::zstd_safe::DCtx::try_create()
                        .ok_or(DecodeError::Zstd("cannot create context"))?,
                ),
            };
            // A slice, not the Vec: zstd may write up to a Vec's capacity, a slice bounds it
            // at raw_len.
            dctx.decompress(out.as_mut_slice(), stored)
                .map_err(|code| DecodeError::Zstd(zstd::zstd_safe::get_error_name(code)))
        })?,
    };
    if decoded != raw_len {
        return Err(DecodeError::LengthMismatch {
            expected_bytes: raw_len as u64,
            decoded_bytes: decoded as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codecs this build can run.
    const AVAILABLE: &[Compression] = &[
        Compression::None,
        Compression::Lz4,
        #[cfg(feature = "zstd")]
        Compression::Zstd(3),
    ];

    #[test]
    fn text_forms_round_trip() {
        for c in [Compression::None, Compression::Lz4] {
            assert_eq!(c.to_string().parse::<Compression>(), Ok(c));
        }
        for bad in ["", "lz5", "ZSTD:3", "zstd:99", "zstd:", "zstd:x"] {
            assert!(bad.parse::<Compression>().is_err(), "{bad:?} parsed");
        }
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_text_forms_round_trip() {
        for c in [Compression::Zstd(1), Compression::Zstd(-5)] {
            assert_eq!(c.to_string().parse::<Compression>(), Ok(c));
        }
        assert_eq!(
            "zstd".parse::<Compression>(),
            Ok(Compression::Zstd(DEFAULT_ZSTD_LEVEL))
        );
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_bound_matches_the_library() {
        let sizes = (0..300_000).step_by(997).chain([
            (128 << 10) - 1,
            128 << 10,
            (128 << 10) + 1,
            MAX_RAW_BYTES,
        ]);
        for n in sizes {
            assert_eq!(
                zstd_compress_bound(n),
                zstd::zstd_safe::compress_bound(n),
                "{n}"
            );
        }
    }

    #[cfg(not(feature = "zstd"))]
    #[test]
    fn zstd_without_the_feature_is_a_clear_error() {
        let c = Compression::Zstd(1);
        assert!(!c.is_available());
        for text in ["zstd", "zstd:1", " zstd:-5"] {
            let e = text.parse::<Compression>().unwrap_err().to_string();
            assert!(
                e.contains("no zstd support") && e.contains("`zstd` feature"),
                "{e}"
            );
        }
        let e = "lz5".parse::<Compression>().unwrap_err().to_string();
        assert!(
            e.contains("unknown compression") && e.contains("none or lz4"),
            "{e}"
        );

        let mut out = vec![1, 2, 3];
        let err = compress(c, b"some bytes", &mut out).unwrap_err();
        assert!(matches!(err, DiskError::Codec { .. }), "{err}");
        assert!(err.to_string().contains("`zstd` feature"), "{err}");
        assert!(out.is_empty());

        let mut out = vec![1, 2, 3];
        let err = decompress(c, &[0x28, 0xb5, 0x2f, 0xfd], 10, &mut out).unwrap_err();
        assert!(
            matches!(
                err,
                DiskError::Decode {
                    what: DecodeError::ZstdNotBuilt,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("`zstd` feature"), "{err}");
        assert!(out.is_empty());
        // The bound still holds a zstd frame's worst case, so headers check the same.
        assert!(c.max_stored_len(1000) > 1000);
    }

    #[test]
    fn decode_reuses_a_dirty_buffer_without_leaking_it() {
        let raw: Vec<u8> = (0..10_000u32).map(|i| (i % 7) as u8).collect();
        for &c in AVAILABLE {
            let mut stored = Vec::new();
            compress(c, &raw, &mut stored).unwrap();
            let mut out = vec![0xAA; 20_000];
            decompress(c, &stored, raw.len(), &mut out).unwrap();
            assert_eq!(out, raw, "{c}");
            // Wrong expected length: error, and the buffer is left empty.
            let mut out = vec![0xAA; 20_000];
            assert!(
                decompress(c, &stored, raw.len() + 1, &mut out).is_err(),
                "{c}"
            );
            assert!(out.is_empty());
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let mut out = Vec::new();
        let err = decompress(Compression::Lz4, &[0; 4], MAX_RAW_BYTES + 1, &mut out);
        assert!(matches!(
            err,
            Err(DiskError::Decode {
                what: DecodeError::RawTooLarge { .. },
                ..
            })
        ));
        assert_eq!(out.capacity(), 0);
        let err = decompress(Compression::None, &[0; 9], 8, &mut out);
        assert!(matches!(
            err,
            Err(DiskError::Decode {
                what: DecodeError::StoredTooLarge { .. },
                ..
            })
        ));
    }
}
