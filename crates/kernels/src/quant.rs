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
//! Q5_0, Q5_1 (22, 24 B / 32 values) and the k-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
//!   (84, 110, 144, 176, 210 B / 256 values): see [`layout`].
//! BF16  (2 B / value)       the top half of an f32
//! ```
//!
//! Activations are quantized per token into [`BlockQ8`]: 32 values, an f32 scale and
//! the scaled sum, so that `Q4_1`'s offset term and `Q4_0`'s `-8` fold into one multiply.
//! The k-quants use the same blocks, eight to a super-block sharing one scale
//! ([`quantize_row_for`], ggml's Q8_K), so that Q4_K, Q5_K and Q6_K sum a whole
//! super-block in integers and take one float step per super-block; the callers keep a
//! single activation format.

use half::f16;

/// Values per quantization block.
pub const QK: usize = 32;

/// Values per k-quant super-block.
pub const QK_K: usize = 256;

/// A weight element type the kernels compute with.
// The k-quants keep ggml's names (`Q4_K`), which is how users and GGUF files spell them.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    BF16,
}

impl WType {
    /// Elements per block (1 for float types).
    pub fn block_elems(self) -> usize {
        match self {
            WType::F32 | WType::F16 | WType::BF16 => 1,
            WType::Q4_0 | WType::Q4_1 | WType::Q8_0 | WType::Q5_0 | WType::Q5_1 => QK,
            WType::Q2_K | WType::Q3_K | WType::Q4_K | WType::Q5_K | WType::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WType::F32 => 4,
            WType::F16 | WType::BF16 => 2,
            WType::Q4_0 => 18,
            WType::Q4_1 => 20,
            WType::Q8_0 => 34,
            WType::Q5_0 => 22,
            WType::Q5_1 => 24,
            WType::Q2_K => 84,
            WType::Q3_K => 110,
            WType::Q4_K => 144,
            WType::Q5_K => 176,
            WType::Q6_K => 210,
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
        !matches!(self, WType::F32 | WType::F16 | WType::BF16)
    }

    /// Whether the product with this type reads its activations as super-blocks: eight
    /// [`BlockQ8`] sharing one scale, as [`quantize_row_for`] writes them for it (Q4_K,
    /// Q5_K and Q6_K, whose products sum a whole super-block in integers).
    pub fn needs_super_block_acts(self) -> bool {
        matches!(self, WType::Q4_K | WType::Q5_K | WType::Q6_K)
    }

    /// Whether this is a k-quant (256-value super-blocks, decoded by [`layout::decode_k`]).
    pub fn is_k_quant(self) -> bool {
        matches!(
            self,
            WType::Q2_K | WType::Q3_K | WType::Q4_K | WType::Q5_K | WType::Q6_K
        )
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

/// 1.5 · 2^23: a float of magnitude below 2^22 plus this has no fraction bits left, so
/// the addition rounds it to an integer (ties to even, the default rounding mode).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// A block's scale from its largest magnitude: `amax / 127`, kept in f32 (rounding it
/// to f16 as ggml stores it took SmolLM2 further from llama.cpp's reference, not nearer).
#[inline]
pub(crate) fn q8_scale(amax: f32) -> f32 {
    amax / 127.0
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
        let d = q8_scale(amax);
        // `127 / amax`, not `1 / d`, and ties to even, as ggml's x86 kernels quantize
        // activations: Gemma 3's normed activations hit exact halves often enough
        // (about one value in a thousand) that the other rounding moves its log-probs.
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        encode_q8(chunk, id, d, blk);
    }
}

/// `blk` = the 32 values of `x` as codes `x · id` (|x · id| ≤ 127) with scale `d`.
#[inline(always)]
fn encode_q8(x: &[f32], id: f32, d: f32, blk: &mut BlockQ8) {
    let mut sum = 0i32;
    for (q, v) in blk.qs.iter_mut().zip(x) {
        // Adding 1.5 · 2^23 rounds to the nearest integer, ties to even (written out:
        // `round_ties_even` is a libm call on baseline x86-64), and leaves it in the low
        // mantissa bits: for |r| ≤ 127 the sum is 1.5 · 2^23 + r exactly, so its bits
        // less the constant's are r, an integer step that vectorizes where a float to
        // integer cast does not. NaN (never in finite input) gives 0.
        let t = v * id + ROUND_MAGIC;
        let r = if t.is_nan() {
            0
        } else {
            (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32)
        };
        *q = r as i8;
        sum += r;
    }
    blk.d = d;
    blk.s = d * sum as f32;
}

/// Quantizes activations `x` for a matrix product with weights of `wtype`, as ggml
/// does on x86: 32-value blocks ([`quantize_row_q8`]) for the 32-value formats, and for
/// the k-quants one scale per 256 values (ggml's Q8_K: an f32 scale `1 / (127 / amax)`,
/// codes `127 / amax · x` ties to even), written as eight [`BlockQ8`] sharing it, which
/// the k-quant kernels read unchanged. Gemma 3's activations have outliers, so the
/// coarser shared scale moves its results visibly; llama.cpp's are the reference.
///
/// # Panics
/// As [`quantize_row_q8`].
pub fn quantize_row_for(wtype: WType, x: &[f32], out: &mut [BlockQ8]) {
    if !wtype.is_k_quant() || !x.len().is_multiple_of(256) {
        return quantize_row_q8(x, out);
    }
    assert_eq!(x.len(), out.len() * QK, "quantize_row_for: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if crate::Isa::detect() == crate::Isa::Avx2 {
        // SAFETY: Isa::Avx2 is only reported when AVX2 and FMA are present.
        unsafe { super_blocks_avx2(x, out) };
        return;
    }
    super_blocks(x, out);
}

/// [`super_blocks`] compiled for AVX2: the same operations (no contraction into FMAs),
/// so the same bits, in vector registers.
///
/// # Safety
/// AVX2 and FMA must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn super_blocks_avx2(x: &[f32], out: &mut [BlockQ8]) {
    super_blocks(x, out);
}

/// The k-quants' activation blocks: one scale per 256 values (see [`quantize_row_for`]).
#[inline(always)]
fn super_blocks(x: &[f32], out: &mut [BlockQ8]) {
    for (chunk, blks) in x.chunks_exact(256).zip(out.chunks_exact_mut(256 / QK)) {
        let amax = abs_max(chunk);
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let d = if amax > 0.0 { 1.0 / id } else { 0.0 };
        for (sub, blk) in chunk.chunks_exact(QK).zip(blks.iter_mut()) {
            encode_q8(sub, id, d, blk);
        }
    }
}

/// The largest `|v|` of `x` (0 for none; NaNs ignored, as `f32::max` does), kept in
/// sixteen running maxima so that it vectorizes; a maximum does not depend on order.
#[inline(always)]
fn abs_max(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(v.abs());
        }
    }
    let rest = chunks
        .remainder()
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    lanes.iter().fold(rest, |m, &v| m.max(v))
}

