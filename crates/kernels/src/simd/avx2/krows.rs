//! The Q4_K, Q5_K and Q6_K products against super-block activations (eight 32-value
//! blocks sharing one scale `da`, see [`crate::quant::quantize_row_for`]), in integers up
//! to one float step per super-block, row and token:
//!
//! ```text
//! isum = Σ_g sc[g] · Σ_{i in g} code[i] · a[i]     (Q6_K: minus 32 · Σ_g sc[g] · Σ_g a)
//! imin = Σ_s min[s] · Σ_{i in s} a[i]              (Q4_K/Q5_K)
//! acc  = fma(isum, d · da, acc);  acc = fma(imin, -dmin · da, acc)
//! ```
//!
//! with the integer 6-bit (Q6_K: 8-bit signed) scales of
//! [`crate::quant::layout::k_scales`]; the sums of the activations over each group (16
//! values) or sub-block (32) are formed once per token and super-block, before any row.
//! The portable reference ([`crate::simd::portable`]) forms the same integers (exact, so
//! the order does not matter) and takes the same float steps, so a token's result has
//! the same bits alone, batched, or on any path.
//!
//! Prefill (two tokens or more) puts eight weight rows in the eight 32-bit lanes: each
//! super-block of the eight rows is decoded once per block of up to 64 tokens into a
//! panel on the stack (codes transposed so that register `j` holds values `4j..4j + 4`
//! of every row, the integer scales as one vector per group), and every token of the
//! block streams through it, its accumulators kept in memory between super-blocks. One
//! integer dot product instruction then advances eight rows by four values; VNNI's
//! `vpdpbusd` sums a group and one `vpmulld` scales it, the AVX2 build scales inside its
//! multiply-add of pairs.
//!
//! Decode (one token) reads each row front to back, alone, with no panel: per 32 values
//! one multiply-add of bytes and one of pairs by the (broadcast) group scale, so a row's
//! super-block is one integer vector, reduced before its float steps. One stream per
//! thread is what the hardware prefetcher follows: eight rows read side by side (one
//! per lane) ran at half the memory bandwidth on a Zen 4.

use std::arch::x86_64::*;

use super::super::{OutPtr, RowsRef};
use super::gemm::{DECODE_AHEAD, row_ptrs};
use super::lanes::{fma1, hsum4};
/// Tokens per block of the prefill loop: each 8-row panel (codes and headers of one
/// super-block) is decoded once per block, so a longer block spends less on decoding;
/// 128 tokens of activations (1.1 MiB at 8960 columns) still stay in L2 while the
/// panels stream past them.
const TOKEN_BLOCK: usize = 128;
use crate::quant::{BlockQ8, QK, QK_K, WType};

mod blocks;
mod tiles;

pub(crate) use tiles::gemm_k_amx;

use blocks::{Header, KRows, Panel, ROWS, RQ4K, RQ5K, RQ6K, SUBS, act_sums, panel_header};

/// The AVX2 build's scaled dot product: `acc` plus lane-wise `sc2 ·` (four-value dot
/// products of u8 codes and i8 activations): maddubs, then pairs of i16 times the
/// scale. Exact: codes below 64 times |a| ≤ 127, in pairs, fit an i16, and times a
/// scale of |sc| ≤ 128, in pairs, an i32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_scaled(acc: __m256i, w: __m256i, a: __m256i, sc2: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), sc2))
}

/// The AVX2 build's end of a group: its sum is already scaled.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn fold_scaled(tot: __m256i, isum: __m256i, _sc: __m256i) -> __m256i {
    _mm256_add_epi32(tot, isum)
}

/// The VNNI build's dot product: the group's plain sum (scaled at its end).
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn dot_vnni(acc: __m256i, w: __m256i, a: __m256i, _sc2: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, w, a)
}

/// The VNNI build's end of a group: `tot + isum · sc`.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn fold_vnni(tot: __m256i, isum: __m256i, sc: __m256i) -> __m256i {
    _mm256_add_epi32(tot, _mm256_mullo_epi32(isum, sc))
}

/// The AVX2 build's decode step: `acc` plus the products of 32 codes and activations,
/// pairs summed to i16 (exact, as in [`dot_scaled`]) and those times the per-lane i16
/// scales `sc` in pairs.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn sdot(acc: __m256i, w: __m256i, a: __m256i, sc: __m256i) -> __m256i {
    dot_scaled(acc, w, a, sc)
}

/// As [`sdot`], the pairs' multiply-add in one VNNI instruction (the same integers).
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn sdot_vnni(acc: __m256i, w: __m256i, a: __m256i, sc: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(w, a), sc)
}

