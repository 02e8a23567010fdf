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
        acc = (isum as f32).mul_add(d * a.d, acc);
        if wtype != WType::Q8_0 {
            acc = m.mul_add(a.s, acc);
        }
    }
    acc
}

/// A Q4_K, Q5_K or Q6_K row against 32-value activation blocks, one exact integer sum per
/// group (32 values for Q4_K/Q5_K, which scale sub-blocks, 16 for Q6_K) and then
/// `acc = fma(isum, scale · d, acc)` and, with offsets, `acc = fma(offset, s, acc)`: the
/// steps of the SIMD kernels (`avx2::krows`), so every path gives the same bits.
fn dot_k_groups(wtype: WType, row: &[u8], acts: &[BlockQ8]) -> f32 {
    let bb = wtype.block_bytes();
    let group = if wtype == WType::Q6_K { 16 } else { 32 };
    let mut k = KCodes::default();
    let mut acc = 0.0f32;
    for (sb, a8) in acts.chunks_exact(QK_K / QK).enumerate() {
        layout::decode_k(wtype, &row[sb * bb..(sb + 1) * bb], &mut k);
        for g in 0..QK_K / group {
            let a = &a8[g * group / QK];
            let off = g * group % QK;
            let mut isum = 0i32;
            for l in 0..group {
                isum += i32::from(k.code[g * group + l]) * i32::from(a.qs[off + l]);
            }
            // decode_k gives the scale and offset per 16 values; a group of 32 has one.
            let h = g * group / 16;
            acc = (isum as f32).mul_add(k.scale[h] * a.d, acc);
            if wtype != WType::Q6_K {
                acc = k.offset[h].mul_add(a.s, acc);
            }
        }
    }
    acc
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
                sum += a.d * (k.scale[g] * isum as f32 + k.offset[g] * asum as f32);
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

pub(crate) fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    sum
}
