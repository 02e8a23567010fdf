//! The reference implementation: plain Rust, no intrinsics.

use super::{OutPtr, RowsRef};
use crate::quant::layout::{self, KCodes};
use crate::quant::{BlockQ8, QK, QK_K, WType, read_bf16, read_f16};

/// Dot of one quantized weight row with one token's activation blocks.
pub(crate) fn dot_q8_row(wtype: WType, row: &[u8], acts: &[BlockQ8]) -> f32 {
    match wtype {
        WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 | WType::Q8_0 => {
            dot_blocks(wtype, row, acts)
        }
        WType::Q4_K | WType::Q5_K | WType::Q6_K => dot_k_groups(wtype, row, acts),
        WType::Q2_K | WType::Q3_K => dot_k_row(wtype, row, acts),
        WType::F32 | WType::F16 | WType::BF16 => {
            unreachable!("float weights take f32 activations")
        }
    }
}

/// A Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 row against 32-value activation blocks: one exact
/// integer sum per block, then `acc = fma(isum, d · d_a, acc)` and, for the kinds with an
/// offset `m` (`-8d`, `-16d` or the stored minimum), `acc = fma(m, s, acc)`: the steps
/// of the SIMD kernels (`avx2::brows`), so every path gives the same bits.
fn dot_blocks(wtype: WType, row: &[u8], acts: &[BlockQ8]) -> f32 {
    let bb = wtype.block_bytes();
    let mut acc = 0.0f32;
    for (b, a) in acts.iter().enumerate() {
        let blk = &row[b * bb..(b + 1) * bb];
        let (code, d, m) = layout::decode_block32(wtype, blk);
        let mut isum = 0i32;
        for (c, q) in code.iter().zip(&a.qs) {
            isum += c * i32::from(*q);
        }
        acc = block32_step(acc, isum, d, (wtype != WType::Q8_0).then_some(m), a);
    }
    acc
}

/// The float steps of one 32-value block after its exact integer sum `isum`:
/// `fma(isum, d · d_a, acc)`, then `fma(m, s, acc)` for a kind with an offset `m`. Every
/// row loop of these kinds takes them (the AVX-512 panels in vector form), which is why
/// every path gives the same bits.
#[inline(always)]
pub(crate) fn block32_step(acc: f32, isum: i32, d: f32, m: Option<f32>, a: &BlockQ8) -> f32 {
    let acc = (isum as f32).mul_add(d * a.d, acc);
    m.map_or(acc, |m| m.mul_add(a.s, acc))
}

/// The float steps of one Q4_K/Q5_K/Q6_K super-block after its exact integer sums (see
/// [`dot_k_groups`]): `fma(isum, d · da, acc)`, then `fma(imin, -dmin · da, acc)` for the
/// kinds with mins.
#[inline(always)]
pub(crate) fn k_step(acc: f32, isum: i32, imin: Option<i32>, ks: &layout::KScales, da: f32) -> f32 {
    let acc = (isum as f32).mul_add(ks.d * da, acc);
    imin.map_or(acc, |imin| (imin as f32).mul_add(-ks.dmin * da, acc))
}

/// A Q4_K, Q5_K or Q6_K row against super-block activations (eight blocks sharing one
/// scale `da`, see [`crate::quant::quantize_row_for`]), one float step per super-block:
///
/// ```text
/// isum = Σ_g sc[g] · Σ_{i in g} c[i] · a[i]        exact (bounds below)
/// imin = Σ_s min[s] · Σ_{i in s} a[i]              Q4_K/Q5_K only
/// acc  = fma(isum, d · da, acc)
/// acc  = fma(imin, -dmin · da, acc)                Q4_K/Q5_K only
/// ```
///
/// with the integer scales of [`layout::k_scales`]. The sums fit an i32 with room to
/// spare: Q5_K's `|isum| ≤ 8 · 63 · 32 · 31 · 127 < 2^26`, Q6_K's
/// `≤ 16 · 128 · 16 · 32 · 127 < 2^28`, `imin ≤ 8 · 63 · 32 · 127 < 2^21`. The SIMD
/// kernels (`avx2::krows`) form the same integers (in any order, being exact) and take
/// the same float steps, so every path gives the same bits.
fn dot_k_groups(wtype: WType, row: &[u8], acts: &[BlockQ8]) -> f32 {
    let bb = wtype.block_bytes();
    let group = if wtype == WType::Q6_K { 16 } else { 32 };
    let mut k = KCodes::default();
    let mut acc = 0.0f32;
    for (sb, a8) in acts.chunks_exact(QK_K / QK).enumerate() {
        let blk = &row[sb * bb..(sb + 1) * bb];
        layout::decode_k(wtype, blk, &mut k);
        let ks = layout::k_scales(wtype, blk);
        let a = |i: usize| i32::from(a8[i / QK].qs[i % QK]);
        let mut isum = 0i32;
        for g in 0..QK_K / group {
            let dot: i32 = (g * group..(g + 1) * group)
                .map(|i| i32::from(k.code[i]) * a(i))
                .sum();
            isum += i32::from(ks.sc[g]) * dot;
        }
        let imin = (wtype != WType::Q6_K).then(|| {
            (0..QK_K / QK)
                .map(|s| i32::from(ks.min[s]) * (QK * s..QK * (s + 1)).map(a).sum::<i32>())
                .sum()
        });
        acc = k_step(acc, isum, imin, &ks, a8[0].d);
    }
    acc
}

