//! Attention over one 16-token f16 block for many query rows at once, on AVX-512: the
//! block's keys are converted and transposed once ([`kt_block`]), channel-major, so one
//! vector of multiply-adds yields a row's 16 scores with no sums across lanes, and each
//! key and value vector loaded serves [`ROWS`] rows.
//!
//! Per row the steps are fixed, whatever other rows go through the block with it: four
//! score accumulators, channel `d` into accumulator `d mod 4` in channel order, added
//! `(a0 + a1) + (a2 + a3)` and scaled; keys out of the row's sight set to −∞ before the
//! maximum and to 0 after the exponential; the online-softmax update; then the
//! accumulator scaled and each value row added in key order. A key the row does not see
//! adds `0 · v`, which leaves a finite sum as it was. So a row's result depends on its
//! query, the keys it sees and the block edges alone.

use std::arch::x86_64::*;

use super::{EXP_MAX, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO, hsum, rescale};

/// Keys per block this kernel takes.
pub(crate) const KT_KEYS: usize = 16;
/// Rows that go through a block together: four rows' 16 score accumulators, or their
/// 16 value accumulators over 64 channels, with the shared loads, fit AVX-512's 32
/// registers.
pub(crate) const ROWS: usize = 4;

/// One query row against the current block: where its query starts in `q`, where its
/// `[max, sum, acc]` starts in `part`, and which of the block's keys it sees (bit `j` =
/// key `j`; never empty).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KtRow {
    pub q: usize,
    pub part: usize,
    pub mask: u16,
}

/// Whether this CPU runs [`attend_kt`] (it asks for AVX-512F alone, which every CPU
/// `has_avx512` accepts has).
pub(crate) fn available() -> bool {
    super::has_avx512()
}

/// Converts a block's first `nk` keys of one head (`k`, `nk` rows of `hd` f16) to f32,
/// transposed: `kt[d · 16 + j]` = key `j`, channel `d`, keys `nk..16` zero; and its
/// values (`v`, same shape) to f32 rows in `vf[j · hd + d]`.
///
/// # Safety
/// AVX-512F and AVX2/FMA/F16C must be present; `hd` is a multiple of 16; `nk ≤ 16`;
/// `k` and `v` hold `nk · hd` values, `kt` `16 · hd` and `vf` `nk · hd`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(crate) unsafe fn kt_block(
    k: &[u16],
    v: &[u16],
    nk: usize,
    hd: usize,
    kt: &mut [f32],
    vf: &mut [f32],
) {
    debug_assert!(nk <= KT_KEYS && hd.is_multiple_of(16));
    debug_assert!(k.len() >= nk * hd && v.len() >= nk * hd && kt.len() >= 16 * hd);
    // SAFETY (whole body): rows j < nk of k, channels c + 16 ≤ hd, inside the lengths
    // the caller guarantees; F16C too (the caller's).
    unsafe {
        for c in (0..hd).step_by(16) {
            let mut r = [_mm512_setzero_ps(); 16];
            for (j, rj) in r.iter_mut().enumerate().take(nk) {
                *rj = _mm512_cvtph_ps(_mm256_loadu_si256(k.as_ptr().add(j * hd + c).cast()));
            }
            let t = transpose16(&r);
            for (i, ti) in t.iter().enumerate() {
                _mm512_storeu_ps(kt.as_mut_ptr().add((c + i) * 16), *ti);
            }
        }
        super::f16_to_f32(&v[..nk * hd], &mut vf[..nk * hd]);
    }
}

