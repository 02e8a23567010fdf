//! x86-64 AVX2 + FMA + F16C kernels.
//!
//! Every function here is `unsafe` because it must only run on a CPU with those features;
//! `Isa::detect` guarantees that before dispatching here.

use std::arch::x86_64::*;

mod amx;
mod attend_group;
pub(crate) mod attend_kt;
mod brows;
mod gemm;
mod kgemm;
mod krows;
mod lanes;

pub(crate) use attend_group::attend_group;
#[cfg(test)]
pub(crate) use gemm::{Build, gemm_q8_on};
pub(crate) use gemm::{gemm_f32, gemm_q8, wants_token_rows};

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Whether this CPU has the AVX-512 subsets `brows::bgemm_wide` and [`attend_block_wide`]
/// are built for. CPUs with AVX-512 but no VNNI (the first AVX-512 generation) take the
/// AVX2 build. Asked once per attention block and head, so the answer is kept in one
/// flag rather than re-read as four feature queries.
pub(crate) fn has_avx512() -> bool {
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WIDE.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    })
}

/// # Safety
/// AVX2+FMA must be present.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: every load is inside 0..n of both slices.
    unsafe {
        while i + 16 <= n {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(&a[i]), _mm256_loadu_ps(&b[i]), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(&a[i + 8]), _mm256_loadu_ps(&b[i + 8]), a1);
            i += 16;
        }
        while i + 8 <= n {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(&a[i]), _mm256_loadu_ps(&b[i]), a0);
            i += 8;
        }
    }
    // SAFETY: AVX present.
    let mut s = unsafe { hsum(_mm256_add_ps(a0, a1)) };
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// # Safety
/// AVX2+FMA must be present.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n for both slices.
        unsafe {
            let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(&x[i]), _mm256_loadu_ps(&y[i]));
            _mm256_storeu_ps(&mut y[i], v);
        }
        i += 8;
    }
    while i < n {
        y[i] += a * x[i];
        i += 1;
    }
}

/// # Safety
/// F16C must be present.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n for both slices.
        unsafe {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i).cast()));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), v);
        }
        i += 8;
    }
    super::portable::f16_to_f32(&src[i..n], &mut dst[i..n]);
}

/// # Safety
/// F16C must be present.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n for both slices.
        unsafe {
            let v = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(&src[i]));
            _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), v);
        }
        i += 8;
    }
    super::portable::f32_to_f16(&src[i..n], &mut dst[i..n]);
}

/// [`crate::quant::quantize_row_q8`] eight values to a register: the same operations per
/// value as the scalar loop (max of absolute values, two divides per block, multiply,
/// round to nearest with ties to even), so the same bits for finite input.
///
/// # Safety
/// AVX2 must be present; `out` holds `x.len() / 32` blocks (the caller checked).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_row_q8(x: &[f32], out: &mut [crate::quant::BlockQ8]) {
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    // packs interleaves 128-bit lanes; this puts the four groups of eight back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (chunk, blk) in x.chunks_exact(32).zip(out.iter_mut()) {
        // SAFETY: the chunk holds 32 floats.
        let v = unsafe { [0, 8, 16, 24].map(|i| _mm256_loadu_ps(chunk.as_ptr().add(i))) };
        let m = v.map(|v| _mm256_and_ps(v, abs_mask));
        let m = _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = crate::quant::q8_scale(amax);
        let id = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let q = v.map(|v| {
            let x = _mm256_mul_ps(v, id);
            _mm256_cvttps_epi32(_mm256_round_ps::<NEAREST>(x))
        });
        let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let sum = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256(sum, 1),
        );
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b01_00_11_10));
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b10_11_00_01));
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let packed = _mm256_permutevar8x32_epi32(packed, order);
        // SAFETY: `qs` holds 32 bytes.
        unsafe { _mm256_storeu_si256(blk.qs.as_mut_ptr().cast(), packed) };
        blk.d = d;
        blk.s = d * _mm_cvtsi128_si32(sum) as f32;
    }
}