/// The float step of one 16-value Q2_K/Q3_K group after its exact sums (`isum` of codes
/// times activations, `asum` of activations): `sum + d_a · (scale · isum + offset ·
/// asum)`. The NEON row takes it too, hence the same bits.
#[inline(always)]
pub(crate) fn group_step(
    sum: f32,
    d_a: f32,
    (scale, offset): (f32, f32),
    isum: i32,
    asum: i32,
) -> f32 {
    sum + d_a * (scale * isum as f32 + offset * asum as f32)
}

/// A Q2_K or Q3_K row against 32-value activation blocks: each activation block meets two
/// 16-value groups, each with its own scale and offset:
/// `Σ (s c + o) · a_d q = a_d (s Σ c q + o Σ q)`.
fn dot_k_row(wtype: WType, row: &[u8], acts: &[BlockQ8]) -> f32 {
    let bb = wtype.block_bytes();
    let per = QK_K / QK;
    let mut k = KCodes::default();
    let mut sum = 0.0f32;
    for (sb, a8) in acts.chunks_exact(per).enumerate() {
        layout::decode_k(wtype, &row[sb * bb..(sb + 1) * bb], &mut k);
        for (s, a) in a8.iter().enumerate() {
            for h in 0..2 {
                let g = 2 * s + h;
                let (mut isum, mut asum) = (0i32, 0i32);
                for l in 16 * h..16 * h + 16 {
                    let q = i32::from(a.qs[l]);
                    isum += i32::from(k.code[32 * s + l]) * q;
                    asum += q;
                }
                sum = group_step(sum, a.d, (k.scale[g], k.offset[g]), isum, asum);
            }
        }
    }
    sum
}

/// # Safety
/// See [`super::gemm_q8`].
pub(crate) unsafe fn gemm_q8(
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    acts: &[BlockQ8],
    n_tokens: usize,
    out: OutPtr,
) {
    let nb = w.cols / QK;
    debug_assert!(!w.wtype.is_k_quant() || w.cols.is_multiple_of(QK_K));
    for t in 0..n_tokens {
        let a = &acts[t * nb..(t + 1) * nb];
        for r in rows.clone() {
            let row = &w.data[r * w.row_bytes..(r + 1) * w.row_bytes];
            // SAFETY: the caller guarantees (t, r) is ours to write.
            unsafe { *out.ptr.add(t * out.ld + r) = dot_q8_row(w.wtype, row, a) };
        }
    }
}

/// # Safety
/// See [`super::gemm_q8`].
pub(crate) unsafe fn gemm_f32(
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    x: &[f32],
    n_tokens: usize,
    out: OutPtr,
) {
    let k = w.cols;
    for t in 0..n_tokens {
        let xt = &x[t * k..(t + 1) * k];
        for r in rows.clone() {
            let row = &w.data[r * w.row_bytes..(r + 1) * w.row_bytes];
            let mut s = 0.0f32;
            for (i, xv) in xt.iter().enumerate() {
                let wv = match w.wtype {
                    WType::F16 => read_f16(row, 2 * i),
                    WType::BF16 => read_bf16(row, 2 * i),
                    _ => f32::from_le_bytes([
                        row[4 * i],
                        row[4 * i + 1],
                        row[4 * i + 2],
                        row[4 * i + 3],
                    ]),
                };
                s += wv * xv;
            }
            // SAFETY: the caller guarantees (t, r) is ours to write.
            unsafe { *out.ptr.add(t * out.ld + r) = s };
        }
    }
}

pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(crate) fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

pub(crate) fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(*s).to_f32();
    }
}

pub(crate) fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_f32(*s).to_bits();
    }
}

pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

pub(crate) fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    sum
}