/// The 16 × 16 transpose: `out[i]` lane `j` = `r[j]` lane `i`.
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16(r: &[__m512; 16]) -> [__m512; 16] {
    // Per 128-bit lane l: unpack pairs of rows, then gather quads, so that u[4Q + k] holds
    // in lane l the column 4l + k of rows 4Q..4Q+4.
    let mut t = [_mm512_setzero_ps(); 16];
    for p in 0..8 {
        t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    let mut u = [_mm512_setzero_ps(); 16];
    for qd in 0..4 {
        let (a0, a1, b0, b1) = (t[4 * qd], t[4 * qd + 1], t[4 * qd + 2], t[4 * qd + 3]);
        u[4 * qd] = _mm512_shuffle_ps::<0x44>(a0, b0);
        u[4 * qd + 1] = _mm512_shuffle_ps::<0xEE>(a0, b0);
        u[4 * qd + 2] = _mm512_shuffle_ps::<0x44>(a1, b1);
        u[4 * qd + 3] = _mm512_shuffle_ps::<0xEE>(a1, b1);
    }
    // Column 4l + k is lane l of u[k], u[4 + k], u[8 + k], u[12 + k], in that order.
    let mut out = [_mm512_setzero_ps(); 16];
    for k in 0..4 {
        let a = _mm512_shuffle_f32x4::<0x88>(u[k], u[4 + k]);
        let b = _mm512_shuffle_f32x4::<0xDD>(u[k], u[4 + k]);
        let c = _mm512_shuffle_f32x4::<0x88>(u[8 + k], u[12 + k]);
        let d = _mm512_shuffle_f32x4::<0xDD>(u[8 + k], u[12 + k]);
        out[k] = _mm512_shuffle_f32x4::<0x88>(a, c);
        out[8 + k] = _mm512_shuffle_f32x4::<0xDD>(a, c);
        out[4 + k] = _mm512_shuffle_f32x4::<0x88>(b, d);
        out[12 + k] = _mm512_shuffle_f32x4::<0xDD>(b, d);
    }
    out
}

/// `exp(x)` in 16 lanes: the steps of [`super::exp8`], lane for lane.
#[target_feature(enable = "avx512f,fma")]
#[inline]
fn exp16(x: __m512) -> __m512 {
    let x = _mm512_max_ps(
        _mm512_min_ps(x, _mm512_set1_ps(EXP_MAX)),
        _mm512_set1_ps(EXP_MIN),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    _mm512_mul_ps(p, _mm512_castsi512_ps(e))
}

/// The 16 lanes' sum in a fixed order: the halves added, then [`hsum`]'s tree.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
fn hsum16(x: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(x);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
    // SAFETY: AVX2 is enabled here.
    unsafe { hsum(_mm256_add_ps(lo, hi)) }
}

/// The online-softmax step of one row over a block: its 16 scores `s`, of which it sees
/// the keys in `mask` (the others set to −∞ before the maximum and to 0 after the
/// exponential). Updates the row's `[max, sum]` at `p`, leaves its weights in `w` and
/// returns the factor its accumulator is to be scaled by.
///
/// # Safety
/// AVX-512F and AVX2/FMA/F16C must be present; `p` points at the row's two values.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn softmax_row(s: __m512, mask: u16, p: *mut f32, w: &mut [f32; KT_KEYS]) -> f32 {
    let s = _mm512_mask_blend_ps(mask, _mm512_set1_ps(f32::NEG_INFINITY), s);
    let bmax = _mm512_reduce_max_ps(s);
    // SAFETY: the caller's contract.
    unsafe {
        let (m_old, l_old) = (*p, *p.add(1));
        let m_new = m_old.max(bmax);
        let c = if l_old > 0.0 {
            rescale(m_old, m_new)
        } else {
            0.0
        };
        let e = _mm512_maskz_mov_ps(mask, exp16(_mm512_sub_ps(s, _mm512_set1_ps(m_new))));
        *p = m_new;
        *p.add(1) = l_old * c + hsum16(e);
        _mm512_storeu_ps(w.as_mut_ptr(), e);
        c
    }
}

/// Each row's accumulator (at `part[r] + 2`, `hd` values) scaled by `c[r]`, then the
/// first `nv` value rows of `vf` added in key order, weighed by `w[r]`.
///
/// # Safety
/// AVX-512F must be present; `hd` is a multiple of 64; each part holds `hd + 2` values no
/// other row uses; `vf` holds `nv` rows of `hd`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn add_values<const RN: usize>(
    part: [*mut f32; RN],
    (c, w): (&[f32; RN], &[[f32; KT_KEYS]; RN]),
    vf: &[f32],
    (hd, nv): (usize, usize),
) {
    // SAFETY (whole body): the caller's contract bounds every part and vf's rows.
    unsafe {
        for h in (0..hd).step_by(64) {
            let mut acc = [[_mm512_setzero_ps(); 4]; RN];
            for r in 0..RN {
                let p = part[r].add(2 + h);
                let cv = _mm512_set1_ps(c[r]);
                for i in 0..4 {
                    acc[r][i] = _mm512_mul_ps(_mm512_loadu_ps(p.add(16 * i)), cv);
                }
            }
            for j in 0..nv {
                let vr = vf.as_ptr().add(j * hd + h);
                let v: [__m512; 4] = std::array::from_fn(|i| _mm512_loadu_ps(vr.add(16 * i)));
                for r in 0..RN {
                    let wj = _mm512_set1_ps(w[r][j]);
                    for i in 0..4 {
                        acc[r][i] = _mm512_fmadd_ps(wj, v[i], acc[r][i]);
                    }
                }
            }
            for r in 0..RN {
                let p = part[r].add(2 + h);
                for i in 0..4 {
                    _mm512_storeu_ps(p.add(16 * i), acc[r][i]);
                }
            }
        }
    }
}

