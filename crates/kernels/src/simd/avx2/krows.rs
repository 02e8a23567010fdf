//! The Q4_K, Q5_K and Q6_K product with rows in the vector lanes: eight weight rows at a
//! time, each 32-bit lane one row, so one integer dot product instruction advances eight
//! rows by four values and a sub-block's sums come out exact, one row to a lane, with no
//! horizontal adds.
//!
//! For each super-block the eight rows are decoded once into a panel on the stack: their
//! codes transposed so that register `j` holds values `4j..4j + 4` of every row, and
//! their group scales (and Q4_K/Q5_K offsets) as one vector per group. Every token of a
//! tile then streams through that panel: per group, the exact integer dot product
//! `isum = Σ code · a` (Q6_K's `-32` folded in as `-32 · Σ a`, which is the same for
//! every row), then one float step per group:
//!
//! ```text
//! acc = fma(isum, scale_g · d_b, acc)       d_b: the activation block's scale
//! acc = fma(offset_g, s_b, acc)             Q4_K/Q5_K only, s_b = d_b · Σ a
//! ```
//!
//! Groups are 32 values for Q4_K/Q5_K (one scale and offset per sub-block) and 16 for
//! Q6_K. The portable reference ([`crate::simd::portable`]) takes the same integer sums
//! and the same float steps in the same order, and every tile width runs the same
//! per-token code, so a token's result has the same bits alone, batched, or on any path.
//!
//! Measured on a Xeon (AVX-512 VNNI), 2 threads, qwen2.5-coder-1.5b Q4_K_M prefill of
//! 512 tokens: this kernel against the earlier one (values in the lanes, four tokens per
//! tile, one float convert and multiply-add per 32 values per row and token): see the
//! commit that introduced it.

use std::arch::x86_64::*;

use super::super::{OutPtr, RowsRef};
use super::gemm::{TOKEN_BLOCK, f16x2};
use crate::quant::{BlockQ8, QK, QK_K, WType};

/// Rows per tile: one per 32-bit lane of a 256-bit register.
const ROWS: usize = 8;

/// Eight rows of one super-block, decoded.
#[repr(C, align(32))]
struct Panel {
    /// `code[j]`, lane `r`: the codes of values `4j..4j + 4` of row `r` (unsigned).
    code: [__m256i; QK_K / 4],
    /// The scale of each group, lane `r` for row `r` (Q4_K/Q5_K: groups of 32 use 0..8).
    scale: [__m256; 16],
    /// Q4_K/Q5_K: the offset of each sub-block, lane `r` for row `r`.
    min: [__m256; 8],
}

/// How eight rows of a k-quant super-block decode into a [`Panel`].
trait KRows {
    /// Bytes per super-block.
    const BB: usize;
    /// Values per scale: 32 (Q4_K, Q5_K) or 16 (Q6_K).
    const GROUP: usize;
    /// Whether the format has per-group offsets.
    const HAS_M: bool;
    /// Whether codes are stored 32 above the values (Q6_K).
    const OFFSET32: bool;
    /// Bits per code (codes are below `1 << CODE_BITS`).
    const CODE_BITS: u32;
    /// The scales (and offsets) of the super-blocks at `p[0..8]` into `panel`.
    unsafe fn header(p: &[*const u8; ROWS], panel: &mut Panel);
    /// The scales and the transposed codes of the super-blocks at `p[0..8]` into `panel`.
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

/// Floats `h..h + 8` of eight rows' headers, transposed: lane `r` of result `j` is
/// `f[r][h + j]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn transpose8_ps(f: &[[f32; 16]; ROWS], h: usize) -> [__m256; 8] {
    let mut v = [_mm256_setzero_si256(); 8];
    for (v, r) in v.iter_mut().zip(f) {
        // SAFETY: each row holds 16 floats and h ≤ 8.
        *v = _mm256_castps_si256(unsafe { _mm256_loadu_ps(r.as_ptr().add(h)) });
    }
    let t = transpose8(v);
    let mut out = [_mm256_setzero_ps(); 8];
    for (o, t) in out.iter_mut().zip(t) {
        *o = _mm256_castsi256_ps(t);
    }
    out
}

/// The Q4_K/Q5_K header at `p` (d, dmin, 12 bytes of 6-bit scales and mins): floats
/// 0..8 are `d · scale[s]`, 8..16 are `-dmin · min[s]` (the products
/// [`crate::quant::layout::decode_k`] forms).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn header_k4_row(p: *const u8) -> [f32; 16] {
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
    let sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64)));
    let mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mn as i64)));
    let mut h = [0.0f32; 16];
    // SAFETY: h holds 16 floats.
    unsafe {
        _mm256_storeu_ps(h.as_mut_ptr(), _mm256_mul_ps(sc, _mm256_set1_ps(d)));
        _mm256_storeu_ps(
            h.as_mut_ptr().add(8),
            _mm256_mul_ps(mn, _mm256_set1_ps(-dmin)),
        );
    }
    h
}