/// The steps of [`exp8`] and the AVX-512 prompt kernel's 16-lane exponential, one set
/// so that both give the same bits: the input clamp, ln 2 in two parts (the rounding
/// error of `n · ln 2` kept), and the Taylor coefficients of `e^r` from the highest.
pub(super) const EXP_MAX: f32 = 88.3;
pub(super) const EXP_MIN: f32 = -87.3;
pub(super) const LN2_HI: f32 = 0.693_145_75;
pub(super) const LN2_LO: f32 = 1.428_606_8e-6;
pub(super) const EXP_POLY: [f32; 7] = [
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// e^x for 8 lanes: range reduction by ln 2, a degree-6 polynomial on |r| ≤ ln2/2
/// (relative error ≈ 2e-7), and the exponent put back through the float's bits.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
    let x = _mm256_max_ps(
        _mm256_min_ps(x, _mm256_set1_ps(EXP_MAX)),
        _mm256_set1_ps(EXP_MIN),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(e))
}

/// `exp(m_old − m_new)`, the factor an online softmax scales its accumulator by when the
/// running maximum moves from `m_old` to `m_new ≥ m_old`. Once a row's largest scores are
/// behind it the maximum stays put on most blocks, and the factor is exactly 1 (what
/// `expf(0)` returns) without a call into libm, which it made once per (query row, block).
/// libm's `expf`, from here and from SwiGLU, was 4.6% of a batched decode step's profile.
#[inline]
pub(super) fn rescale(m_old: f32, m_new: f32) -> f32 {
    if m_old == m_new {
        1.0
    } else {
        (m_old - m_new).exp()
    }
}

/// `gate[i] = gate[i] / (1 + exp(-gate[i])) · up[i]`, eight at a time through [`exp8`];
/// a tail under eight takes the same steps in one masked-off vector.
///
/// # Safety
/// AVX2+FMA must be present.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let one = _mm256_set1_ps(1.0);
    let step = |g: __m256, u: __m256| {
        // SAFETY: AVX2+FMA present (this function's contract).
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u)
        }
    };
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n ≤ both lengths.
        unsafe {
            let v = step(
                _mm256_loadu_ps(gate.as_ptr().add(i)),
                _mm256_loadu_ps(up.as_ptr().add(i)),
            );
            _mm256_storeu_ps(gate.as_mut_ptr().add(i), v);
        }
        i += 8;
    }
    if i < n {
        let (mut g, mut u) = ([0.0f32; 8], [0.0f32; 8]);
        g[..n - i].copy_from_slice(&gate[i..n]);
        u[..n - i].copy_from_slice(&up[i..n]);
        // SAFETY: both arrays hold 8 values.
        unsafe {
            let v = step(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr()));
            _mm256_storeu_ps(g.as_mut_ptr(), v);
        }
        gate[i..n].copy_from_slice(&g[..n - i]);
    }
}

/// # Safety
/// AVX2+FMA must be present.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
    let n = x.len();
    let mv = _mm256_set1_ps(max);
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n.
        unsafe {
            let v = exp8(_mm256_sub_ps(_mm256_loadu_ps(&x[i]), mv));
            _mm256_storeu_ps(&mut x[i], v);
            acc = _mm256_add_ps(acc, v);
        }
        i += 8;
    }
    // SAFETY: AVX present.
    let mut s = unsafe { hsum(acc) };
    while i < n {
        x[i] = (x[i] - max).exp();
        s += x[i];
        i += 1;
    }
    s
}