/// `RN` rows (`RN ≤ ROWS`) against the block [`kt_block`] left in `kt` and `vf`: the
/// online-softmax step of each row's `[max, sum, acc[hd]]` in `part`.
///
/// # Safety
/// AVX-512F and AVX2/FMA/F16C must be present; `hd` is a multiple of 64, at most 256;
/// each row's query (`q[row.q..][..hd]`) and part (`part[row.part..][..hd + 2]`) lie
/// inside the slices and no two rows share a part; each mask is non-zero and sees only
/// keys `kt_block` converted.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(crate) unsafe fn attend_kt<const RN: usize>(
    q: &[f32],
    rows: &[KtRow],
    kt: &[f32],
    vf: &[f32],
    hd: usize,
    scale: f32,
    part: &mut [f32],
) {
    debug_assert!(rows.len() == RN && RN <= ROWS && hd.is_multiple_of(64) && hd <= 256);
    debug_assert!(kt.len() >= 16 * hd);
    let mut a = [[_mm512_setzero_ps(); 4]; RN];
    // SAFETY (whole body): the caller's contract bounds every row's query and part, kt's
    // 16 · hd values and vf's rows below the highest key any mask sees.
    unsafe {
        let qp: [*const f32; RN] = std::array::from_fn(|r| q.as_ptr().add(rows[r].q));
        for d in (0..hd).step_by(4) {
            for k in 0..4 {
                let kv = _mm512_loadu_ps(kt.as_ptr().add((d + k) * 16));
                for r in 0..RN {
                    a[r][k] = _mm512_fmadd_ps(_mm512_set1_ps(*qp[r].add(d + k)), kv, a[r][k]);
                }
            }
        }
        let mut w = [[0.0f32; KT_KEYS]; RN];
        let mut c = [0.0f32; RN];
        let mut seen = 0u16;
        let p: [*mut f32; RN] = std::array::from_fn(|r| part.as_mut_ptr().add(rows[r].part));
        for r in 0..RN {
            let m = rows[r].mask;
            seen |= m;
            let s = _mm512_add_ps(
                _mm512_add_ps(a[r][0], a[r][1]),
                _mm512_add_ps(a[r][2], a[r][3]),
            );
            let s = _mm512_mul_ps(s, _mm512_set1_ps(scale));
            c[r] = softmax_row(s, m, p[r], &mut w[r]);
        }
        // Keys past the last one any row sees add nothing to any row: left out.
        let nv = 16 - seen.leading_zeros() as usize;
        add_values(p, (&c, &w), vf, (hd, nv));
    }
}