/// Q4_K/Q5_K headers of eight rows into the panel's scales and offsets.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn header_k4(p: &[*const u8; ROWS], panel: &mut Panel) {
    let mut h = [[0.0f32; 16]; ROWS];
    for (h, p) in h.iter_mut().zip(p) {
        // SAFETY: the caller guarantees the 16 header bytes at p[r].
        *h = unsafe { header_k4_row(*p) };
    }
    panel.scale[..8].copy_from_slice(&transpose8_ps(&h, 0));
    panel.min.copy_from_slice(&transpose8_ps(&h, 8));
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
    const GROUP: usize = 32;
    const HAS_M: bool = true;
    const OFFSET32: bool = false;
    const CODE_BITS: u32 = 4;
    #[inline(always)]
    unsafe fn header(p: &[*const u8; ROWS], panel: &mut Panel) {
        // SAFETY: each p[r] is a whole super-block (caller).
        unsafe { header_k4(p, panel) }
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
            Self::header(p, panel);
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
    const GROUP: usize = 32;
    const HAS_M: bool = true;
    const OFFSET32: bool = false;
    const CODE_BITS: u32 = 5;
    #[inline(always)]
    unsafe fn header(p: &[*const u8; ROWS], panel: &mut Panel) {
        // SAFETY: each p[r] is a whole super-block (caller).
        unsafe { header_k4(p, panel) }
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
            Self::header(p, panel);
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
    const GROUP: usize = 16;
    const HAS_M: bool = false;
    const OFFSET32: bool = true;
    const CODE_BITS: u32 = 6;
    /// Scales `d · sc[g]` for the sixteen groups of 16 (scales at 192, d at 208).
    #[inline(always)]
    unsafe fn header(p: &[*const u8; ROWS], panel: &mut Panel) {
        let mut h = [[0.0f32; 16]; ROWS];
        for (h, p) in h.iter_mut().zip(p) {
            // SAFETY: p is a whole 210-byte super-block (caller); h holds 16 floats.
            unsafe {
                let bits = i32::from(std::ptr::read_unaligned(p.add(208).cast::<u16>()));
                let d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))));
                let sc = _mm_loadu_si128(p.add(192).cast());
                let lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc));
                let hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(sc)));
                _mm256_storeu_ps(h.as_mut_ptr(), _mm256_mul_ps(lo, d));
                _mm256_storeu_ps(h.as_mut_ptr().add(8), _mm256_mul_ps(hi, d));
            }
        }
        // SAFETY: AVX2 present (module contract).
        let (lo, hi) = unsafe { (transpose8_ps(&h, 0), transpose8_ps(&h, 8)) };
        panel.scale[..8].copy_from_slice(&lo);
        panel.scale[8..].copy_from_slice(&hi);
    }
    /// Codes 0..64 (the values plus 32).
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
            Self::header(p, panel);
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

/// `-32 · Σ a` over each group of 16 activations of super-block `sb`, in the order
/// [`neg_index`] reads them.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn neg32_sums(blocks: *const BlockQ8) -> [i32; 16] {
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
    let mut out = [0i32; 16];
    for (i, k) in k.into_iter().enumerate() {
        let neg = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(k));
        // SAFETY: out holds 16 i32.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(8 * i).cast(), neg) };
    }
    out
}

/// Where group `g`'s sum sits in [`neg32_sums`]'s output.
#[inline(always)]
fn neg_index(g: usize) -> usize {
    let s = g / 2;
    (s / 4) * 8 + (g % 2) * 4 + s % 4
}

/// `_mm256_hadd_epi32` for lanes that fit an i16 (four-value dot products: codes below
/// 64 times |a| ≤ 127, four of them, stay under 32,767): a saturating pack and a multiply-
/// add of pairs by one give the same integers with half the shuffles.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hadd(a: __m256i, b: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_packs_epi32(a, b), _mm256_set1_epi16(1))
}

/// The second level of the decode tile's sums (eight-value sums): [`hadd`] where they
/// fit an i16 (codes below 32), `_mm256_hadd_epi32` otherwise (Q6_K).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hadd2<K: KRows>(a: __m256i, b: __m256i) -> __m256i {
    if K::CODE_BITS <= 5 {
        hadd(a, b)
    } else {
        _mm256_hadd_epi32(a, b)
    }
}

/// `acc` plus lane-wise u8 × i8 four-value dot products (maddubs, then pairs of i16 to
/// i32): exact, since codes below 64 times |a| ≤ 127, summed in pairs, fit an i16.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1));
    _mm256_add_epi32(acc, p)
}

/// As [`dot`] in one AVX-512 VNNI instruction (the same integers).
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn dot_vnni(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, w, a)
}

