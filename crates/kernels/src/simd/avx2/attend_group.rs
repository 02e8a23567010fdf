//! Attention for the query heads that share one KV head, for heads too wide to keep a
//! query row in registers (256 values): the heads of one query token see the same keys,
//! so each key and value row loaded from the block serves four of them at once.
//!
//! Per row the steps are those of one query alone, in a fixed order: each score is one
//! accumulator over the head's 8-value chunks in order, summed across lanes and scaled;
//! the online-softmax update; then the accumulator scaled and each value row added in key
//! order. No row's arithmetic depends on which rows share its tile, so a row's result is
//! the same however many heads or tokens the call holds.

use std::arch::x86_64::*;

use super::{exp_sub_sum, hsum, rescale};

/// Query rows per tile: four rows and two keys (or two value chunks) take 8
/// accumulators, 2 loads and 4 broadcasts per step, within AVX2's 16 registers.
const R: usize = 4;

/// Scores `(q_r · k_j) · scale` of the `RN` rows at `q` (stride `hd`) against keys
/// `0..nv` of `kf`, into `scores[r][j]`.
///
/// # Safety
/// AVX2+FMA must be present; `q` holds `RN` rows of `hd` values, `kf` `nv` rows, `hd`
/// is a multiple of 8, `nv ≤ 32`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn scores_tile<const RN: usize>(
    q: *const f32,
    kf: *const f32,
    (hd, nv): (usize, usize),
    scale: f32,
    scores: &mut [[f32; 32]; R],
) {
    let mut j = 0;
    // SAFETY (whole body): rows r < RN of q and keys j < nv of kf, d + 8 ≤ hd.
    unsafe {
        while j + 2 <= nv {
            let (k0, k1) = (kf.add(j * hd), kf.add((j + 1) * hd));
            let mut a0 = [_mm256_setzero_ps(); RN];
            let mut a1 = [_mm256_setzero_ps(); RN];
            let mut d = 0;
            while d < hd {
                let (x0, x1) = (_mm256_loadu_ps(k0.add(d)), _mm256_loadu_ps(k1.add(d)));
                for r in 0..RN {
                    let qv = _mm256_loadu_ps(q.add(r * hd + d));
                    a0[r] = _mm256_fmadd_ps(qv, x0, a0[r]);
                    a1[r] = _mm256_fmadd_ps(qv, x1, a1[r]);
                }
                d += 8;
            }
            for r in 0..RN {
                scores[r][j] = hsum(a0[r]) * scale;
                scores[r][j + 1] = hsum(a1[r]) * scale;
            }
            j += 2;
        }
        if j < nv {
            let k0 = kf.add(j * hd);
            let mut a0 = [_mm256_setzero_ps(); RN];
            let mut d = 0;
            while d < hd {
                let x0 = _mm256_loadu_ps(k0.add(d));
                for r in 0..RN {
                    a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(r * hd + d)), x0, a0[r]);
                }
                d += 8;
            }
            for r in 0..RN {
                scores[r][j] = hsum(a0[r]) * scale;
            }
        }
    }
}

