//! aarch64 NEON kernels (the Apple-silicon path).
//!
//! Integer dot products use `vmull_s8`/`vmlal_s8` (baseline NEON) so they need no
//! `dotprod` extension. CI type-checks them for macOS; `scripts/test-neon.sh` runs the
//! kernels' tests on them under QEMU.

use std::arch::aarch64::*;

use super::{OutPtr, RowsRef};
use crate::quant::layout;
use crate::quant::{BlockQ8, QK, QK_K, WType};

/// Σ w[i]·a[i] over 32 weights given as two 16-lane i8 vectors.
#[inline(always)]
unsafe fn dot32(w0: int8x16_t, w1: int8x16_t, a: *const i8) -> i32 {
    // SAFETY: the caller guarantees 32 readable bytes at `a`; every |product| ≤ 128·127,
    // so two of them summed still fit an i16 lane.
    unsafe {
        let a0 = vld1q_s8(a);
        let a1 = vld1q_s8(a.add(16));
        let p0 = vmlal_s8(
            vmull_s8(vget_low_s8(w0), vget_low_s8(a0)),
            vget_high_s8(w0),
            vget_high_s8(a0),
        );
        let p1 = vmlal_s8(
            vmull_s8(vget_low_s8(w1), vget_low_s8(a1)),
            vget_high_s8(w1),
            vget_high_s8(a1),
        );
        vaddvq_s32(vaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)))
    }
}

/// 16 lanes holding 0x10 where bit `lane` of `bits` is set, else 0: the fifth bits of 16
/// Q5 codes.
#[inline(always)]
unsafe fn fifth_bits(bits: u16) -> uint8x16_t {
    const LANE_BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    // SAFETY: LANE_BIT is 16 readable bytes.
    unsafe {
        let bytes = vcombine_u8(vdup_n_u8(bits as u8), vdup_n_u8((bits >> 8) as u8));
        let set = vtstq_u8(bytes, vld1q_u8(LANE_BIT.as_ptr()));
        vandq_u8(set, vdupq_n_u8(0x10))
    }
}

#[inline(always)]
fn f16_at(p: &[u8], off: usize) -> f32 {
    crate::quant::read_f16(p, off)
}

/// A Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 row: the exact integer sum of each block by NEON,
/// then the portable loop's float steps ([`super::portable::block32_step`]), so this path
/// gives the portable bits.
fn dot_row(wtype: WType, row: &[u8], acts: &[BlockQ8]) -> f32 {
    let bb = wtype.block_bytes();
    let mut acc = 0.0f32;
    for (b, a) in acts.iter().enumerate() {
        let blk = &row[b * bb..(b + 1) * bb];
        let d = f16_at(blk, 0);
        let (isum, m) = match wtype {
            WType::Q4_0 | WType::Q4_1 => {
                let qoff = bb - 16;
                // SAFETY: blk holds 16 quant bytes at qoff; a.qs holds 32 bytes.
                let isum = unsafe {
                    let q = vld1q_u8(blk.as_ptr().add(qoff));
                    let lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F)));
                    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q));
                    dot32(lo, hi, a.qs.as_ptr())
                };
                let m = if wtype == WType::Q4_1 {
                    f16_at(blk, 2)
                } else {
                    -8.0 * d
                };
                (isum, Some(m))
            }
            WType::Q5_0 | WType::Q5_1 => {
                // Q5_0: d, qh, qs; Q5_1: d, min, qh, qs. Codes 0..31 (the low nibble and
                // the bit from qh), as `layout::decode_q5` gives them.
                let (m, hoff) = if wtype == WType::Q5_1 {
                    (f16_at(blk, 2), 4)
                } else {
                    (-16.0 * d, 2)
                };
                let qh =
                    u32::from_le_bytes([blk[hoff], blk[hoff + 1], blk[hoff + 2], blk[hoff + 3]]);
                // SAFETY: blk holds 16 quant bytes after qh; a.qs holds 32 bytes.
                let isum = unsafe {
                    let q = vld1q_u8(blk.as_ptr().add(hoff + 4));
                    let lo = vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0F)), fifth_bits(qh as u16));
                    let hi = vorrq_u8(vshrq_n_u8::<4>(q), fifth_bits((qh >> 16) as u16));
                    dot32(
                        vreinterpretq_s8_u8(lo),
                        vreinterpretq_s8_u8(hi),
                        a.qs.as_ptr(),
                    )
                };
                (isum, Some(m))
            }
            WType::Q8_0 => {
                // SAFETY: blk holds 32 quant bytes at offset 2; a.qs holds 32 bytes.
                let isum = unsafe {
                    let p = blk.as_ptr().add(2).cast::<i8>();
                    dot32(vld1q_s8(p), vld1q_s8(p.add(16)), a.qs.as_ptr())
                };
                (isum, None)
            }
            // The other kinds take the portable loop (dispatched in `gemm_q8`).
            _ => unreachable!("{wtype:?} takes the portable loop"),
        };
        acc = super::portable::block32_step(acc, isum, d, m, a);
    }
    acc
}