/// Defines the prefill tile `$tile`, the decode tile `$dtile` and the driver `$gemm`
/// for `$features`: prefill dot products from `$dot`, folded per group by `$fold`, up to
/// `$rn` tokens per tile; decode steps from `$sdot`.
macro_rules! krows_driver {
    (
        $tile:ident, $dtile:ident, $gemm:ident, $dot:ident, $fold:ident, $sdot:ident,
        $rn:literal, $features:literal
    ) => {
        /// Tokens `blocks[..RN]` (each at its super-block's first activation block, with
        /// its activation sums at `sums`) through the panel, into `acc`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $tile<K: KRows, const RN: usize>(
            panel: &Panel,
            blocks: [*const BlockQ8; RN],
            sums: [&[i16; 16]; RN],
            acc: &mut [__m256; RN],
        ) {
            let per = K::GROUP / 4;
            let mut tot = [_mm256_setzero_si256(); RN];
            for g in 0..QK_K / K::GROUP {
                let (b, off) = (g * K::GROUP / QK, g * K::GROUP % QK);
                let mut isum = [_mm256_setzero_si256(); RN];
                for j in 0..per {
                    let wv = panel.code[g * per + j];
                    for t in 0..RN {
                        // SAFETY: block b of token t holds 32 bytes; off + 4j + 4 ≤ 32.
                        let a = unsafe {
                            let q = (*blocks[t].add(b)).qs.as_ptr().add(off + 4 * j);
                            _mm256_set1_epi32(std::ptr::read_unaligned(q.cast::<i32>()))
                        };
                        isum[t] = $dot(isum[t], wv, a, panel.sc2[g]);
                    }
                }
                for t in 0..RN {
                    tot[t] = $fold(tot[t], isum[t], panel.sc[g]);
                }
            }
            let npairs = if K::HAS_M { 4 } else { 8 };
            for t in 0..RN {
                let mut m = _mm256_setzero_si256();
                for k in 0..npairs {
                    let s = i32::from(sums[t][2 * k] as u16) | i32::from(sums[t][2 * k + 1]) << 16;
                    m = _mm256_add_epi32(m, _mm256_madd_epi16(panel.pair[k], _mm256_set1_epi32(s)));
                }
                // SAFETY: as above; every block of a super-block holds its scale.
                let da = _mm256_set1_ps(unsafe { (*blocks[t]).d });
                if K::HAS_M {
                    let x = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(tot[t]),
                        _mm256_mul_ps(panel.d, da),
                        acc[t],
                    );
                    acc[t] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(m), _mm256_mul_ps(panel.ndmin, da), x);
                } else {
                    let isum = _mm256_sub_epi32(tot[t], _mm256_slli_epi32::<5>(m));
                    acc[t] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(isum),
                        _mm256_mul_ps(panel.d, da),
                        acc[t],
                    );
                }
            }
        }

        /// Rows `r0..r0 + nr` × one token (its activation blocks at `acts`, its sums per
        /// super-block in `sums`) into `out[0..nr]`, each row read front to back.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $dtile<K: KRows>(
            w: &RowsRef<'_>,
            (r0, nr): (usize, usize),
            acts: *const BlockQ8,
            sums: &[[i16; 16]],
            out: *mut f32,
        ) {
            /// One row's super-block at `p` (its header `h`) against the token's eight blocks
            /// at `blocks` (their sums `bs`): lanes 0..4 partial sums of `isum`, lanes 4..8
            /// of `imin` (Q4_K/Q5_K), or eight partial sums of the whole (Q6_K, its offset
            /// of 32 taken off); with the build's scaled dot product.
            ///
            /// # Safety
            /// AVX2+FMA+F16C must be present (the build's features); `p` is a whole super-block and
            /// `blocks` eight activation blocks.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn row_sums_k<K: KRows>(
                p: *const u8,
                h: &Header,
                blocks: *const BlockQ8,
                bs: &[i16; 16],
            ) -> __m256i {
                // SAFETY: the caller guarantees eight blocks.
                let a =
                    |s: usize| unsafe { _mm256_loadu_si256((*blocks.add(s)).qs.as_ptr().cast()) };
                let mut x = _mm256_setzero_si256();
                if K::HAS_M {
                    // Every i16 of `sc` selects scale s: bytes 2s, 2s + 1.
                    let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(h.sc));
                    for s in 0..SUBS {
                        let pick = _mm256_set1_epi16((0x0100 + 0x0202 * s) as i16);
                        // SAFETY: as for the header.
                        let c = unsafe { K::codes(p, s) };
                        x = $sdot(x, c, a(s), _mm256_shuffle_epi8(sc, pick));
                    }
                    // SAFETY: bs holds 16 i16 (the first 8 are the sub-block sums).
                    let bs = unsafe { _mm_loadu_si128(bs.as_ptr().cast()) };
                    let mins = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_srli_si128::<8>(h.sc)), bs);
                    let x4 =
                        _mm_add_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256::<1>(x));
                    // [four partial sums of isum | four of imin]
                    _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(x4), mins)
                } else {
                    // i16 g of `sc` is group g's scale; sub-block s covers groups 2s (its low 16
                    // values, the low 128 bits) and 2s + 1.
                    let sc = _mm256_cvtepi8_epi16(h.sc);
                    let halves = [
                        _mm256_permute4x64_epi64::<0x44>(sc),
                        _mm256_permute4x64_epi64::<0xEE>(sc),
                    ];
                    for s in 0..SUBS {
                        let i = (s % 4) as i16;
                        let pick = _mm256_setr_m128i(
                            _mm_set1_epi16(0x0100 + 0x0404 * i),
                            _mm_set1_epi16(0x0302 + 0x0404 * i),
                        );
                        // SAFETY: as for the header.
                        let c = unsafe { K::codes(p, s) };
                        x = $sdot(x, c, a(s), _mm256_shuffle_epi8(halves[s / 4], pick));
                    }
                    // The codes are 32 above the values: minus 32 · Σ_g sc[g] · Σ_g a.
                    // SAFETY: bs holds 16 i16.
                    let bs = unsafe { _mm256_loadu_si256(bs.as_ptr().cast()) };
                    let corr = _mm256_madd_epi16(sc, bs);
                    _mm256_sub_epi32(x, _mm256_slli_epi32::<5>(corr))
                }
            }

            let base = w.data.as_ptr();
            for r in 0..nr {
                let row = base.wrapping_add((r0 + r) * w.row_bytes);
                let mut acc = _mm_setzero_ps();
                for (sb, bs) in sums.iter().enumerate() {
                    let p = row.wrapping_add(sb * K::BB);
                    // Further along the row: a hint, never a fault, even past the end of
                    // the data (the hardware prefetcher does not cross a page).
                    let mut l = 0;
                    while l < K::BB {
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(DECODE_AHEAD + l).cast());
                        l += 64;
                    }
                    let blocks = acts.wrapping_add(sb * SUBS);
                    // SAFETY: the row's super-block sb lies inside w.data (driver bounds)
                    // and the token's 8 blocks of it are in `acts`.
                    let h = unsafe { K::header(p) };
                    // SAFETY: as above.
                    let v = unsafe { row_sums_k::<K>(p, &h, blocks, bs) };
                    // SAFETY: every block of a super-block holds its scale.
                    let da = unsafe { (*blocks).d };
                    // The exact integer sums (lanes 0..4 and 4..8), then the float steps.
                    let lo = _mm256_castsi256_si128(v);
                    let hi = _mm256_extracti128_si256::<1>(v);
                    if K::HAS_M {
                        acc = fma1(hsum4(lo), h.d * da, acc);
                        acc = fma1(hsum4(hi), -h.dmin * da, acc);
                    } else {
                        acc = fma1(hsum4(_mm_add_epi32(lo, hi)), h.d * da, acc);
                    }
                }
                // SAFETY: the driver's caller owns (t, r0 + r) for r < nr.
                unsafe { *out.add(r) = _mm_cvtss_f32(acc) };
            }
        }

        #[target_feature(enable = $features)]
        unsafe fn $gemm<K: KRows>(
            w: RowsRef<'_>,
            rows: std::ops::Range<usize>,
            acts: &[BlockQ8],
            n_tokens: usize,
            out: OutPtr,
        ) {
            let nb = w.cols / QK;
            let nsb = nb / SUBS;
            assert!(w.cols.is_multiple_of(QK_K), "gemm: partial super-block");
            assert!(acts.len() >= n_tokens * nb, "gemm: activations too short");
            assert!(
                rows.end * w.row_bytes <= w.data.len(),
                "gemm: rows out of range"
            );
            let a = acts.as_ptr();
            let mut sums = vec![[0i16; 16]; n_tokens.min(TOKEN_BLOCK) * nsb];
            if n_tokens == 1 {
                for (sb, s) in sums.iter_mut().enumerate() {
                    // SAFETY: the token's blocks are in `acts` (asserted above).
                    *s = unsafe { act_sums::<K>(a.add(sb * SUBS)) };
                }
                // SAFETY: bounds asserted above; the caller owns these rows of `out`.
                unsafe {
                    $dtile::<K>(
                        &w,
                        (rows.start, rows.len()),
                        a,
                        &sums,
                        out.ptr.add(rows.start),
                    )
                };
                return;
            }
            // SAFETY: every field is written (decode, panel_header) before it is read.
            let mut panel: Panel = unsafe { std::mem::zeroed() };
            let mut acc = [_mm256_setzero_ps(); TOKEN_BLOCK];
            let mut tb = 0;
            while tb < n_tokens {
                let n = (n_tokens - tb).min(TOKEN_BLOCK);
                for t in 0..n {
                    for sb in 0..nsb {
                        // SAFETY: token tb + t's blocks are in `acts` (asserted above).
                        sums[t * nsb + sb] =
                            unsafe { act_sums::<K>(a.add((tb + t) * nb + sb * SUBS)) };
                    }
                }
                let mut r = rows.start;
                while r < rows.end {
                    let nr = (rows.end - r).min(ROWS);
                    let rowp: [*const u8; ROWS] = row_ptrs(&w, r, nr);
                    acc[..n].fill(_mm256_setzero_ps());
                    for sb in 0..nsb {
                        let p = rowp.map(|p| p.wrapping_add(sb * K::BB));
                        for q in p {
                            let mut l = 0;
                            while l < K::BB {
                                // The next tile's rows: a hint, never a fault.
                                _mm_prefetch::<_MM_HINT_T0>(
                                    q.wrapping_add(ROWS * w.row_bytes + l).cast(),
                                );
                                l += 64;
                            }
                        }
                        // SAFETY: each row's super-block sb lies inside w.data (bounds
                        // asserted above).
                        unsafe {
                            K::decode(&p, &mut panel);
                            panel_header::<K>(&p, &mut panel);
                        }
                        let blk = |t: usize| a.wrapping_add((tb + t) * nb + sb * SUBS);
                        let sum = |t: usize| &sums[t * nsb + sb];
                        let mut t = 0;
                        // SAFETY (each tile): the tokens' blocks are in `acts`.
                        unsafe {
                            while t + $rn <= n {
                                let acc = acc[t..].first_chunk_mut::<$rn>().unwrap();
                                let (bl, su) = (
                                    std::array::from_fn(|i| blk(t + i)),
                                    std::array::from_fn(|i| sum(t + i)),
                                );
                                $tile::<K, $rn>(&panel, bl, su, acc);
                                t += $rn;
                            }
                            if $rn > 4 && t + 4 <= n {
                                let acc = acc[t..].first_chunk_mut::<4>().unwrap();
                                let (bl, su) = (
                                    std::array::from_fn(|i| blk(t + i)),
                                    std::array::from_fn(|i| sum(t + i)),
                                );
                                $tile::<K, 4>(&panel, bl, su, acc);
                                t += 4;
                            }
                            if t + 2 <= n {
                                let acc = acc[t..].first_chunk_mut::<2>().unwrap();
                                $tile::<K, 2>(
                                    &panel,
                                    [blk(t), blk(t + 1)],
                                    [sum(t), sum(t + 1)],
                                    acc,
                                );
                                t += 2;
                            }
                            if t < n {
                                let acc = acc[t..].first_chunk_mut::<1>().unwrap();
                                $tile::<K, 1>(&panel, [blk(t)], [sum(t)], acc);
                            }
                        }
                    }
                    for (t, acc) in acc[..n].iter().enumerate() {
                        let o = out.ptr.wrapping_add((tb + t) * out.ld + r);
                        let mut v = [0.0f32; ROWS];
                        // SAFETY: v holds 8 floats.
                        unsafe { _mm256_storeu_ps(v.as_mut_ptr(), *acc) };
                        for (i, v) in v.iter().enumerate().take(nr) {
                            // SAFETY: the caller owns (tb + t, r + i) of `out` for i < nr.
                            unsafe { *o.add(i) = *v };
                        }
                    }
                    r += nr;
                }
                tb += n;
            }
        }
    };
}

