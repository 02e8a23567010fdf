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
//! Decode (one token) reads each row in value order with no panel: per 32 values one
//! multiply-add of bytes and one of pairs by the (broadcast) group scale, so a row's
//! super-block is one integer vector; eight rows' vectors are then reduced together.

use std::arch::x86_64::*;

use super::super::{OutPtr, RowsRef};
use super::gemm::{TOKEN_BLOCK, f16x2};
use crate::quant::{BlockQ8, QK, QK_K, WType};

/// Rows per tile: one per 32-bit lane of a 256-bit register.
const ROWS: usize = 8;

/// Activation blocks per super-block.
const SUBS: usize = QK_K / QK;

/// Eight rows of one super-block, decoded.
#[repr(C, align(32))]
struct Panel {
    /// `code[j]`, lane `r`: the codes of values `4j..4j + 4` of row `r` (unsigned; Q6_K's
    /// are 32 above the values).
    code: [__m256i; QK_K / 4],
    /// `sc[g]`, lane `r`: the integer scale of group `g` of row `r` (Q4_K/Q5_K: 0..8).
    sc: [__m256i; 16],
    /// `sc2[g]`: `sc[g]` as two equal i16 per lane, for a multiply-add of pairs.
    sc2: [__m256i; 16],
    /// `pair[k]`, lane `r`: two i16, the factors of the activation sums `2k` and `2k + 1`:
    /// Q4_K/Q5_K the mins of sub-blocks (k < 4), Q6_K the scales of groups.
    pair: [__m256i; 8],
    /// Lane `r`: row `r`'s `d`.
    d: __m256,
    /// Lane `r`: row `r`'s `-dmin` (Q4_K/Q5_K).
    ndmin: __m256,
}

/// One row's super-block header, in integers.
struct Header {
    /// Q4_K/Q5_K: bytes 0..8 the 6-bit scales, 8..16 the 6-bit mins; Q6_K: the sixteen
    /// signed scales.
    sc: __m128i,
    d: f32,
    dmin: f32,
}

/// How the rows of a k-quant super-block decode.
trait KRows {
    /// Bytes per super-block.
    const BB: usize;
    /// Values per scale: 32 (Q4_K, Q5_K) or 16 (Q6_K).
    const GROUP: usize;
    /// Whether the format has per-sub-block mins (Q4_K, Q5_K); Q6_K instead stores its
    /// codes 32 above the values.
    const HAS_M: bool;
    /// The header of the super-block at `p`.
    unsafe fn header(p: *const u8) -> Header;
    /// The transposed codes of the super-blocks at `p[0..8]` into `panel`.
    unsafe fn decode(p: &[*const u8; ROWS], panel: &mut Panel);
    /// The 32 codes of sub-block `s` of the super-block at `p`, in value order.
    unsafe fn codes(p: *const u8, s: usize) -> __m256i;
}

/// `v[r]` lane `j` → `out[j]` lane `r`: an 8 × 8 transpose of 32-bit lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn transpose8(v: [__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(v[0], v[1]);
    let t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    let t2 = _mm256_unpacklo_epi32(v[2], v[3]);
    let t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    let t4 = _mm256_unpacklo_epi32(v[4], v[5]);
    let t5 = _mm256_unpackhi_epi32(v[4], v[5]);
    let t6 = _mm256_unpacklo_epi32(v[6], v[7]);
    let t7 = _mm256_unpackhi_epi32(v[6], v[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// The 32 bytes at `p[r] + off` of each row, transposed: lane `r` of result `j` is bytes
/// `4j..4j + 4` of row `r`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_t(p: &[*const u8; ROWS], off: usize) -> [__m256i; 8] {
    let mut v = [_mm256_setzero_si256(); 8];
    for (v, p) in v.iter_mut().zip(p) {
        // SAFETY: the caller guarantees 32 readable bytes at p[r] + off.
        *v = unsafe { _mm256_loadu_si256(p.add(off).cast()) };
    }
    transpose8(v)
}

/// The Q4_K/Q5_K header at `p` (d, dmin, 12 bytes of 6-bit scales and mins).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn header_k4(p: *const u8) -> Header {
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    // SAFETY: the caller guarantees the 16 header bytes at p.
    let (d, dmin, a, b, c) = unsafe {
        let (d, dmin) = f16x2(p);
        let w = |o: usize| std::ptr::read_unaligned(p.add(o).cast::<u32>());
        (d, dmin, w(4), w(8), w(12))
    };
    // Sub-blocks 0..4 keep the low six bits of bytes 0..4 (scales) and 4..8 (mins);
    // 4..8 take the nibbles of bytes 8..12 and, as bits 4 and 5, the top two bits of
    // those same bytes 0..8.
    let sc = u64::from(a & LOW6) | (u64::from((c & LOW4) | (((a >> 6) & LOW2) << 4)) << 32);
    let mn = u64::from(b & LOW6) | (u64::from(((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4)) << 32);
    Header {
        sc: _mm_set_epi64x(mn as i64, sc as i64),
        d,
        dmin,
    }
}

/// Lane-wise `(a & 0xFFFF) | b << 16`: two i16 from the low halves of two i32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pack16(a: __m256i, b: __m256i) -> __m256i {
    _mm256_or_si256(
        _mm256_and_si256(a, _mm256_set1_epi32(0xFFFF)),
        _mm256_slli_epi32::<16>(b),
    )
}

