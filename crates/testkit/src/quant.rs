//! Reference quantizers for the block formats `tiny_llama` writes, following ggml's
//! `quantize_row_*_ref` and `dequantize_row_*` (ggml-quants.c).
//!
//! ```text
//! Q8_0 block (34 bytes, 32 values)  | d: f16 | q[0..32]: i8 |            x = d·q
//! Q4_0 block (18 bytes, 32 values)  | d: f16 | qs[0..16]: u8 |           x = d·(nibble − 8)
//! Q4_1 block (20 bytes, 32 values)  | d: f16 | m: f16 | qs[0..16]: u8 |  x = d·nibble + m
//!   qs[j] = nibble(x[j]) | nibble(x[j + 16]) << 4   (low nibbles: values 0..16)
//! ```
//! Scales are computed in f32 and stored as f16; values are quantized with the f32
//! scale, as ggml does, so a round trip is not bit-exact against the f16 scale.

use half::f16;

/// ggml type ids of the types this crate writes, for [`crate::GgufWriter::tensor`].
pub mod ggml {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_0: u32 = 2;
    pub const Q4_1: u32 = 3;
    pub const Q8_0: u32 = 8;
    pub const BF16: u32 = 30;
}

/// Values per block of Q8_0, Q4_0 and Q4_1.
pub const BLOCK: usize = 32;

fn blocks(x: &[f32]) -> std::slice::ChunksExact<'_, f32> {
    assert!(
        x.len().is_multiple_of(BLOCK),
        "{} values is not a whole number of 32-value blocks",
        x.len()
    );
    x.chunks_exact(BLOCK)
}

fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

/// Little-endian f32 bytes.
pub fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian f16 bytes (round to nearest even).
pub fn f16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect()
}

/// Q8_0: `d = max|x| / 127`, `q = round(x / d)`.
///
/// # Panics
/// If `x.len()` is not a multiple of 32.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / BLOCK * 34);
    for b in blocks(x) {
        let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = inverse(d);
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// Q4_0: `d = max / −8` where `max` is the value of largest magnitude, nibble
/// `q = min(15, trunc(x / d + 8.5))`.
///
/// # Panics
/// If `x.len()` is not a multiple of 32.
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / BLOCK * 18);
    for b in blocks(x) {
        let max = b
            .iter()
            .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = inverse(d);
        out.extend(f16::from_f32(d).to_le_bytes());
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
    }
    out
}

/// Q4_1: `d = (max − min) / 15`, `m = min`, nibble `q = min(15, trunc((x − min) / d + 0.5))`.
///
/// # Panics
/// If `x.len()` is not a multiple of 32.
pub fn quantize_q4_1(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / BLOCK * 20);
    for b in blocks(x) {
        let min = b.iter().copied().fold(f32::INFINITY, f32::min);
        let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let id = inverse(d);
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend(f16::from_f32(min).to_le_bytes());
        let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
        out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
    }
    out
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Inverse of [`quantize_q8_0`] (whole blocks only; a trailing partial block is ignored).
pub fn dequantize_q8_0(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(34)
        .flat_map(|b| {
            let d = half_at(b, 0);
            b[2..].iter().map(move |&q| f32::from(q as i8) * d)
        })
        .collect()
}

/// Inverse of [`quantize_q4_0`].
pub fn dequantize_q4_0(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / 18 * BLOCK);
    for b in bytes.chunks_exact(18) {
        let d = half_at(b, 0);
        let qs = &b[2..];
        out.extend(qs.iter().map(|q| (f32::from(q & 0x0f) - 8.0) * d));
        out.extend(qs.iter().map(|q| (f32::from(q >> 4) - 8.0) * d));
    }
    out
}

/// Inverse of [`quantize_q4_1`].
pub fn dequantize_q4_1(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / 20 * BLOCK);
    for b in bytes.chunks_exact(20) {
        let (d, m) = (half_at(b, 0), half_at(b, 2));
        let qs = &b[4..];
        out.extend(qs.iter().map(|q| f32::from(q & 0x0f) * d + m));
        out.extend(qs.iter().map(|q| f32::from(q >> 4) * d + m));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SplitMix64;

    fn sample(n: usize) -> Vec<f32> {
        let mut r = SplitMix64::new(3);
        (0..n).map(|_| r.symmetric(2.0)).collect()
    }

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn round_trips_within_half_a_step() {
        let x = sample(256);
        // Step sizes: Q8_0 2/127, Q4_0 2/8, Q4_1 4/15; half a step plus f16 slack, except
        // Q4_0, whose grid −8..=7 clamps the side opposite the extreme value by a step.
        assert!(max_err(&x, &dequantize_q8_0(&quantize_q8_0(&x))) < 0.5 * 2.0 / 127.0 + 0.01);
        assert!(max_err(&x, &dequantize_q4_0(&quantize_q4_0(&x))) < 2.0 / 8.0 + 0.01);
        assert!(max_err(&x, &dequantize_q4_1(&quantize_q4_1(&x))) < 0.5 * 4.0 / 15.0 + 0.01);
        assert_eq!(quantize_q8_0(&x).len(), 8 * 34);
        assert_eq!(quantize_q4_0(&x).len(), 8 * 18);
        assert_eq!(quantize_q4_1(&x).len(), 8 * 20);
    }

    #[test]
    fn q4_0_layout_matches_ggml() {
        // One block: x[j] = j − 16 for j < 32, largest magnitude −16 → d = 2.
        let x: Vec<f32> = (0..32).map(|j| j as f32 - 16.0).collect();
        let b = quantize_q4_0(&x);
        assert_eq!(half_at(&b, 0), 2.0);
        // x[0] = −16 → −8 + 8.5 → 0; x[16] = 0 → 8.5 → 8: byte 0 = 0 | 8 << 4.
        assert_eq!(b[2], 0x80);
        // x[15] = −1 → 8; x[31] = 15 → 16 → clamped to 15.
        assert_eq!(b[17], 8 | (15 << 4));
        let y = dequantize_q4_0(&b);
        assert_eq!((y[0], y[16], y[31]), (-16.0, 0.0, 14.0));
    }

    #[test]
    fn zero_block_is_exact() {
        let x = vec![0.0; 32];
        assert_eq!(dequantize_q8_0(&quantize_q8_0(&x)), x);
        assert_eq!(dequantize_q4_0(&quantize_q4_0(&x)), x);
        assert_eq!(dequantize_q4_1(&quantize_q4_1(&x)), x);
    }
}
