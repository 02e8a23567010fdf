//! Deliberately broken files: truncations, byte flips, patched fields and seeded random
//! mutations, for testing that a parser fails cleanly.

use std::ops::Range;

use crate::SplitMix64;

/// Overwrites the little-endian `u32` at `at`; does nothing past the end.
pub fn patch_u32(bytes: &mut [u8], at: usize, value: u32) {
    patch(bytes, at, &value.to_le_bytes());
}

/// Overwrites the little-endian `u64` at `at`; does nothing past the end.
pub fn patch_u64(bytes: &mut [u8], at: usize, value: u64) {
    patch(bytes, at, &value.to_le_bytes());
}

fn patch(bytes: &mut [u8], at: usize, new: &[u8]) {
    if let Some(dst) = at
        .checked_add(new.len())
        .and_then(|end| bytes.get_mut(at..end))
    {
        dst.copy_from_slice(new);
    }
}

/// Every proper prefix of `bytes`, shortest first: the file cut at each offset.
pub fn truncations(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    (0..bytes.len()).map(move |n| &bytes[..n])
}

/// A copy of `bytes` with the byte at `at` XORed with `mask`.
pub fn flip_byte(bytes: &[u8], at: usize, mask: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if let Some(b) = out.get_mut(at) {
        *b ^= mask;
    }
    out
}

/// Values that hit edge cases when they land on a length, count or id field.
const INTERESTING_U64: [u64; 12] = [
    0,
    1,
    2,
    3,
    4,
    5,
    9,
    u32::MAX as u64,
    1 << 40,
    1 << 60,
    u64::MAX,
    u64::MAX - 7,
];

/// Seeded random mutations of one file; see [`corruptions`].
#[derive(Debug, Clone)]
pub struct Corruptions<'a> {
    base: &'a [u8],
    within: Range<usize>,
    rng: SplitMix64,
    left: usize,
}

/// `count` mutated copies of `bytes`, reproducible from `seed`. Each applies one to four
/// of: flip a random bit, set a random byte, write an interesting `u32`/`u64` (0, 1,
/// `u64::MAX`, 2^60, …) at a random offset, truncate at a random offset.
pub fn corruptions(bytes: &[u8], seed: u64, count: usize) -> Corruptions<'_> {
    corruptions_within(bytes, 0..bytes.len(), seed, count)
}

/// Like [`corruptions`], but every mutation lands in `within` (say, the header, where
/// a random offset in a large file seldom falls).
pub fn corruptions_within(
    bytes: &[u8],
    within: Range<usize>,
    seed: u64,
    count: usize,
) -> Corruptions<'_> {
    Corruptions {
        base: bytes,
        within,
        rng: SplitMix64::new(seed),
        left: count,
    }
}

impl Iterator for Corruptions<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut out = self.base.to_vec();
        let rng = &mut self.rng;
        for _ in 0..=rng.below(4) {
            let end = self.within.end.min(out.len());
            let start = self.within.start.min(end);
            let at = start + rng.below((end - start).max(1) as u64) as usize;
            match rng.below(5) {
                0 => {
                    if let Some(b) = out.get_mut(at) {
                        *b ^= 1 << rng.below(8);
                    }
                }
                1 => {
                    if let Some(b) = out.get_mut(at) {
                        *b = rng.next_u64() as u8;
                    }
                }
                2 => {
                    let v = INTERESTING_U64[rng.below(INTERESTING_U64.len() as u64) as usize];
                    patch_u64(&mut out, at, v);
                }
                3 => {
                    let v = INTERESTING_U64[rng.below(INTERESTING_U64.len() as u64) as usize];
                    patch_u32(&mut out, at, v as u32);
                }
                _ => out.truncate(at),
            }
        }
        Some(out)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_change_what_they_say() {
        let base = [0u8; 16];
        let mut b = base;
        patch_u64(&mut b, 4, u64::MAX);
        assert_eq!(&b[4..12], &[0xff; 8]);
        patch_u32(&mut b, 14, 1); // would run past the end: ignored
        assert_eq!(&b[12..], &[0; 4]);
        assert_eq!(
            truncations(&base).map(<[u8]>::len).collect::<Vec<_>>(),
            (0..16).collect::<Vec<_>>()
        );
        assert_eq!(flip_byte(&base, 3, 0x80)[3], 0x80);
        let a: Vec<_> = corruptions(&base, 9, 50).collect();
        assert_eq!(a, corruptions(&base, 9, 50).collect::<Vec<_>>());
        assert!(a.iter().filter(|c| c[..] != base[..]).count() > 25);
        for c in corruptions_within(&base, 4..8, 1, 50) {
            // Only bytes 4..8 change, unless the mutation truncated or wrote a wide value.
            assert!(c.len() < 4 || c[..4] == base[..4]);
            assert!(c.len() <= 8 || c[16..] == base[16..]);
        }
    }
}
