//! How eight rows of a Q4_K, Q5_K or Q6_K super-block decode for the row kernels: the
//! transposed panel of prefill, each row's integer header, and a token's activation sums.

use std::arch::x86_64::*;

use super::super::gemm::f16x2;
use super::super::lanes::transpose8;
use crate::quant::{BlockQ8, QK, QK_K};

/// Rows per tile: one per 32-bit lane of a 256-bit register.
pub(super) const ROWS: usize = 8;

/// Activation blocks per super-block.
pub(super) const SUBS: usize = QK_K / QK;

/// Eight rows of one super-block, decoded.
#[repr(C, align(32))]
pub(super) struct Panel {
    /// `code[j]`, lane `r`: the codes of values `4j..4j + 4` of row `r` (unsigned; Q6_K's
    /// are 32 above the values).
    pub(super) code: [__m256i; QK_K / 4],
    /// `sc[g]`, lane `r`: the integer scale of group `g` of row `r` (Q4_K/Q5_K: 0..8).
    pub(super) sc: [__m256i; 16],
    /// `sc2[g]`: `sc[g]` as two equal i16 per lane, for a multiply-add of pairs.
    pub(super) sc2: [__m256i; 16],
    /// `pair[k]`, lane `r`: two i16, the factors of the activation sums `2k` and `2k + 1`:
    /// Q4_K/Q5_K the mins of sub-blocks (k < 4), Q6_K the scales of groups.
    pub(super) pair: [__m256i; 8],
    /// Lane `r`: row `r`'s `d`.
    pub(super) d: __m256,
    /// Lane `r`: row `r`'s `-dmin` (Q4_K/Q5_K).
    pub(super) ndmin: __m256,
}

/// One row's super-block header, in integers.
pub(super) struct Header {
    /// Q4_K/Q5_K: bytes 0..8 the 6-bit scales, 8..16 the 6-bit mins; Q6_K: the sixteen
    /// signed scales.
    pub(super) sc: __m128i,
    pub(super) d: f32,
    pub(super) dmin: f32,
}

/// How the rows of a k-quant super-block decode.
pub(super) trait KRows {
    /// Bytes per super-block.
    const BB: usize;
    /// Values per scale: 32 (Q4_K, Q5_K) or 16 (Q6_K).
    const GROUP: usize;
    /// Whether the format has per-sub-block mins (Q4_K, Q5_K); Q6_K instead stores its
    /// codes 32 above the values.
    const HAS_M: bool;
    /// The header of the super-block at `p` (Q4_K's layout unless overridden).
    #[inline(always)]
    unsafe fn header(p: *const u8) -> Header {
        // SAFETY: p is a whole super-block (caller).
        unsafe { header_k4(p) }
    }
    /// The transposed codes of the super-blocks at `p[0..8]` into `panel`.
    unsafe fn decode(p: &[*const u8; ROWS], panel: &mut Panel);
    /// The 32 codes of sub-block `s` of the super-block at `p`, in value order.
    unsafe fn codes(p: *const u8, s: usize) -> __m256i;
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

/// The headers of the super-blocks at `p[0..8]`, with their `d` and `-dmin` gathered
/// one row to a lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn headers<K: KRows>(p: &[*const u8; ROWS]) -> ([Header; ROWS], __m256, __m256) {
    // SAFETY: each p[r] is a whole super-block (caller).
    let h: [Header; ROWS] = std::array::from_fn(|r| unsafe { K::header(p[r]) });
    let d: [f32; ROWS] = std::array::from_fn(|r| h[r].d);
    let ndmin: [f32; ROWS] = std::array::from_fn(|r| -h[r].dmin);
    // SAFETY: eight floats each.
    let (d, ndmin) = unsafe { (_mm256_loadu_ps(d.as_ptr()), _mm256_loadu_ps(ndmin.as_ptr())) };
    (h, d, ndmin)
}

/// The integer scales, mins and `d`, `dmin` of eight rows' super-blocks into `panel`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn panel_header<K: KRows>(p: &[*const u8; ROWS], panel: &mut Panel) {
    let mut lo = [_mm256_setzero_si256(); ROWS];
    let mut hi = [_mm256_setzero_si256(); ROWS];
    // SAFETY: forwarded (caller).
    let (h, d, ndmin) = unsafe { headers::<K>(p) };
    for (r, h) in h.iter().enumerate() {
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
    panel.d = d;
    panel.ndmin = ndmin;
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

pub(super) struct RQ4K;
pub(super) struct RQ5K;
pub(super) struct RQ6K;

impl KRows for RQ4K {
    const BB: usize = 144;
    const HAS_M: bool = true;
    const GROUP: usize = 32;
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
pub(super) unsafe fn act_sums<K: KRows>(blocks: *const BlockQ8) -> [i16; 16] {
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