/// The lane sums of eight vectors, as one vector (lane `i` is the sum of `v[i]`'s lanes):
/// three rounds of pairwise adds instead of eight separate horizontal sums.
///
/// # Safety
/// AVX2 must be present. Inlined into its callers, built for their features (no
/// `target_feature` of its own, which would keep it out of line in the AVX-512 build).
#[inline(always)]
unsafe fn hsum8(v: &[__m256; 8]) -> __m256 {
    // SAFETY: AVX2 present (the caller's contract).
    unsafe {
        let t0 = _mm256_hadd_ps(v[0], v[1]);
        let t1 = _mm256_hadd_ps(v[2], v[3]);
        let t2 = _mm256_hadd_ps(v[4], v[5]);
        let t3 = _mm256_hadd_ps(v[6], v[7]);
        // Per 128-bit half: the 4-lane sums of v0..v3 (u0) and of v4..v7 (u1).
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(
            _mm256_permute2f128_ps(u0, u1, 0x20),
            _mm256_permute2f128_ps(u0, u1, 0x31),
        )
    }
}

/// The products of `q` (in registers) and the key row at `k`, as one vector: two
/// accumulators over the head's 8-value chunks, then added.
///
/// # Safety
/// AVX2+FMA must be present; `k` points at `HD8 * 8` values. Inlined as [`hsum8`].
#[inline(always)]
unsafe fn key_products<const HD8: usize>(qv: &[__m256; HD8], k: *const f32) -> __m256 {
    // SAFETY: the caller's contract.
    unsafe {
        let mut a0 = _mm256_mul_ps(qv[0], _mm256_loadu_ps(k));
        let mut a1 = _mm256_setzero_ps();
        let mut i = 1;
        while i + 1 < HD8 {
            a1 = _mm256_fmadd_ps(qv[i], _mm256_loadu_ps(k.add(i * 8)), a1);
            a0 = _mm256_fmadd_ps(qv[i + 1], _mm256_loadu_ps(k.add(i * 8 + 8)), a0);
            i += 2;
        }
        if i < HD8 {
            a1 = _mm256_fmadd_ps(qv[i], _mm256_loadu_ps(k.add(i * 8)), a1);
        }
        _mm256_add_ps(a0, a1)
    }
}

/// Scores of `q` (in registers) against `nv` key rows of `kf`, `(q · k + bias) · scale`,
/// into `scores`; returns their maximum. Each key's products go into one vector
/// ([`key_products`]); eight keys' vectors are
/// summed across lanes together ([`hsum8`]), a lone tail key alone. The order depends only
/// on the key's place in its block, never on the other rows of the call.
///
/// # Safety
/// AVX2+FMA must be present; `kf` holds `nv` rows of `HD8 * 8`, `scores` `nv` values.
/// Inlined into both attention drivers, built for their features (as [`hsum8`]).
#[inline(always)]
unsafe fn block_scores<const HD8: usize>(
    qv: &[__m256; HD8],
    kf: &[f32],
    nv: usize,
    bias: f32,
    scale: f32,
    scores: &mut [f32],
) -> f32 {
    let hd = HD8 * 8;
    // SAFETY (whole body): row j < nv lies inside kf, and j + 8 ≤ nv for a full group.
    unsafe {
        let (bv, sv) = (_mm256_set1_ps(bias), _mm256_set1_ps(scale));
        let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut j = 0;
        while j + 8 <= nv {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (t, a) in acc.iter_mut().enumerate() {
                *a = key_products::<HD8>(qv, kf.as_ptr().add((j + t) * hd));
            }
            let s = _mm256_mul_ps(_mm256_add_ps(hsum8(&acc), bv), sv);
            _mm256_storeu_ps(scores.as_mut_ptr().add(j), s);
            mv = _mm256_max_ps(mv, s);
            j += 8;
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), mv);
        let mut bmax = lanes.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        while j < nv {
            let s = (hsum(key_products::<HD8>(qv, kf.as_ptr().add(j * hd))) + bias) * scale;
            scores[j] = s;
            bmax = bmax.max(s);
            j += 1;
        }
        bmax
    }
}