/// `RN` rows through one whole block of 16 keys that every row sees, with the row
/// kernel's arithmetic (`attend_block_wide::<HD8>`, f32 keys, no bias) from the
/// transposed keys [`kt_block`] left: the same bits a row gets from the row kernel, so
/// rows that share a block (decode calls over a shared prefix) can go through it
/// together, four at a time, and still get what they would alone.
///
/// The row kernel forms a key's score from two accumulators over the head's 8-value
/// chunks (even chunks into `a0`, the first a plain product, odd ones into `a1`), added,
/// then its 8 lanes summed as `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`, plus
/// the bias (0) and times `scale`. Here lane `j` is key `j`: channel `8i + l` of every key
/// is one vector, so lane position `l`'s two accumulators are 16 keys' at once and the
/// lane sum is a tree of vector adds. The softmax and the values are the row kernel's
/// steps as [`attend_kt`] takes them (its exponential and sums are the row kernel's, lane
/// for lane, for a block all of whose keys a row sees).
///
/// # Safety
/// AVX-512F and AVX2/FMA/F16C must be present; `HD8` is 8 or 16 (heads of 64 or 128);
/// each `q[r]` points at `8 · HD8` values and each `part[r]` at `8 · HD8 + 2` values no
/// other row uses; `kt` holds `16 · 8 · HD8` values and `vf` 16 rows of `8 · HD8`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(crate) unsafe fn attend_kt_exact<const RN: usize, const HD8: usize>(
    q: [*const f32; RN],
    part: [*mut f32; RN],
    kt: &[f32],
    vf: &[f32],
    scale: f32,
) {
    let hd = 8 * HD8;
    debug_assert!((HD8 == 8 || HD8 == 16) && kt.len() >= 16 * hd && vf.len() >= 16 * hd);
    // SAFETY (whole body): the caller's contract bounds every query, part, kt and vf.
    unsafe {
        let key = |d: usize| _mm512_loadu_ps(kt.as_ptr().add(d * 16));
        let mut sums = [[_mm512_setzero_ps(); 8]; RN];
        for l in 0..8 {
            let mut a0 = [_mm512_setzero_ps(); RN];
            let mut a1 = [_mm512_setzero_ps(); RN];
            let k0 = key(l);
            for r in 0..RN {
                a0[r] = _mm512_mul_ps(_mm512_set1_ps(*q[r].add(l)), k0);
            }
            let mut i = 1;
            while i + 1 < HD8 {
                let (ki, kj) = (key(8 * i + l), key(8 * (i + 1) + l));
                for r in 0..RN {
                    a1[r] = _mm512_fmadd_ps(_mm512_set1_ps(*q[r].add(8 * i + l)), ki, a1[r]);
                    a0[r] = _mm512_fmadd_ps(_mm512_set1_ps(*q[r].add(8 * (i + 1) + l)), kj, a0[r]);
                }
                i += 2;
            }
            if i < HD8 {
                let ki = key(8 * i + l);
                for r in 0..RN {
                    a1[r] = _mm512_fmadd_ps(_mm512_set1_ps(*q[r].add(8 * i + l)), ki, a1[r]);
                }
            }
            for r in 0..RN {
                sums[r][l] = _mm512_add_ps(a0[r], a1[r]);
            }
        }
        let mut w = [[0.0f32; KT_KEYS]; RN];
        let mut c = [0.0f32; RN];
        for r in 0..RN {
            let p = &sums[r];
            let lo = _mm512_add_ps(_mm512_add_ps(p[0], p[1]), _mm512_add_ps(p[2], p[3]));
            let hi = _mm512_add_ps(_mm512_add_ps(p[4], p[5]), _mm512_add_ps(p[6], p[7]));
            let s = _mm512_add_ps(_mm512_add_ps(lo, hi), _mm512_setzero_ps());
            let s = _mm512_mul_ps(s, _mm512_set1_ps(scale));
            c[r] = softmax_row(s, u16::MAX, part[r], &mut w[r]);
        }
        add_values(part, (&c, &w), vf, (hd, KT_KEYS));
    }
}
