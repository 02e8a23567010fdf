//! Weight block formats, read in place from GGUF bytes, and 8-bit activation blocks.
//!
//! Weight blocks keep ggml's byte layout so that mapped GGUF tensors are used without a
//! copy. All multi-byte fields are little-endian and may be unaligned.
//!
//! ```text
//! Q4_0  (18 B / 32 values)  | d: f16 | qs: 16 B |        value[i] = (q[i] - 8) · d
//! Q4_1  (20 B / 32 values)  | d: f16 | m: f16 | qs: 16 B | value[i] = q[i] · d + m
//! Q8_0  (34 B / 32 values)  | d: f16 | qs: 32 × i8 |     value[i] = q[i] · d
//!   4-bit nibbles: byte j holds q[j] in its low nibble and q[j + 16] in its high nibble.
//! ```
//!
//! Activations are quantized per token into [`BlockQ8`]: 32 values, an f32 scale and
//! the scaled sum, so that `Q4_1`'s offset term and `Q4_0`'s `-8` fold into one multiply.

use half::f16;

/// Values per quantization block.
pub const QK: usize = 32;

/// A weight element type the kernels compute with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl WType {
    /// Elements per block (1 for float types).
    pub fn block_elems(self) -> usize {
        match self {
            WType::F32 | WType::F16 => 1,
            WType::Q4_0 | WType::Q4_1 | WType::Q8_0 => QK,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WType::F32 => 4,
            WType::F16 => 2,
            WType::Q4_0 => 18,
            WType::Q4_1 => 20,
            WType::Q8_0 => 34,
        }
    }

    /// Bytes of one row of `cols` elements, or `None` if `cols` is not a whole number of
    /// blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_elems()) {
            return None;
        }
        (cols / self.block_elems()).checked_mul(self.block_bytes())
    }

    /// Whether the matrix product quantizes activations to [`BlockQ8`] for this type.
    pub fn uses_q8_activations(self) -> bool {
        matches!(self, WType::Q4_0 | WType::Q4_1 | WType::Q8_0)
    }
}

/// One block of 32 activations quantized to 8 bits.
///
/// `d` is the scale (`max|x| / 127`) and `s = d · Σ qs`, the block's dequantized sum, which
/// lets offset formats add their constant term with one multiply per block.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(8))]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

/// Quantizes `x` (a multiple of 32 values) into `out` (`x.len() / 32` blocks).
///
/// # Panics
/// If the lengths do not match; callers size both from the same model dimension.
pub fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    quantize_row_q8_with(crate::Isa::detect(), x, out);
}

/// [`quantize_row_q8`] on a chosen instruction set. For finite input every instruction
/// set gives the same bits (tests compare them).
///
/// # Panics
/// As [`quantize_row_q8`].
pub fn quantize_row_q8_with(isa: crate::Isa, x: &[f32], out: &mut [BlockQ8]) {
    assert_eq!(x.len(), out.len() * QK, "quantize_row_q8: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if isa == crate::Isa::Avx2 {
        // SAFETY: Isa::Avx2 is only reported when AVX2 is present; lengths asserted.
        unsafe { crate::simd::avx2::quantize_row_q8(x, out) };
        return;
    }
    let _ = isa;
    for (chunk, blk) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in blk.qs.iter_mut().zip(chunk) {
            // |v · id| ≤ 127 by construction; round half away from zero as ggml does
            // (written out: `f32::round` is a libm call on baseline x86-64).
            let x = v * id;
            let r = (x + 0.5f32.copysign(x)) as i32;
            *q = r as i8;
            sum += r;
        }
        blk.d = d;
        blk.s = d * sum as f32;
    }
}

/// Reads a little-endian f16 at `bytes[off..off + 2]` as f32.
#[inline]
pub fn read_f16(bytes: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[off], bytes[off + 1]])).to_f32()
}

