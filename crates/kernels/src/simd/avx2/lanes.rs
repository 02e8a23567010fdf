//! Small register steps shared by the kernels that keep one weight row per 32-bit lane:
//! an 8 × 8 transpose, exact four-value u8 × i8 dot products (AVX2 and VNNI), and
//! exact pairwise sums across lanes.

use std::arch::x86_64::*;

/// `v[r]` lane `j` → `out[j]` lane `r`: an 8 × 8 transpose of 32-bit lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn transpose8(v: [__m256i; 8]) -> [__m256i; 8] {
    let t: [__m256i; 8] = std::array::from_fn(|i| {
        let (a, b) = (
            v[4 * (i / 4) + 2 * ((i / 2) % 2)],
            v[4 * (i / 4) + 2 * ((i / 2) % 2) + 1],
        );
        if i % 2 == 0 {
            _mm256_unpacklo_epi32(a, b)
        } else {
            _mm256_unpackhi_epi32(a, b)
        }
    });
    // t[0..4] = rows 0..4 (lo01, hi01, lo23, hi23), t[4..8] the same for rows 4..8.
    let u: [__m256i; 8] = std::array::from_fn(|i| {
        let h = 4 * (i / 4);
        let (a, b) = (t[h + (i % 4) / 2], t[h + 2 + (i % 4) / 2]);
        if i % 2 == 0 {
            _mm256_unpacklo_epi64(a, b)
        } else {
            _mm256_unpackhi_epi64(a, b)
        }
    });
    // u[0..4]: values 0,1,2,3 of rows 0..4 (per 128-bit half); u[4..8] of rows 4..8.
    std::array::from_fn(|j| {
        if j < 4 {
            _mm256_permute2x128_si256::<0x20>(u[j], u[j + 4])
        } else {
            _mm256_permute2x128_si256::<0x31>(u[j - 4], u[j])
        }
    })
}

/// `acc` plus lane-wise four-value dot products of unsigned codes `w` with signed `a`
/// (maddubs, then pairs of i16 to i32): exact for codes up to 128, whose products with
/// |a| ≤ 127, summed in pairs, fit an i16.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn dot_u(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1));
    _mm256_add_epi32(acc, p)
}

/// As [`dot_u`] in one AVX-512 VNNI instruction (the same integers).
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
pub(super) fn dot_u_vnni(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, w, a)
}

/// Lane-wise pair sums `[a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, …]` (`_mm256_hadd_epi32`'s
/// layout); for lanes that fit an i16 (`SMALL`), a saturating pack and a multiply-add of
/// pairs by one give the same integers with fewer shuffles.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn pair_sums<const SMALL: bool>(a: __m256i, b: __m256i) -> __m256i {
    if SMALL {
        _mm256_madd_epi16(_mm256_packs_epi32(a, b), _mm256_set1_epi16(1))
    } else {
        _mm256_hadd_epi32(a, b)
    }
}

/// `acc + x · m` in one rounding, as the vector tiles' `fmadd` lane does.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn fma1(x: i32, m: f32, acc: __m128) -> __m128 {
    _mm_fmadd_ss(_mm_cvtsi32_ss(_mm_setzero_ps(), x), _mm_set_ss(m), acc)
}

/// The sum of four i32 lanes (exact).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum4(v: __m128i) -> i32 {
    let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
    let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
    _mm_cvtsi128_si32(v)
}