/// Whether each run of eight blocks of `xq` (from its start) shares one scale, as
/// [`quantize_row_for`] writes the activations of the types that
/// [`WType::needs_super_block_acts`].
pub fn shares_super_block_scales(xq: &[BlockQ8]) -> bool {
    xq.chunks(QK_K / QK)
        .all(|c| c.iter().all(|b| b.d.to_bits() == c[0].d.to_bits()))
}

/// Reads a little-endian f16 at `bytes[off..off + 2]` as f32.
#[inline]
pub fn read_f16(bytes: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[off], bytes[off + 1]])).to_f32()
}

/// Reads a little-endian bf16 at `bytes[off..off + 2]` as f32.
#[inline]
pub fn read_bf16(bytes: &[u8], off: usize) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes([bytes[off], bytes[off + 1]])) << 16)
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
        WType::BF16 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = read_bf16(row, 2 * i);
            }
        }
        WType::Q5_0 | WType::Q5_1 => {
            let bb = wtype.block_bytes();
            for (b, o) in out.chunks_exact_mut(QK).enumerate() {
                let (code, d, m) = layout::decode_q5(wtype, &row[b * bb..(b + 1) * bb]);
                for (o, c) in o.iter_mut().zip(code) {
                    *o = f32::from(c) * d + m;
                }
            }
        }
        WType::Q2_K | WType::Q3_K | WType::Q4_K | WType::Q5_K | WType::Q6_K => {
            let bb = wtype.block_bytes();
            let mut k = layout::KCodes::default();
            for (b, o) in out.chunks_exact_mut(QK_K).enumerate() {
                layout::decode_k(wtype, &row[b * bb..(b + 1) * bb], &mut k);
                for (i, o) in o.iter_mut().enumerate() {
                    *o = k.scale[i / 16] * f32::from(k.code[i]) + k.offset[i / 16];
                }
            }
        }
    }
}