/// `acc_r = acc_r · c_r + Σ_j p_r[j] · v_j` for the `RN` rows of `part` (stride
/// `hd + 2`, accumulator at 2), keys in order.
///
/// # Safety
/// AVX2+FMA must be present; `part` holds `RN` rows of `hd + 2`, `vf` `nv` rows of `hd`,
/// `hd` a multiple of 16.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn values_tile<const RN: usize>(
    part: *mut f32,
    vf: *const f32,
    (hd, nv): (usize, usize),
    c: &[f32; R],
    p: &[[f32; 32]; R],
) {
    let mut d = 0;
    // SAFETY (whole body): rows r < RN of part, keys j < nv of vf, d + 16 ≤ hd.
    unsafe {
        while d < hd {
            let mut a0 = [_mm256_setzero_ps(); RN];
            let mut a1 = [_mm256_setzero_ps(); RN];
            for r in 0..RN {
                let o = part.add(r * (hd + 2) + 2 + d);
                let cv = _mm256_set1_ps(c[r]);
                a0[r] = _mm256_mul_ps(_mm256_loadu_ps(o), cv);
                a1[r] = _mm256_mul_ps(_mm256_loadu_ps(o.add(8)), cv);
            }
            for j in 0..nv {
                let v = vf.add(j * hd + d);
                let (x0, x1) = (_mm256_loadu_ps(v), _mm256_loadu_ps(v.add(8)));
                for r in 0..RN {
                    let pj = _mm256_set1_ps(p[r][j]);
                    a0[r] = _mm256_fmadd_ps(pj, x0, a0[r]);
                    a1[r] = _mm256_fmadd_ps(pj, x1, a1[r]);
                }
            }
            for r in 0..RN {
                let o = part.add(r * (hd + 2) + 2 + d);
                _mm256_storeu_ps(o, a0[r]);
                _mm256_storeu_ps(o.add(8), a1[r]);
            }
            d += 16;
        }
    }
}

/// The `RN` rows at `q` and `part` through one block of `nv` keys.
///
/// # Safety
/// As [`attend_group`], for `RN` rows.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn attend_tile<const RN: usize>(
    q: *const f32,
    kf: &[f32],
    vf: &[f32],
    (hd, nv): (usize, usize),
    scale: f32,
    part: *mut f32,
) {
    let mut scores = [[0.0f32; 32]; R];
    let mut c = [0.0f32; R];
    // SAFETY (whole body): forwarded contract; row r's part is `hd + 2` values at
    // part + r · (hd + 2).
    unsafe {
        scores_tile::<RN>(q, kf.as_ptr(), (hd, nv), scale, &mut scores);
        for r in 0..RN {
            let s = &mut scores[r][..nv];
            let bmax = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let pr = part.add(r * (hd + 2));
            let (m_old, l_old) = (*pr, *pr.add(1));
            let m_new = m_old.max(bmax);
            c[r] = if l_old > 0.0 {
                rescale(m_old, m_new)
            } else {
                0.0
            };
            let sum = exp_sub_sum(s, m_new);
            *pr = m_new;
            *pr.add(1) = l_old * c[r] + sum;
        }
        values_tile::<RN>(part, vf.as_ptr(), (hd, nv), &c, &scores);
    }
}

/// The `g` query rows of one token that share a KV head (`q`: `g` rows of `hd`) through
/// one block of `nv` keys and values (`kf`, `vf`: rows of `hd`), each row's
/// `[running max, running sum, acc[hd]]` in `part` (`g` rows of `hd + 2`); scores are
/// `(q · k) · scale`.
///
/// # Safety
/// AVX2+FMA must be present; `hd` is a multiple of 16, `nv ≤ 32`, and the slices hold
/// what is described above.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn attend_group(
    q: &[f32],
    g: usize,
    (kf, vf): (&[f32], &[f32]),
    (hd, nv): (usize, usize),
    scale: f32,
    part: &mut [f32],
) {
    debug_assert!(hd.is_multiple_of(16) && nv <= 32);
    debug_assert!(q.len() >= g * hd && part.len() >= g * (hd + 2));
    debug_assert!(kf.len() >= nv * hd && vf.len() >= nv * hd);
    let (qp, pp) = (q.as_ptr(), part.as_mut_ptr());
    let mut r = 0;
    // SAFETY: rows r..r + RN < g of q and part, inside the lengths the caller guarantees.
    unsafe {
        while r + R <= g {
            attend_tile::<R>(
                qp.add(r * hd),
                kf,
                vf,
                (hd, nv),
                scale,
                pp.add(r * (hd + 2)),
            );
            r += R;
        }
        while r < g {
            attend_tile::<1>(
                qp.add(r * hd),
                kf,
                vf,
                (hd, nv),
                scale,
                pp.add(r * (hd + 2)),
            );
            r += 1;
        }
    }
}