/// The integer scales, mins and `d`, `dmin` of eight rows' super-blocks into `panel`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn panel_header<K: KRows>(p: &[*const u8; ROWS], panel: &mut Panel) {
    let mut lo = [_mm256_setzero_si256(); ROWS];
    let mut hi = [_mm256_setzero_si256(); ROWS];
    let mut d = [0.0f32; ROWS];
    let mut ndmin = [0.0f32; ROWS];
    for r in 0..ROWS {
        // SAFETY: each p[r] is a whole super-block (caller).
        let h = unsafe { K::header(p[r]) };
        d[r] = h.d;
        ndmin[r] = -h.dmin;
        let h8 = _mm_srli_si128::<8>(h.sc);
        (lo[r], hi[r]) = if K::HAS_M {
            (_mm256_cvtepu8_epi32(h.sc), _mm256_cvtepu8_epi32(h8))
        } else {
            (_mm256_cvtepi8_epi32(h.sc), _mm256_cvtepi8_epi32(h8))
        };
    }
    // Q4_K/Q5_K: lo the scales of sub-blocks 0..8, hi their mins; Q6_K: lo the scales
    // of groups 0..8, hi of groups 8..16.
    let (lo, hi) = (transpose8(lo), transpose8(hi));
    panel.sc[..8].copy_from_slice(&lo);
    if K::HAS_M {
        for k in 0..4 {
            panel.pair[k] = pack16(hi[2 * k], hi[2 * k + 1]);
        }
    } else {
        panel.sc[8..].copy_from_slice(&hi);
        for k in 0..8 {
            panel.pair[k] = pack16(panel.sc[2 * k], panel.sc[2 * k + 1]);
        }
    }
    for g in 0..QK_K / K::GROUP {
        panel.sc2[g] = pack16(panel.sc[g], panel.sc[g]);
    }
    // SAFETY: eight floats each.
    unsafe {
        panel.d = _mm256_loadu_ps(d.as_ptr());
        panel.ndmin = _mm256_loadu_ps(ndmin.as_ptr());
    }
}

/// The 32 nibbles of sub-block `s` from the 128 bytes at `qs`, in value order: 32 bytes
/// per pair of sub-blocks, low nibbles for the even one.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k4_nibbles(qs: *const u8, s: usize) -> __m256i {
    // SAFETY: the caller guarantees 128 bytes at qs.
    let q = unsafe { _mm256_loadu_si256(qs.add(32 * (s / 2)).cast()) };
    let q = if s.is_multiple_of(2) {
        q
    } else {
        _mm256_srli_epi16::<4>(q)
    };
    _mm256_and_si256(q, _mm256_set1_epi8(0x0F))
}

struct RQ4K;
struct RQ5K;
struct RQ6K;