/// The online-softmax step: turns `scores` into weights under the new running maximum,
/// updates `part[0..2]` (max, sum) and returns the factor the accumulator must be scaled by.
///
/// # Safety
/// AVX2+FMA must be present.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn softmax_step(scores: &mut [f32], bmax: f32, part: &mut [f32]) -> f32 {
    let m_old = part[0];
    let m_new = m_old.max(bmax);
    let c = if part[1] > 0.0 {
        rescale(m_old, m_new)
    } else {
        0.0
    };
    // SAFETY: AVX2 present.
    let sum = unsafe { exp_sub_sum(scores, m_new) };
    part[0] = m_new;
    part[1] = part[1] * c + sum;
    c
}

/// Defines the fused attention kernel `$name` compiled for `$features` (see
/// [`gemm_driver`] for why the same code is built twice: with 64-wide heads the query
/// and the accumulator alone take all 16 AVX2 registers).
macro_rules! attend_driver {
    ($name:ident, $features:literal) => {
        /// One query row against one block of keys, fused: scores, online-softmax update and the
        /// value accumulation, with the row's accumulator held in registers (`HD8` = head_dim/8).
        ///
        /// `part` is `[running max, running sum, acc[head_dim]]`; `kf`/`vf` hold `nv` keys/values
        /// as f32 rows of `HD8 * 8`; scores are `(q · k + bias) · scale`.
        ///
        /// With `vsm`, the block is a quantized one read as codes, never dequantized: the key
        /// scales are folded into `q` (the caller passes `q ⊙ key scale` and `bias = q · key
        /// minimum`, since `q · (code · scale + min) = (q ⊙ scale) · code + bias`), and each value
        /// row's per-group `(scale, min)` pairs (`vsm[2(j·G + g)..]`, `G = HD8 / 4` groups of 32
        /// channels) weigh its codes as they are accumulated: `Σ p (code · s + m) = Σ (p s) code
        /// + Σ p m`.
        ///
        /// # Safety
        /// AVX2+FMA must be present; `q` has `HD8 * 8` values, `kf`/`vf` at least `nv` rows,
        /// `part` `HD8 * 8 + 2` values, and `nv ≤ 32`; with `vsm`, it holds `2 · nv · HD8 / 4`
        /// values, `HD8` is a multiple of 4 and at most 32.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn $name<const HD8: usize>(
            q: &[f32],
            bias: f32,
            kf: &[f32],
            vf: &[f32],
            vsm: Option<&[f32]>,
            nv: usize,
            scale: f32,
            part: &mut [f32],
        ) {
            let hd = HD8 * 8;
            let mut qv = [_mm256_setzero_ps(); HD8];
            let mut scores = [0.0f32; 32];
            // SAFETY (whole body): every index stays inside the lengths the caller guarantees.
            unsafe {
                for i in 0..HD8 {
                    qv[i] = _mm256_loadu_ps(q.as_ptr().add(i * 8));
                }
                let bmax = block_scores::<HD8>(&qv, kf, nv, bias, scale, &mut scores);
                let c = softmax_step(&mut scores[..nv], bmax, part);
                let acc_p = part.as_mut_ptr().add(2);
                let mut acc = [_mm256_setzero_ps(); HD8];
                let cv = _mm256_set1_ps(c);
                for i in 0..HD8 {
                    acc[i] = _mm256_mul_ps(_mm256_loadu_ps(acc_p.add(i * 8)), cv);
                }
                match vsm {
                    None => {
                        for j in 0..nv {
                            let pj = _mm256_set1_ps(scores[j]);
                            let v = vf.as_ptr().add(j * hd);
                            for i in 0..HD8 {
                                acc[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v.add(i * 8)), acc[i]);
                            }
                        }
                    }
                    Some(sm) => {
                        let ng = HD8 / 4;
                        let mut msum = [0.0f32; 8];
                        for j in 0..nv {
                            let p = scores[j];
                            let v = vf.as_ptr().add(j * hd);
                            let row = sm.as_ptr().add(2 * j * ng);
                            for g in 0..ng {
                                let w = _mm256_set1_ps(p * *row.add(2 * g));
                                msum[g] += p * *row.add(2 * g + 1);
                                for i in 4 * g..4 * g + 4 {
                                    acc[i] =
                                        _mm256_fmadd_ps(w, _mm256_loadu_ps(v.add(i * 8)), acc[i]);
                                }
                            }
                        }
                        for i in 0..HD8 {
                            acc[i] = _mm256_add_ps(acc[i], _mm256_set1_ps(msum[i / 4]));
                        }
                    }
                }
                for i in 0..HD8 {
                    _mm256_storeu_ps(acc_p.add(i * 8), acc[i]);
                }
            }
        }
    };
}

