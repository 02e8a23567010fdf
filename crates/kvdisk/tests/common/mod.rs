//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;

use kvdisk::Compression;

/// Every codec this build has (zstd only with the `zstd` feature).
#[cfg(feature = "zstd")]
pub const CODECS: [Compression; 4] = [
    Compression::None,
    Compression::Lz4,
    Compression::Zstd(1),
    Compression::Zstd(-3),
];
#[cfg(not(feature = "zstd"))]
pub const CODECS: [Compression; 2] = [Compression::None, Compression::Lz4];

/// The codec that shrinks `payload`s most in this build.
#[cfg(feature = "zstd")]
pub const SHRINKING: Compression = Compression::Zstd(1);
#[cfg(not(feature = "zstd"))]
pub const SHRINKING: Compression = Compression::Lz4;

/// splitmix64: a tiny deterministic generator, so payloads can be rebuilt from a seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A payload that depends on every argument and says which it is: bytes 0..24 hold
/// `key`, `generation` and `len`; the rest alternates 4 KiB of noise with 4 KiB of
/// low-entropy bytes so every codec has something to do. At least 24 bytes long.
pub fn payload(key: u64, generation: u64, len: usize) -> Vec<u8> {
    let len = len.max(24);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    let mut rng = Rng(key.rotate_left(32) ^ generation ^ 0xA5A5);
    while out.len() < len {
        let i = out.len();
        let v = rng.next_u64();
        let byte = if (i / 4096) % 2 == 0 {
            v as u8
        } else {
            (v % 3) as u8 + 7
        };
        out.push(byte);
    }
    out
}

/// Checks `bytes` is exactly what `payload` makes for `key` and the generation and length
/// it records. Returns the generation.
pub fn verify_payload(key: u64, bytes: &[u8]) -> u64 {
    assert!(
        bytes.len() >= 24,
        "key {key}: {} bytes is shorter than the id",
        bytes.len()
    );
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
    assert_eq!(word(0), key, "payload of another key under key {key}");
    assert_eq!(
        word(2),
        bytes.len() as u64,
        "key {key}: length field disagrees"
    );
    let generation = word(1);
    assert!(
        payload(key, generation, bytes.len()) == bytes,
        "key {key}: content of generation {generation} is not what was written"
    );
    generation
}

/// Names in `dir` that are puts in flight.
pub fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tmp-"))
        .collect()
}