impl KRows for RQ4K {
    const BB: usize = 144;
    const HAS_M: bool = true;
    const GROUP: usize = 32;
    #[inline(always)]
    unsafe fn header(p: *const u8) -> Header {
        // SAFETY: p is a whole super-block (caller).
        unsafe { header_k4(p) }
    }
    #[inline(always)]
    unsafe fn codes(p: *const u8, s: usize) -> __m256i {
        // SAFETY: p is a whole super-block (caller): qs at 16.
        unsafe { k4_nibbles(p.add(16), s) }
    }
    #[inline(always)]
    unsafe fn decode(p: &[*const u8; ROWS], panel: &mut Panel) {
        // SAFETY (whole body): each p[r] is a whole 144-byte super-block (caller).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            for q in 0..4 {
                // Bytes of pair q: low nibbles are sub-block 2q, high ones 2q + 1.
                let t = load_t(p, 16 + 32 * q);
                for j in 0..8 {
                    panel.code[16 * q + j] = _mm256_and_si256(t[j], m4);
                    panel.code[16 * q + 8 + j] = _mm256_and_si256(_mm256_srli_epi16::<4>(t[j]), m4);
                }
            }
        }
    }
}

impl KRows for RQ5K {
    const BB: usize = 176;
    const HAS_M: bool = true;
    const GROUP: usize = 32;
    #[inline(always)]
    unsafe fn header(p: *const u8) -> Header {
        // SAFETY: p is a whole super-block (caller).
        unsafe { header_k4(p) }
    }
    #[inline(always)]
    unsafe fn codes(p: *const u8, s: usize) -> __m256i {
        // SAFETY: p is a whole super-block (caller): qh at 16, qs at 48.
        unsafe {
            let qh = _mm256_loadu_si256(p.add(16).cast());
            let hb = _mm256_and_si256(
                _mm256_srl_epi16(qh, _mm_cvtsi32_si128(s as i32)),
                _mm256_set1_epi8(1),
            );
            _mm256_or_si256(k4_nibbles(p.add(48), s), _mm256_slli_epi16::<4>(hb))
        }
    }
    #[inline(always)]
    unsafe fn decode(p: &[*const u8; ROWS], panel: &mut Panel) {
        // SAFETY (whole body): each p[r] is a whole 176-byte super-block (caller): qh at
        // 16, qs at 48.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let one = _mm256_set1_epi8(1);
            let h = load_t(p, 16);
            for q in 0..4 {
                let t = load_t(p, 48 + 32 * q);
                for j in 0..8 {
                    for (k, nib) in [
                        _mm256_and_si256(t[j], m4),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(t[j]), m4),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let s = 2 * q + k;
                        // Bit s of each qh byte, moved to bit 4 (the masked bit cannot
                        // cross into the next byte).
                        let hb = _mm256_and_si256(
                            _mm256_srl_epi16(h[j], _mm_cvtsi32_si128(s as i32)),
                            one,
                        );
                        panel.code[8 * s + j] = _mm256_or_si256(nib, _mm256_slli_epi16::<4>(hb));
                    }
                }
            }
        }
    }
}

impl KRows for RQ6K {
    const BB: usize = 210;
    const HAS_M: bool = false;
    const GROUP: usize = 16;
    /// Scales `d · sc[g]` for the sixteen groups of 16 (scales at 192, d at 208).
    /// The sixteen signed scales at 192, d at 208.
    #[inline(always)]
    unsafe fn header(p: *const u8) -> Header {
        // SAFETY: p is a whole 210-byte super-block (caller).
        unsafe {
            let bits = i32::from(std::ptr::read_unaligned(p.add(208).cast::<u16>()));
            Header {
                sc: _mm_loadu_si128(p.add(192).cast()),
                d: _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))),
                dmin: 0.0,
            }
        }
    }
    #[inline(always)]
    unsafe fn codes(p: *const u8, s: usize) -> __m256i {
        let (n, i) = (s / 4, s % 4);
        // SAFETY: p is a whole super-block (caller): ql at 0, qh at 128.
        unsafe {
            let ql = _mm256_loadu_si256(p.add(64 * n + 32 * (i % 2)).cast());
            let ql = if i < 2 {
                ql
            } else {
                _mm256_srli_epi16::<4>(ql)
            };
            let low = _mm256_and_si256(ql, _mm256_set1_epi8(0x0F));
            let qh = _mm256_loadu_si256(p.add(128 + 32 * n).cast());
            let high = _mm256_and_si256(
                _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * i as i32)),
                _mm256_set1_epi8(3),
            );
            _mm256_or_si256(low, _mm256_slli_epi16::<4>(high))
        }
    }
    #[inline(always)]
    unsafe fn decode(p: &[*const u8; ROWS], panel: &mut Panel) {
        // SAFETY (whole body): each p[r] is a whole 210-byte super-block (caller): ql at
        // 0, qh at 128.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let m2 = _mm256_set1_epi8(3);
            for n in 0..2 {
                let ql = [load_t(p, 64 * n), load_t(p, 64 * n + 32)];
                let qh = load_t(p, 128 + 32 * n);
                for i in 0..4 {
                    let s = 4 * n + i;
                    for j in 0..8 {
                        let src = ql[i % 2][j];
                        let nib = if i < 2 {
                            _mm256_and_si256(src, m4)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16::<4>(src), m4)
                        };
                        let high = _mm256_and_si256(
                            _mm256_srl_epi16(qh[j], _mm_cvtsi32_si128(2 * i as i32)),
                            m2,
                        );
                        panel.code[8 * s + j] = _mm256_or_si256(nib, _mm256_slli_epi16::<4>(high));
                    }
                }
            }
        }
    }
}