/// Dequantizes one row of `cols` elements stored as `wtype` into `out`.
///
/// # Panics
/// If `row` is shorter than the row's byte size or `out.len() != cols`.
pub fn dequantize_row(wtype: WType, row: &[u8], out: &mut [f32]) {
    let cols = out.len();
    match wtype {
        WType::F32 => {
            for (o, c) in out.iter_mut().zip(row[..cols * 4].chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        WType::F16 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = read_f16(row, 2 * i);
            }
        }
        WType::Q4_0 | WType::Q4_1 => {
            let bb = wtype.block_bytes();
            for (b, o) in out.chunks_exact_mut(QK).enumerate() {
                let blk = &row[b * bb..(b + 1) * bb];
                let d = read_f16(blk, 0);
                let (m, qs) = if wtype == WType::Q4_1 {
                    (read_f16(blk, 2), &blk[4..20])
                } else {
                    (-8.0 * d, &blk[2..18])
                };
                for j in 0..16 {
                    o[j] = f32::from(qs[j] & 0x0F) * d + m;
                    o[j + 16] = f32::from(qs[j] >> 4) * d + m;
                }
            }
        }
        WType::Q8_0 => {
            for (b, o) in out.chunks_exact_mut(QK).enumerate() {
                let blk = &row[b * 34..(b + 1) * 34];
                let d = read_f16(blk, 0);
                for j in 0..QK {
                    o[j] = f32::from(blk[2 + j] as i8) * d;
                }
            }
        }
    }
}

/// Reference quantizers, used by tests and by tools that write small models.
pub mod reference {
    use super::{QK, f16};

    /// Quantizes `x` to Q8_0 bytes.
    pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(x.len() / QK * 34);
        for c in x.chunks_exact(QK) {
            let amax = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
            out.extend(c.iter().map(|v| ((v * id).round() as i8) as u8));
        }
        out
    }

    /// Quantizes `x` to Q4_0 bytes.
    pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(x.len() / QK * 18);
        for c in x.chunks_exact(QK) {
            let max = c
                .iter()
                .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
            let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
            out.extend((0..16).map(|j| q(c[j]) | (q(c[j + 16]) << 4)));
        }
        out
    }

    /// Quantizes `x` to Q4_1 bytes.
    pub fn quantize_q4_1(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(x.len() / QK * 20);
        for c in x.chunks_exact(QK) {
            let min = c.iter().copied().fold(f32::INFINITY, f32::min);
            let max = c.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
            out.extend_from_slice(&f16::from_f32(min).to_bits().to_le_bytes());
            let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
            out.extend((0..16).map(|j| q(c[j]) | (q(c[j + 16]) << 4)));
        }
        out
    }

    /// Converts `x` to F16 bytes.
    pub fn to_f16_bytes(x: &[f32]) -> Vec<u8> {
        x.iter()
            .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
            .collect()
    }

    /// Converts `x` to F32 bytes.
    pub fn to_f32_bytes(x: &[f32]) -> Vec<u8> {
        x.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_activations_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
        let mut q = vec![BlockQ8::default(); 2];
        quantize_row_q8(&x, &mut q);
        for (b, blk) in q.iter().enumerate() {
            let sum: i32 = blk.qs.iter().map(|&v| i32::from(v)).sum();
            assert!((blk.s - blk.d * sum as f32).abs() < 1e-4);
            for j in 0..QK {
                let v = f32::from(blk.qs[j]) * blk.d;
                assert!((v - x[b * QK + j]).abs() <= blk.d * 0.5 + 1e-6);
            }
        }
    }

    #[test]
    fn weight_formats_dequantize_within_their_step() {
        let x: Vec<f32> = (0..96)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        for (t, bytes, tol) in [
            (WType::Q8_0, reference::quantize_q8_0(&x), 1.0 / 127.0),
            (WType::Q4_0, reference::quantize_q4_0(&x), 1.0 / 7.0),
            (WType::Q4_1, reference::quantize_q4_1(&x), 2.0 / 15.0),
            (WType::F16, reference::to_f16_bytes(&x), 1e-3),
            (WType::F32, reference::to_f32_bytes(&x), 0.0),
        ] {
            assert_eq!(bytes.len(), t.row_bytes(96).unwrap());
            let mut out = vec![0.0; 96];
            dequantize_row(t, &bytes, &mut out);
            for (a, b) in out.iter().zip(&x) {
                assert!((a - b).abs() <= tol + 1e-6, "{t:?}: {a} vs {b}");
            }
        }
    }
}