krows_driver!(
    rtile,
    rdtile,
    rgemm,
    dot_scaled,
    fold_scaled,
    sdot,
    4,
    "avx2,fma,f16c"
);
krows_driver!(
    rtile_wide,
    rdtile_wide,
    rgemm_wide,
    dot_vnni,
    fold_vnni,
    sdot_vnni,
    8,
    "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"
);

/// Q4_K, Q5_K or Q6_K weights × super-block activations (one scale per 256 values), on
/// the AVX-512 build when `wide`.
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
            (WType::Q4_K, false) => rgemm::<RQ4K>(w, rows, acts, n_tokens, out),
            (WType::Q5_K, false) => rgemm::<RQ5K>(w, rows, acts, n_tokens, out),
            (WType::Q6_K, false) => rgemm::<RQ6K>(w, rows, acts, n_tokens, out),
            (WType::Q4_K, true) => rgemm_wide::<RQ4K>(w, rows, acts, n_tokens, out),
            (WType::Q5_K, true) => rgemm_wide::<RQ5K>(w, rows, acts, n_tokens, out),
            (WType::Q6_K, true) => rgemm_wide::<RQ6K>(w, rows, acts, n_tokens, out),
            (t, _) => unreachable!("{t:?} takes another k-quant kernel"),
        }
    }
}