/// Defines the tile `$tile` and driver `$gemm` for `$features`, with dot products from
/// `$dot` and up to `$rn` tokens per tile.
macro_rules! krows_driver {
    ($tile:ident, $dtile:ident, $gemm:ident, $dot:ident, $rn:literal, $features:literal) => {
        /// Rows `r0..r0 + nr` (nr ≤ 8) × tokens `t0..t0 + RN`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $tile<K: KRows, const RN: usize>(
            w: &RowsRef<'_>,
            r0: usize,
            nr: usize,
            acts: *const BlockQ8,
            nb: usize,
            t0: usize,
            out: OutPtr,
        ) {
            let base = w.data.as_ptr();
            // Rows past the range repeat row r0: computed, never stored.
            let rowp: [*const u8; ROWS] = std::array::from_fn(|r| {
                base.wrapping_add((r0 + if r < nr { r } else { 0 }) * w.row_bytes)
            });
            let mut acc = [_mm256_setzero_ps(); RN];
            // SAFETY: written by decode before any read.
            let mut panel: Panel = unsafe { std::mem::zeroed() };
            let per = K::GROUP / 4;
            for sb in 0..nb / (QK_K / QK) {
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
                // SAFETY: each row's super-block sb lies inside w.data (driver bounds).
                unsafe { K::decode(&p, &mut panel) };
                let blocks: [*const BlockQ8; RN] =
                    std::array::from_fn(|t| acts.wrapping_add((t0 + t) * nb + sb * (QK_K / QK)));
                let mut neg = [[0i32; 16]; RN];
                if K::OFFSET32 {
                    for t in 0..RN {
                        // SAFETY: token t0 + t's 8 blocks of super-block sb are in `acts`.
                        neg[t] = unsafe { neg32_sums(blocks[t]) };
                    }
                }
                for g in 0..QK_K / K::GROUP {
                    let (b, off) = (g * K::GROUP / QK, g * K::GROUP % QK);
                    let mut isum = [_mm256_setzero_si256(); RN];
                    if K::OFFSET32 {
                        for t in 0..RN {
                            isum[t] = _mm256_set1_epi32(neg[t][neg_index(g)]);
                        }
                    }
                    for j in 0..per {
                        let wv = panel.code[g * per + j];
                        for t in 0..RN {
                            // SAFETY: block b of token t holds 32 bytes; off + 4j + 4 ≤ 32.
                            let a = unsafe {
                                let q = (*blocks[t].add(b)).qs.as_ptr().add(off + 4 * j);
                                _mm256_set1_epi32(std::ptr::read_unaligned(q.cast::<i32>()))
                            };
                            isum[t] = $dot(isum[t], wv, a);
                        }
                    }
                    for t in 0..RN {
                        // SAFETY: as above.
                        let blk = unsafe { &*blocks[t].add(b) };
                        let sd = _mm256_mul_ps(panel.scale[g], _mm256_set1_ps(blk.d));
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), sd, acc[t]);
                        if K::HAS_M {
                            acc[t] = _mm256_fmadd_ps(panel.min[g], _mm256_set1_ps(blk.s), acc[t]);
                        }
                    }
                }
            }
            for t in 0..RN {
                let o = out.ptr.wrapping_add((t0 + t) * out.ld + r0);
                if nr == ROWS {
                    // SAFETY: the driver's caller owns (t0 + t, r0..r0 + 8) of `out`.
                    unsafe { _mm256_storeu_ps(o, acc[t]) };
                } else {
                    let mut v = [0.0f32; ROWS];
                    // SAFETY: v holds 8 floats.
                    unsafe { _mm256_storeu_ps(v.as_mut_ptr(), acc[t]) };
                    for (r, v) in v.iter().enumerate().take(nr) {
                        // SAFETY: the driver's caller owns (t0 + t, r0 + r) for r < nr.
                        unsafe { *o.add(r) = *v };
                    }
                }
            }
        }

        /// Rows `r0..r0 + nr` (nr ≤ 8) × the one token `t`, without a panel: each row's
        /// codes stay in value order and meet the token's blocks directly; each row's
        /// group sums are gathered into one vector (exact integer adds), and the eight
        /// rows' vectors transposed so that the float steps are the panel tile's.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $dtile<K: KRows>(
            w: &RowsRef<'_>,
            r0: usize,
            nr: usize,
            acts: *const BlockQ8,
            nb: usize,
            t: usize,
            out: OutPtr,
        ) {
            let base = w.data.as_ptr();
            let rowp: [*const u8; ROWS] = std::array::from_fn(|r| {
                base.wrapping_add((r0 + if r < nr { r } else { 0 }) * w.row_bytes)
            });
            let mut acc = _mm256_setzero_ps();
            // SAFETY: written by header before any read (codes are never read here).
            let mut panel: Panel = unsafe { std::mem::zeroed() };
            for sb in 0..nb / (QK_K / QK) {
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
                let blocks = acts.wrapping_add(t * nb + sb * (QK_K / QK));
                let mut a = [_mm256_setzero_si256(); 8];
                for (s, a) in a.iter_mut().enumerate() {
                    // SAFETY: token t's 8 blocks of super-block sb are in `acts`.
                    *a = unsafe { _mm256_loadu_si256((*blocks.add(s)).qs.as_ptr().cast()) };
                }
                // SAFETY: each row's super-block sb lies inside w.data (driver bounds).
                unsafe { K::header(&p, &mut panel) };
                let neg = if K::OFFSET32 {
                    // SAFETY: as for `a`.
                    let n = unsafe { neg32_sums(blocks) };
                    // SAFETY: n holds 16 i32.
                    unsafe {
                        [
                            _mm256_loadu_si256(n.as_ptr().cast()),
                            _mm256_loadu_si256(n.as_ptr().add(8).cast()),
                        ]
                    }
                } else {
                    [_mm256_setzero_si256(); 2]
                };
                let mut lo = [_mm256_setzero_si256(); ROWS];
                let mut hi = [_mm256_setzero_si256(); ROWS];
                for r in 0..ROWS {
                    let mut y = [_mm256_setzero_si256(); 8];
                    for s in 0..8 {
                        // SAFETY: as for the header.
                        let c = unsafe { K::codes(p[r], s) };
                        y[s] = $dot(_mm256_setzero_si256(), c, a[s]);
                    }
                    // [g0 g2 g4 g6 | g1 g3 g5 g7] and the same for groups 8..16 (groups
                    // of 16 values; lanes 0..4 of y[s] cover group 2s, 4..8 group 2s + 1).
                    let k0 = hadd2::<K>(hadd(y[0], y[1]), hadd(y[2], y[3]));
                    let k1 = hadd2::<K>(hadd(y[4], y[5]), hadd(y[6], y[7]));
                    if K::GROUP == 32 {
                        // Sub-block sums s0..s8: the two halves of each added.
                        lo[r] = _mm256_add_epi32(
                            _mm256_permute2x128_si256::<0x20>(k0, k1),
                            _mm256_permute2x128_si256::<0x31>(k0, k1),
                        );
                    } else {
                        lo[r] = _mm256_add_epi32(k0, neg[0]);
                        hi[r] = _mm256_add_epi32(k1, neg[1]);
                    }
                }
                let tl = transpose8(lo);
                let th = if K::GROUP == 32 { tl } else { transpose8(hi) };
                for g in 0..QK_K / K::GROUP {
                    let isum = if K::GROUP == 32 {
                        tl[g]
                    } else {
                        let i = neg_index(g);
                        if i < 8 { tl[i] } else { th[i - 8] }
                    };
                    // SAFETY: as for `a`.
                    let blk = unsafe { &*blocks.add(g * K::GROUP / QK) };
                    let sd = _mm256_mul_ps(panel.scale[g], _mm256_set1_ps(blk.d));
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), sd, acc);
                    if K::HAS_M {
                        acc = _mm256_fmadd_ps(panel.min[g], _mm256_set1_ps(blk.s), acc);
                    }
                }
            }
            let o = out.ptr.wrapping_add(t * out.ld + r0);
            let mut v = [0.0f32; ROWS];
            // SAFETY: v holds 8 floats.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), acc) };
            for (r, v) in v.iter().enumerate().take(nr) {
                // SAFETY: the driver's caller owns (t, r0 + r) for r < nr.
                unsafe { *o.add(r) = *v };
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
                while r < rows.end {
                    let nr = (rows.end - r).min(ROWS);
                    let mut t = tb;
                    // SAFETY (each tile): bounds asserted above; the caller owns these
                    // rows of `out` for every token.
                    unsafe {
                        while t + $rn <= te {
                            $tile::<K, $rn>(&w, r, nr, a, nb, t, out);
                            t += $rn;
                        }
                        if $rn > 4 && t + 4 <= te {
                            $tile::<K, 4>(&w, r, nr, a, nb, t, out);
                            t += 4;
                        }
                        if t + 2 <= te {
                            $tile::<K, 2>(&w, r, nr, a, nb, t, out);
                            t += 2;
                        }
                        if t < te {
                            $dtile::<K>(&w, r, nr, a, nb, t, out);
                        }
                    }
                    r += nr;
                }
                tb = te;
            }
        }
    };
}

krows_driver!(rtile, rdtile, rgemm, dot, 4, "avx2,fma,f16c");
krows_driver!(
    rtile_wide,
    rdtile_wide,
    rgemm_wide,
    dot_vnni,
    8,
    "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"
);

/// Q4_K, Q5_K or Q6_K weights × 32-value activation blocks, on the AVX-512 build when
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