pub mod encode;
pub mod layout;
pub mod reference;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_quant_activations_are_the_scalar_loops_bits() {
        // Ties (halves after scaling), signs, zeros, a NaN, and a row whose maximum sits
        // in the remainder-free last lanes; compared with a plain scalar rendering.
        let mut x: Vec<f32> = (0..1024)
            .map(|i| (((i * 7919) % 255) as f32 - 127.0) / 8.0)
            .collect();
        x[300] = f32::NAN;
        x[1023] = 40.0;
        x[512..768].iter_mut().for_each(|v| *v = 0.0);
        let mut got = vec![BlockQ8::default(); x.len() / QK];
        quantize_row_for(WType::Q4_K, &x, &mut got);
        for (s, (chunk, blks)) in x.chunks(256).zip(got.chunks(8)).enumerate() {
            let amax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            for (j, (v, b)) in chunk.iter().zip(blks.iter().flat_map(|b| b.qs)).enumerate() {
                let want = ((v * id + ROUND_MAGIC) - ROUND_MAGIC) as i32 as i8;
                assert_eq!(b, want, "super-block {s}, value {j}");
            }
            for b in blks {
                assert_eq!(
                    b.d.to_bits(),
                    (if amax > 0.0 { 1.0 / id } else { 0.0 }).to_bits()
                );
            }
        }
    }

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
            (WType::Q5_0, reference::quantize_q5_0(&x), 1.0 / 15.0),
            (WType::Q5_1, reference::quantize_q5_1(&x), 1.0 / 31.0),
            (WType::F16, reference::to_f16_bytes(&x), 1e-3),
            (WType::BF16, reference::to_bf16_bytes(&x), 1.0 / 256.0),
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

    /// Values in [-1, 1) whose groups of 16 differ in range and offset (some all
    /// positive, some all negative, a few near zero), so a scale or offset read from the
    /// wrong place shows, and every code of every format is used.
    fn varied(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let g = i / 16;
                let u = ((i * 7919 + 13) % 101) as f32 / 101.0;
                let span = [1.0, 0.5, 0.02, 0.8, 0.25][g % 5];
                let base = [-1.0, 0.0, -0.5, -0.8, 0.3][(g / 5) % 5];
                (base + span * u).clamp(-1.0, 0.999)
            })
            .collect()
    }

    #[test]
    fn k_quants_dequantize_within_half_a_step_of_their_group() {
        let x = varied(3 * QK_K);
        // Half a code step of each group's range plus the rounding of the 6-bit (Q2_K:
        // 4-bit) scales; the groups span at most 1, so these bound the error.
        for (t, bytes, levels) in [
            (WType::Q2_K, reference::quantize_q2_k(&x), 3.0),
            (WType::Q3_K, reference::quantize_q3_k(&x), 3.0),
            (WType::Q4_K, reference::quantize_q4_k(&x), 15.0),
            (WType::Q5_K, reference::quantize_q5_k(&x), 31.0),
            (WType::Q6_K, reference::quantize_q6_k(&x), 31.0),
        ] {
            assert_eq!(bytes.len(), t.row_bytes(x.len()).unwrap(), "{t:?}");
            let mut out = vec![0.0; x.len()];
            dequantize_row(t, &bytes, &mut out);
            // Q4_K and Q5_K scale sub-blocks of 32, the others groups of 16.
            let n = if matches!(t, WType::Q4_K | WType::Q5_K) {
                32
            } else {
                16
            };
            for (g, (o, v)) in out.chunks(n).zip(x.chunks(n)).enumerate() {
                let mn = v.iter().copied().fold(0.0f32, f32::min);
                let mx = v.iter().copied().fold(0.0f32, f32::max);
                // Symmetric formats cover [-amax, amax]; the others [min(0, mn), mx].
                let span = if matches!(t, WType::Q3_K | WType::Q6_K) {
                    2.0 * mx.max(-mn)
                } else {
                    mx - mn
                };
                let sb = g * n / QK_K;
                let sb_max = x[sb * QK_K..(sb + 1) * QK_K]
                    .iter()
                    .fold(0.0f32, |m, v| m.max(v.abs()));
                let tol = 0.5 * span / levels + 2.5 * sb_max / levels / 15.0 + 1e-4;
                for (a, b) in o.iter().zip(v) {
                    assert!(
                        (a - b).abs() <= tol,
                        "{t:?} group {g}: {a} vs {b} (tol {tol})"
                    );
                }
            }
        }
    }

    #[test]
    fn k_quant_layouts_decode_hand_built_blocks() {
        // Q4_K: d = 1, dmin = 0.5; sub-block s has scale s + 1 and min 2s (s ≥ 4 uses
        // the split 6-bit encoding); value 32s + l has code (s + l) % 16.
        let mut b = vec![0u8; 144];
        b[0..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        let (sc, mn): (Vec<u8>, Vec<u8>) = (0..8u8)
            .map(|s| (s + 1 + 40 * (s / 7), 2 * s + 40 * (s / 6)))
            .unzip();
        for s in 0..8 {
            if s < 4 {
                b[4 + s] = sc[s];
                b[8 + s] = mn[s];
            } else {
                b[12 + s - 4] = (sc[s] & 15) | ((mn[s] & 15) << 4);
                b[4 + s - 4] |= (sc[s] >> 4) << 6;
                b[8 + s - 4] |= (mn[s] >> 4) << 6;
            }
            for l in 0..32 {
                let c = ((s + l) % 16) as u8;
                b[16 + 32 * (s / 2) + l] |= if s % 2 == 0 { c } else { c << 4 };
            }
        }
        let mut out = vec![0.0; 256];
        dequantize_row(WType::Q4_K, &b, &mut out);
        for s in 0..8 {
            for l in 0..32 {
                let want = f32::from(sc[s]) * ((s + l) % 16) as f32 - 0.5 * f32::from(mn[s]);
                assert_eq!(out[32 * s + l], want, "Q4_K value {}", 32 * s + l);
            }
        }
        // Q6_K: d = 0.5; group g has scale g - 8; value i has code (i * 5) % 64 - 32.
        let mut b = vec![0u8; 210];
        for i in 0..256 {
            let (s, l) = (i / 32, i % 32);
            let (n, j) = (s / 4, s % 4);
            let c = ((i * 5) % 64) as u8;
            b[64 * n + 32 * (j % 2) + l] |= (c & 15) << (4 * (j / 2));
            b[128 + 32 * n + l] |= (c >> 4) << (2 * j);
        }
        for g in 0..16 {
            b[192 + g] = (g as i8 - 8) as u8;
        }
        b[208..210].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        dequantize_row(WType::Q6_K, &b, &mut out);
        for i in 0..256 {
            let want = 0.5 * ((i / 16) as f32 - 8.0) * (((i * 5) % 64) as f32 - 32.0);
            assert_eq!(out[i], want, "Q6_K value {i}");
        }
    }
}