/// One token's sums of its activations over super-block `blocks` (eight blocks), as
/// i16: Q6_K the sixteen groups of 16 values, Q4_K/Q5_K the eight sub-blocks of 32 (then
/// zeros). Each is at most 32 · 127 in magnitude.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn act_sums<K: KRows>(blocks: *const BlockQ8) -> [i16; 16] {
    let mut y = [_mm256_setzero_si256(); 8];
    for (s, ys) in y.iter_mut().enumerate() {
        // SAFETY: the caller guarantees 8 blocks at `blocks`.
        let a = unsafe { _mm256_loadu_si256((*blocks.add(s)).qs.as_ptr().cast()) };
        // Lanes 0..4: four-value sums of group 2s; lanes 4..8: of group 2s + 1.
        *ys = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_set1_epi8(1), a),
            _mm256_set1_epi16(1),
        );
    }
    // [g0 g2 g4 g6 | g1 g3 g5 g7] and the same for groups 8..16.
    let k = [
        _mm256_hadd_epi32(_mm256_hadd_epi32(y[0], y[1]), _mm256_hadd_epi32(y[2], y[3])),
        _mm256_hadd_epi32(_mm256_hadd_epi32(y[4], y[5]), _mm256_hadd_epi32(y[6], y[7])),
    ];
    let mut raw = [0i32; 16];
    for (i, k) in k.into_iter().enumerate() {
        // SAFETY: raw holds 16 i32.
        unsafe { _mm256_storeu_si256(raw.as_mut_ptr().add(8 * i).cast(), k) };
    }
    let group = |g: usize| raw[(g / 8) * 8 + (g % 2) * 4 + (g % 8) / 2];
    let mut out = [0i16; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = if K::GROUP == 16 {
            group(i) as i16
        } else if i < SUBS {
            (group(2 * i) + group(2 * i + 1)) as i16
        } else {
            0
        };
    }
    out
}

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

        /// Rows `r0..r0 + nr` (nr ≤ 8) × one token (its activation blocks at `acts`, its
        /// sums per super-block in `sums`) into `out[0..nr]`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $dtile<K: KRows>(
            w: &RowsRef<'_>,
            (r0, nr): (usize, usize),
            acts: *const BlockQ8,
            sums: &[[i16; 16]],
            out: *mut f32,
        ) {
            let base = w.data.as_ptr();
            // Rows past the range repeat row r0: computed, never stored.
            let rowp: [*const u8; ROWS] = std::array::from_fn(|r| {
                base.wrapping_add((r0 + if r < nr { r } else { 0 }) * w.row_bytes)
            });
            let mut acc = _mm256_setzero_ps();
            for (sb, bs) in sums.iter().enumerate() {
                let p = rowp.map(|p| p.wrapping_add(sb * K::BB));
                // The same super-block of the next tile's rows: a hint, never a fault,
                // even past the end of the data (the hardware prefetcher alone does not
                // keep eight row streams ahead; see gemm's PREFETCH_BYTES).
                for q in p {
                    let mut l = 0;
                    while l < K::BB {
                        _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(ROWS * w.row_bytes + l).cast());
                        l += 64;
                    }
                }
                let blocks = acts.wrapping_add(sb * SUBS);
                let mut a = [_mm256_setzero_si256(); SUBS];
                for (s, a) in a.iter_mut().enumerate() {
                    // SAFETY: the token's 8 blocks of super-block sb are in `acts`.
                    *a = unsafe { _mm256_loadu_si256((*blocks.add(s)).qs.as_ptr().cast()) };
                }
                let mut v = [_mm256_setzero_si256(); ROWS];
                let mut d = [0.0f32; ROWS];
                let mut ndmin = [0.0f32; ROWS];
                for r in 0..ROWS {
                    // SAFETY: each row's super-block sb lies inside w.data (driver bounds).
                    let h = unsafe { K::header(p[r]) };
                    d[r] = h.d;
                    ndmin[r] = -h.dmin;
                    let mut x = _mm256_setzero_si256();
                    if K::HAS_M {
                        // Every i16 of `sc` selects scale s: bytes 2s, 2s + 1.
                        let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(h.sc));
                        for s in 0..SUBS {
                            let pick = _mm256_set1_epi16((0x0100 + 0x0202 * s) as i16);
                            // SAFETY: as for the header.
                            let c = unsafe { K::codes(p[r], s) };
                            x = $sdot(x, c, a[s], _mm256_shuffle_epi8(sc, pick));
                        }
                        // SAFETY: bs holds 16 i16 (the first 8 are the sub-block sums).
                        let bs = unsafe { _mm_loadu_si128(bs.as_ptr().cast()) };
                        let mins = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_srli_si128::<8>(h.sc)), bs);
                        let x4 = _mm_add_epi32(
                            _mm256_castsi256_si128(x),
                            _mm256_extracti128_si256::<1>(x),
                        );
                        // [four partial sums of isum | four of imin]
                        v[r] = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(x4), mins);
                    } else {
                        // i16 g of `sc` is group g's scale; sub-block s covers groups 2s
                        // (its low 16 values, the low 128 bits) and 2s + 1.
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
                            let c = unsafe { K::codes(p[r], s) };
                            x = $sdot(x, c, a[s], _mm256_shuffle_epi8(halves[s / 4], pick));
                        }
                        // The codes are 32 above the values: minus 32 · Σ_g sc[g] · Σ_g a.
                        // SAFETY: bs holds 16 i16.
                        let bs = unsafe { _mm256_loadu_si256(bs.as_ptr().cast()) };
                        let corr = _mm256_madd_epi16(sc, bs);
                        v[r] = _mm256_sub_epi32(x, _mm256_slli_epi32::<5>(corr));
                    }
                }
                // [r0 r1 r2 r3 | r0 r1 r2 r3] partial sums, and the same for rows 4..8.
                let h0 =
                    _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
                let h1 =
                    _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
                let lo = _mm256_permute2x128_si256::<0x20>(h0, h1);
                let hi = _mm256_permute2x128_si256::<0x31>(h0, h1);
                // SAFETY: every block of a super-block holds its scale; d, ndmin hold 8.
                let (da, d, ndmin) = unsafe {
                    (
                        _mm256_set1_ps((*blocks).d),
                        _mm256_loadu_ps(d.as_ptr()),
                        _mm256_loadu_ps(ndmin.as_ptr()),
                    )
                };
                if K::HAS_M {
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), _mm256_mul_ps(d, da), acc);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), _mm256_mul_ps(ndmin, da), acc);
                } else {
                    let isum = _mm256_add_epi32(lo, hi);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, da), acc);
                }
            }
            let mut v = [0.0f32; ROWS];
            // SAFETY: v holds 8 floats.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), acc) };
            for (r, v) in v.iter().enumerate().take(nr) {
                // SAFETY: the driver's caller owns (t, r0 + r) for r < nr.
                unsafe { *out.add(r) = *v };
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
                let mut r = rows.start;
                while r < rows.end {
                    let nr = (rows.end - r).min(ROWS);
                    // SAFETY: bounds asserted above; the caller owns these rows of `out`.
                    unsafe { $dtile::<K>(&w, (r, nr), a, &sums, out.ptr.add(r)) };
                    r += nr;
                }
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
                    let base = w.data.as_ptr();
                    // Rows past the range repeat row r: computed, never stored.
                    let rowp: [*const u8; ROWS] = std::array::from_fn(|i| {
                        base.wrapping_add((r + if i < nr { i } else { 0 }) * w.row_bytes)
                    });
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