/// Σ c[i]·a[i] over 16 signed codes and activations (|c| ≤ 32 here: two products fit an
/// i16 lane).
#[inline(always)]
unsafe fn dot16(c: int8x16_t, a: *const i8) -> i32 {
    // SAFETY: the caller guarantees 16 readable bytes at `a`.
    unsafe {
        let a = vld1q_s8(a);
        let p = vmlal_s8(
            vmull_s8(vget_low_s8(c), vget_low_s8(a)),
            vget_high_s8(c),
            vget_high_s8(a),
        );
        vaddvq_s32(vpaddlq_s16(p))
    }
}

/// Σ a[i] over one activation block's 32 values.
#[inline(always)]
fn block_sum(a: &BlockQ8) -> i32 {
    // SAFETY: a.qs holds 32 bytes; 16 values of |a| ≤ 128 sum within an i16.
    unsafe {
        let p = a.qs.as_ptr();
        i32::from(vaddlvq_s8(vld1q_s8(p))) + i32::from(vaddlvq_s8(vld1q_s8(p.add(16))))
    }
}

/// A Q4_K, Q5_K or Q6_K row against super-block activations: the integer sums of the
/// portable loop (`portable::dot_k_groups`: `isum` over the groups with their integer
/// scales, `imin` over the mins) formed with NEON, then its float steps
/// ([`super::portable::k_step`]), so the same bits.
fn dot_k_row(wtype: WType, row: &[u8], acts: &[BlockQ8]) -> f32 {
    let bb = wtype.block_bytes();
    let mut acc = 0.0f32;
    for (sb, a8) in acts.chunks_exact(QK_K / QK).enumerate() {
        let blk = &row[sb * bb..(sb + 1) * bb];
        let ks = layout::k_scales(wtype, blk);
        let mut isum = 0i32;
        match wtype {
            WType::Q4_K | WType::Q5_K => {
                let (qs, qh) = if wtype == WType::Q5_K {
                    (&blk[48..176], Some(&blk[16..48]))
                } else {
                    (&blk[16..144], None)
                };
                for j in 0..4 {
                    let (s0, s1) = (2 * j, 2 * j + 1);
                    // SAFETY: qs holds 32 bytes at 32j, qh 32 bytes; each a.qs 32 bytes.
                    let (dl, dh) = unsafe {
                        let q0 = vld1q_u8(qs.as_ptr().add(32 * j));
                        let q1 = vld1q_u8(qs.as_ptr().add(32 * j + 16));
                        let m = vdupq_n_u8(0x0F);
                        let (mut l0, mut l1) = (vandq_u8(q0, m), vandq_u8(q1, m));
                        let (mut h0, mut h1) = (vshrq_n_u8::<4>(q0), vshrq_n_u8::<4>(q1));
                        if let Some(qh) = qh {
                            // Bit s of qh[l] is the fifth bit of value l of group s.
                            let (b0, b1) = (vld1q_u8(qh.as_ptr()), vld1q_u8(qh.as_ptr().add(16)));
                            let fifth = |b: uint8x16_t, s: usize| {
                                vandq_u8(vtstq_u8(b, vdupq_n_u8(1 << s)), vdupq_n_u8(0x10))
                            };
                            l0 = vorrq_u8(l0, fifth(b0, s0));
                            l1 = vorrq_u8(l1, fifth(b1, s0));
                            h0 = vorrq_u8(h0, fifth(b0, s1));
                            h1 = vorrq_u8(h1, fifth(b1, s1));
                        }
                        let s8 = vreinterpretq_s8_u8;
                        (
                            dot32(s8(l0), s8(l1), a8[s0].qs.as_ptr()),
                            dot32(s8(h0), s8(h1), a8[s1].qs.as_ptr()),
                        )
                    };
                    isum += i32::from(ks.sc[s0]) * dl + i32::from(ks.sc[s1]) * dh;
                }
            }
            WType::Q6_K => {
                let (ql, qh) = (&blk[..128], &blk[128..192]);
                for s in 0..8 {
                    let (n, i) = (s / 4, s % 4);
                    let lo = &ql[64 * n + 32 * (i % 2)..][..32];
                    let hi = &qh[32 * n..][..32];
                    // SAFETY: lo and hi hold 32 bytes each; a8[s].qs 32 bytes.
                    let (d0, d1) = unsafe {
                        let code = |off: usize| {
                            let l = vld1q_u8(lo.as_ptr().add(off));
                            let nib = if i < 2 {
                                vandq_u8(l, vdupq_n_u8(0x0F))
                            } else {
                                vshrq_n_u8::<4>(l)
                            };
                            let h = vld1q_u8(hi.as_ptr().add(off));
                            let high =
                                vandq_u8(vshlq_u8(h, vdupq_n_s8(-2 * i as i8)), vdupq_n_u8(3));
                            let c = vorrq_u8(nib, vshlq_n_u8::<4>(high));
                            vsubq_s8(vreinterpretq_s8_u8(c), vdupq_n_s8(32))
                        };
                        let a = a8[s].qs.as_ptr();
                        (dot16(code(0), a), dot16(code(16), a.add(16)))
                    };
                    isum += i32::from(ks.sc[2 * s]) * d0 + i32::from(ks.sc[2 * s + 1]) * d1;
                }
            }
            _ => unreachable!("{wtype:?} is not a 256-value k-quant with integer scales"),
        }
        let imin = (wtype != WType::Q6_K).then(|| {
            (0..QK_K / QK)
                .map(|s| i32::from(ks.min[s]) * block_sum(&a8[s]))
                .sum()
        });
        acc = super::portable::k_step(acc, isum, imin, &ks, a8[0].d);
    }
    acc
}