attend_driver!(attend_block, "avx2,fma,f16c");
attend_driver!(
    attend_block_wide,
    "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"
);

/// Codes of `nt` packed KV rows as f32 rows of `hd`, in channel order (see `kvquant`'s
/// packing: byte `j` of a row holds channel `j + k · hd · bits / 8` in bits `k · bits ..`).
///
/// # Safety
/// AVX2 must be present; `bits` is 8, 4 or 2; `hd` a multiple of 32; `rows` holds
/// `nt · hd · bits / 8` bytes and `out` `nt · hd` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn unpack_rows(rows: &[u8], bits: usize, hd: usize, nt: usize, out: &mut [f32]) {
    debug_assert!(hd.is_multiple_of(32) && rows.len() >= nt * hd * bits / 8);
    debug_assert!(out.len() >= nt * hd);
    // SAFETY: forwarded contract.
    unsafe {
        match bits {
            8 => unpack_rows_n::<8>(rows, hd, nt, out),
            4 => unpack_rows_n::<4>(rows, hd, nt, out),
            _ => unpack_rows_n::<2>(rows, hd, nt, out),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_rows_n<const BITS: usize>(rows: &[u8], hd: usize, nt: usize, out: &mut [f32]) {
    let span = hd * BITS / 8;
    let per = 8 / BITS;
    let mask = _mm256_set1_epi32((1i32 << BITS) - 1);
    // SAFETY (whole body): row t's bytes t·span + j + 8 ≤ (t + 1)·span and its outputs
    // t·hd + j + k·span + 8 ≤ (t + 1)·hd, inside the lengths the caller guarantees.
    unsafe {
        for t in 0..nt {
            let row = rows.as_ptr().add(t * span);
            let o = out.as_mut_ptr().add(t * hd);
            let mut j = 0;
            while j < span {
                let e = _mm256_cvtepu8_epi32(_mm_loadl_epi64(row.add(j).cast()));
                for k in 0..per {
                    let c = if BITS == 8 {
                        e
                    } else {
                        _mm256_and_si256(
                            _mm256_srlv_epi32(e, _mm256_set1_epi32((k * BITS) as i32)),
                            mask,
                        )
                    };
                    _mm256_storeu_ps(o.add(j + k * span), _mm256_cvtepi32_ps(c));
                }
                j += 8;
            }
        }
    }
}

/// `o[i] = o[i] · s[i] + m[i]`.
///
/// # Safety
/// AVX2+FMA must be present; the slices have equal lengths.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn fma_rows(o: &mut [f32], s: &[f32], m: &[f32]) {
    let n = o.len().min(s.len()).min(m.len());
    let mut i = 0;
    // SAFETY: i + 8 ≤ n for all three slices.
    unsafe {
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(
                _mm256_loadu_ps(o.as_ptr().add(i)),
                _mm256_loadu_ps(s.as_ptr().add(i)),
                _mm256_loadu_ps(m.as_ptr().add(i)),
            );
            _mm256_storeu_ps(o.as_mut_ptr().add(i), v);
            i += 8;
        }
    }
    while i < n {
        o[i] = o[i] * s[i] + m[i];
        i += 1;
    }
}

#[cfg(test)]
mod tests;
