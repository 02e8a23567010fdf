//! The AVX2 and AVX-512 builds of the Q3_K product against 32-value activation blocks
//! (Q4_K, Q5_K and Q6_K take [`super::krows`]).
//!
//! A super-block's sixteen group scales are unpacked once per row into floats, then each
//! of its eight 32-value sub-blocks is one integer dot product with one activation block,
//! turned to float and scaled lane by lane: lanes 0..4 of the dot product cover values
//! 0..16 and lanes 4..8 values 16..32, so the two group scales per sub-block are a
//! per-lane vector, never a branch. The codes are stored 4 above the values (0..8): each
//! token's `-4 · Σ a` per lane is formed once per tile and is where that token's dot
//! products start (VNNI's `vpdpbusd` adds onto it for free).
//!
//! Each output element takes the same operations in the same order whatever tile it is
//! computed in, and both builds spell out the same float operations (the integer dot
//! products are exact either way), so the results are the same bits on every path.

use std::arch::x86_64::*;

use super::super::{OutPtr, RowsRef};
use super::gemm::{PREFETCH_BYTES, TOKEN_BLOCK};
use super::hsum;
use crate::quant::{BlockQ8, QK, QK_K, WType};

/// Activation blocks per super-block.
const SUBS: usize = QK_K / QK;

/// How a k-quant super-block unpacks.
trait KKind {
    /// Bytes per super-block.
    const BB: usize;
    /// Whether the format has per-sub-block offsets (the header's floats 8..16).
    const HAS_M: bool;
    /// How far above the signed values the codes are stored (4 for Q3_K):
    /// the dot product then starts from `-OFFSET · Σ a` over each lane's activations.
    const OFFSET: i8 = 0;
    /// The super-block's scales as floats (see each kind).
    unsafe fn header(p: *const u8) -> [f32; 16];
    /// Sub-block `s`'s 32 codes and the per-lane scale of its dot product.
    unsafe fn sub(p: *const u8, h: &[f32; 16], s: usize) -> (__m256i, __m256);
}

/// `acc` plus 8 lanes of the integer dot product of unsigned codes `w` (below 64, so the
/// u8 × i8 pairs summed fit an i16) with activations `a`, four bytes to a lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1));
    _mm256_add_epi32(acc, p)
}

/// As [`dot`] in one AVX-512 VNNI instruction (the same integers).
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
unsafe fn dot_vnni(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, w, a)
}

struct KQ3K;

impl KKind for KQ3K {
    const BB: usize = 110;
    const HAS_M: bool = false;
    const OFFSET: i8 = 4;
    /// Floats 0..16: `d · (scale[g] - 32)` for the sixteen groups of 16.
    #[inline(always)]
    unsafe fn header(p: *const u8) -> [f32; 16] {
        // SAFETY: p points at a whole 110-byte super-block (caller): scales at 96, d at 108.
        let (sc, bits) = unsafe {
            let b = std::slice::from_raw_parts(p.add(96), 12);
            let bits = i32::from(std::ptr::read_unaligned(p.add(108).cast::<u16>()));
            (crate::quant::layout::scales_q3k(b), bits)
        };
        let mut h = [0.0f32; 16];
        // SAFETY: AVX2/F16C present (module contract); sc holds 16 bytes, h 16 floats.
        unsafe {
            let d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))));
            let v = _mm_sub_epi8(_mm_loadu_si128(sc.as_ptr().cast()), _mm_set1_epi8(32));
            let lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
            let hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(v)));
            _mm256_storeu_ps(h.as_mut_ptr(), _mm256_mul_ps(lo, d));
            _mm256_storeu_ps(h.as_mut_ptr().add(8), _mm256_mul_ps(hi, d));
        }
        h
    }
    /// Codes `value + 4` (0..8): two bits from `qs`, the third from bit `s` of `hmask`.
    #[inline(always)]
    unsafe fn sub(p: *const u8, h: &[f32; 16], s: usize) -> (__m256i, __m256) {
        let (n, j) = (s / 4, s % 4);
        // SAFETY: p points at a whole super-block (caller): hmask at 0, qs at 32; h holds
        // 16 floats, and 2s + 1 < 16.
        unsafe {
            let q = _mm256_loadu_si256(p.add(32 + 32 * n).cast());
            let low = _mm256_and_si256(
                _mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)),
                _mm256_set1_epi8(3),
            );
            let hm = _mm256_loadu_si256(p.cast());
            let high = _mm256_and_si256(
                _mm256_srl_epi16(hm, _mm_cvtsi32_si128(s as i32)),
                _mm256_set1_epi8(1),
            );
            let codes = _mm256_or_si256(low, _mm256_slli_epi16::<2>(high));
            let pair = _mm_castpd_ps(_mm_load_sd(h.as_ptr().add(2 * s).cast()));
            let scale = _mm256_permutevar8x32_ps(
                _mm256_castps128_ps256(pair),
                _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1),
            );
            (codes, scale)
        }
    }
}