/// A Q2_K or Q3_K row against 32-value activation blocks: the portable loop's float
/// step per 16-value group (`a.d · (scale · isum + offset · asum)`, see
/// `portable::dot_k_row`) over its exact integer sums, formed with NEON from codes
/// unpacked in registers (two bits at a shift of 2j; Q3_K less 4 where the high-mask
/// bit is clear), so the same bits.
fn dot_k_low_row(wtype: WType, row: &[u8], acts: &[BlockQ8]) -> f32 {
    let bb = wtype.block_bytes();
    let mut sum = 0.0f32;
    for (sb, a8) in acts.chunks_exact(QK_K / QK).enumerate() {
        let blk = &row[sb * bb..(sb + 1) * bb];
        let (scale, offset) = layout::group_scales(wtype, blk);
        let (qs, hm) = if wtype == WType::Q3_K {
            (&blk[32..96], Some(&blk[..32]))
        } else {
            (&blk[16..80], None)
        };
        for (s, a) in a8.iter().enumerate() {
            let (n, j) = (s / 4, s % 4);
            for h in 0..2 {
                // SAFETY: qs holds 32 bytes at 32n + 16h, hm 32 bytes, a.qs 32 bytes.
                let (isum, asum) = unsafe {
                    let q = vld1q_u8(qs.as_ptr().add(32 * n + 16 * h));
                    let low = vandq_u8(vshlq_u8(q, vdupq_n_s8(-2 * j as i8)), vdupq_n_u8(3));
                    let code = match hm {
                        Some(hm) => {
                            let set =
                                vtstq_u8(vld1q_u8(hm.as_ptr().add(16 * h)), vdupq_n_u8(1 << s));
                            vsubq_u8(low, vandq_u8(vmvnq_u8(set), vdupq_n_u8(4)))
                        }
                        None => low,
                    };
                    let act = a.qs.as_ptr().add(16 * h);
                    (
                        dot16(vreinterpretq_s8_u8(code), act),
                        i32::from(vaddlvq_s8(vld1q_s8(act))),
                    )
                };
                let g = 2 * s + h;
                sum = super::portable::group_step(sum, a.d, (scale[g], offset[g]), isum, asum);
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
    for t in 0..n_tokens {
        let a = &acts[t * nb..(t + 1) * nb];
        for r in rows.clone() {
            let row = &w.data[r * w.row_bytes..(r + 1) * w.row_bytes];
            let v = match w.wtype {
                WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 | WType::Q8_0 => {
                    dot_row(w.wtype, row, a)
                }
                WType::Q4_K | WType::Q5_K | WType::Q6_K => dot_k_row(w.wtype, row, a),
                WType::Q2_K | WType::Q3_K => dot_k_low_row(w.wtype, row, a),
                _ => super::portable::dot_q8_row(w.wtype, row, a),
            };
            // SAFETY: the caller owns (t, r) of `out`.
            unsafe { *out.ptr.add(t * out.ld + r) = v };
        }
    }
}