/// Defines the k-quant tile `$tile` and driver `$gemm` for `$features`, with dot products
/// from `$dot` and prefill tiles of up to 4 rows × `$rn` tokens.
macro_rules! kgemm_driver {
    ($tile:ident, $gemm:ident, $dot:ident, $rn:literal, $features:literal) => {
        /// The RM × RN tile at rows `r0..r0+RM`, tokens `t0..t0+RN`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $tile<K: KKind, const RM: usize, const RN: usize>(
            w: &RowsRef<'_>,
            r0: usize,
            acts: *const BlockQ8,
            nb: usize,
            t0: usize,
            out: OutPtr,
        ) {
            let mut acc = [[_mm256_setzero_ps(); RN]; RM];
            let wbase = w.data.as_ptr();
            for sb in 0..nb / SUBS {
                let mut hdr = [[0.0f32; 16]; RM];
                for r in 0..RM {
                    let p = wbase.wrapping_add((r0 + r) * w.row_bytes + sb * K::BB);
                    // SAFETY: row r0+r super-block sb lies inside w.data (QMatrix::new).
                    hdr[r] = unsafe { K::header(p) };
                }
                if K::HAS_M {
                    for t in 0..RN {
                        let mut sums = [0.0f32; SUBS];
                        for s in 0..SUBS {
                            // SAFETY: token t0+t's blocks lie inside `acts` (driver).
                            sums[s] = unsafe { (*acts.add((t0 + t) * nb + sb * SUBS + s)).s };
                        }
                        // SAFETY: eight floats each.
                        let sv = unsafe { _mm256_loadu_ps(sums.as_ptr()) };
                        for r in 0..RM {
                            // SAFETY: floats 8..16 of the header.
                            let mv = unsafe { _mm256_loadu_ps(hdr[r].as_ptr().add(8)) };
                            acc[r][t] = _mm256_fmadd_ps(mv, sv, acc[r][t]);
                        }
                    }
                }
                for s in 0..SUBS {
                    let mut av = [_mm256_setzero_si256(); RN];
                    let mut ad = [_mm256_setzero_ps(); RN];
                    let mut start = [_mm256_setzero_si256(); RN];
                    for t in 0..RN {
                        // SAFETY: token t0+t's blocks lie inside `acts` (driver).
                        unsafe {
                            let blk = acts.add((t0 + t) * nb + sb * SUBS + s);
                            av[t] = _mm256_loadu_si256((*blk).qs.as_ptr().cast());
                            ad[t] = _mm256_set1_ps((*blk).d);
                            if K::OFFSET != 0 {
                                let zero = _mm256_setzero_si256();
                                let off = $dot(zero, _mm256_set1_epi8(K::OFFSET), av[t]);
                                start[t] = _mm256_sub_epi32(zero, off);
                            }
                        }
                    }
                    for r in 0..RM {
                        let p = wbase.wrapping_add((r0 + r) * w.row_bytes + sb * K::BB);
                        if s * 64 < K::BB {
                            // A hint, never a fault, even past the end of the data.
                            _mm_prefetch::<_MM_HINT_T0>(
                                p.wrapping_add(PREFETCH_BYTES + s * 64).cast(),
                            );
                        }
                        // SAFETY: as for the header.
                        let (wv, scale) = unsafe { K::sub(p, &hdr[r], s) };
                        for t in 0..RN {
                            // SAFETY: AVX2 present (and VNNI for the wide build).
                            let dot = unsafe { $dot(start[t], wv, av[t]) };
                            acc[r][t] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(dot),
                                _mm256_mul_ps(scale, ad[t]),
                                acc[r][t],
                            );
                        }
                    }
                }
            }
            for r in 0..RM {
                for t in 0..RN {
                    // SAFETY: the driver's caller owns (t0+t, r0+r) of `out`.
                    unsafe { *out.ptr.add((t0 + t) * out.ld + r0 + r) = hsum(acc[r][t]) };
                }
            }
        }

        #[target_feature(enable = $features)]
        unsafe fn $gemm<K: KKind>(
            w: RowsRef<'_>,
            rows: std::ops::Range<usize>,
            acts: &[BlockQ8],
            n_tokens: usize,
            out: OutPtr,
        ) {
            let nb = w.cols / QK;
            assert!(w.cols.is_multiple_of(QK_K), "gemm: partial super-block");
            assert!(acts.len() >= n_tokens * nb, "gemm: activations too short");
            assert!(
                rows.end * w.row_bytes <= w.data.len(),
                "gemm: rows out of range"
            );
            let a = acts.as_ptr();
            let mut tb = 0;
            while tb < n_tokens {
                let te = (tb + TOKEN_BLOCK).min(n_tokens);
                let mut r = rows.start;
                if te - tb == 1 {
                    // One token (decode): two rows at a time. A row's sum is one chain of
                    // dependent adds, which alone held a core to the add latency when the
                    // weights were in cache; two rows interleave two chains. Measured on a
                    // Xeon (AVX-512 VNNI), one thread, 7.7 MB Q4_K matrix: 1 row 0.62 ms,
                    // 2 rows 0.53 ms, 4 rows 0.57 ms; Q6_K 1.00 / 0.78 / 1.10 ms.
                    while r + 2 <= rows.end {
                        // SAFETY: bounds asserted above; the caller owns these rows.
                        unsafe { $tile::<K, 2, 1>(&w, r, a, nb, tb, out) };
                        r += 2;
                    }
                    while r < rows.end {
                        // SAFETY: bounds asserted above; the caller owns these rows.
                        unsafe { $tile::<K, 1, 1>(&w, r, a, nb, tb, out) };
                        r += 1;
                    }
                }
                while r + 4 <= rows.end {
                    let mut t = tb;
                    while $rn == 4 && t + 4 <= te {
                        // SAFETY: bounds asserted above; the caller owns rows r..r+4.
                        unsafe { $tile::<K, 4, 4>(&w, r, a, nb, t, out) };
                        t += 4;
                    }
                    while t + 2 <= te {
                        // SAFETY: as above.
                        unsafe { $tile::<K, 4, 2>(&w, r, a, nb, t, out) };
                        t += 2;
                    }
                    if t < te {
                        // SAFETY: as above.
                        unsafe { $tile::<K, 4, 1>(&w, r, a, nb, t, out) };
                    }
                    r += 4;
                }
                while r < rows.end {
                    for t in tb..te {
                        // SAFETY: as above.
                        unsafe { $tile::<K, 1, 1>(&w, r, a, nb, t, out) };
                    }
                    r += 1;
                }
                tb = te;
            }
        }
    };
}

kgemm_driver!(ktile, kgemm, dot, 2, "avx2,fma,f16c");
kgemm_driver!(
    ktile_wide,
    kgemm_wide,
    dot_vnni,
    4,
    "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"
);

/// Q3_K weights × 32-value activation blocks, on the AVX-512 build when
/// `wide`.
///
/// # Safety
/// AVX2+FMA+F16C must be present, and AVX-512F/VL/BW/VNNI when `wide`; see
/// [`super::super::gemm_q8`] for the output contract.
pub(crate) unsafe fn gemm_k(
    wide: bool,
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    acts: &[BlockQ8],
    n_tokens: usize,
    out: OutPtr,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match (w.wtype, wide) {
            (WType::Q3_K, false) => kgemm::<KQ3K>(w, rows, acts, n_tokens, out),
            (WType::Q3_K, true) => kgemm_wide::<KQ3K>(w, rows, acts, n_tokens, out),
            (t, _) => unreachable!("{t:?} is not a SIMD k-quant"),
        }
    }
}
