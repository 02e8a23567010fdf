//! The Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 product with rows in the vector lanes: eight
//! weight rows at a time, each 32-bit lane one row, so that a block's dot product comes
//! out as one exact integer per row with no horizontal adds.
//!
//! For a run of up to [`SEG`] blocks, the eight rows are decoded once into a panel on
//! the stack: their 32 codes per block transposed so that register `j` holds values
//! `4j..4j + 4` of every row, and their scales and offsets as one vector per block. Every
//! token of the token block (up to 64) then streams through that panel: per block the
//! exact integer sum `isum = Σ code · a` over eight four-value dot products of a panel
//! register with the token's four activations broadcast, then two float steps:
//!
//! ```text
//! acc = fma(isum, d · d_b, acc)         d_b: the activation block's scale
//! acc = fma(m, s_b, acc)                offset kinds only (s_b = d_b · Σ a)
//! ```
//!
//! where `m` is the block's offset (`-8d` for Q4_0, `-16d` for Q5_0, the stored minimum
//! for Q4_1/Q5_1). The portable reference ([`crate::simd::portable`]) takes the same
//! integer sums and float steps in the same order, and every tile width runs the same
//! per-token code, so a token's result has the same bits alone, batched, or on any path.
//!
//! Q8_0's codes are signed. The AVX2 build multiplies `|w|` by `a` carrying `w`'s sign
//! (`|w| ≤ 128`, `|a| ≤ 127`: pairs fit an i16); the VNNI build takes `a + 128` as the
//! unsigned operand and starts each row's sum at `-128 · Σ w`, computed with the panel.
//! Both give the exact integer `Σ w · a`.

use std::arch::x86_64::*;

mod tiles;

pub(crate) use tiles::gemm_b_amx;

use super::super::{OutPtr, RowsRef};
use super::gemm::{DECODE_AHEAD, TOKEN_BLOCK, f16x2, row_ptrs};
use super::lanes::{dot_u, dot_u_vnni, pair_sums, transpose8};
use crate::quant::{BlockQ8, QK, WType};

/// Rows per tile: one per 32-bit lane of a 256-bit register.
const ROWS: usize = 8;

/// Blocks per panel: 32 blocks of eight rows take 11 KiB, in L1 beside the activations.
const SEG: usize = 32;

/// Eight rows of one block, decoded.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
struct BlockPanel {
    /// `code[j]`, lane `r`: the codes of values `4j..4j + 4` of row `r`.
    code: [__m256i; QK / 4],
    /// Lane `r`: row `r`'s scale `d`.
    d: __m256,
    /// Lane `r`: row `r`'s offset `m` (offset kinds).
    m: __m256,
    /// Lane `r`: `-128 · Σ w` of row `r` (Q8_0 on the VNNI build).
    corr: __m256i,
}

/// How a weight block turns into 32 small integers plus scale and offset.
pub(super) trait Kind {
    /// Bytes per block.
    const BB: usize;
    /// Whether the block has an additive term (`m · s` of the activation block).
    const HAS_M: bool;
    /// Whether the codes are signed bytes (Q8_0) rather than unsigned ones below 32.
    const SIGNED: bool;
    /// Whether the offset `m` is stored (an f16 after `d`) rather than `M_SCALE · d`.
    const M_STORED: bool = false;
    /// `m = M_SCALE · d` where the offset is not stored.
    const M_SCALE: f32 = 0.0;
    /// The block at `p`'s 32 codes in value order.
    unsafe fn codes(p: *const u8) -> __m256i;
    /// Loads block at `p`: the 32 codes in value order, the scale `d`, and the offset `m`.
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        // SAFETY: p points at a whole block (caller), whose first four bytes are `d` and
        // the offset or the codes.
        unsafe {
            let (d, m) = f16x2(p);
            (
                Self::codes(p),
                d,
                if Self::M_STORED { m } else { Self::M_SCALE * d },
            )
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at p.
    let q = unsafe { _mm_loadu_si128(p.cast()) };
    let m4 = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(q, m4);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
    _mm256_set_m128i(hi, lo)
}

/// Bytes 0..32 of a 5-bit block's codes: nibbles from `qs` (16 bytes), bit 4 from the
/// matching bit of the little-endian u32 at `qh`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn five_bits(qh: *const u8, qs: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 4 bytes at qh and 16 at qs.
    let (bits, low) = unsafe { (std::ptr::read_unaligned(qh.cast::<i32>()), nibbles(qs)) };
    // Byte i takes byte i / 8 of the mask (each 128-bit lane holds all four), then keeps
    // bit i % 8 of it: all ones where the bit is set.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits),
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_or_si256(low, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
}

pub(super) struct KQ4_0;
pub(super) struct KQ4_1;
pub(super) struct KQ8_0;
pub(super) struct KQ5_0;
pub(super) struct KQ5_1;

impl Kind for KQ5_0 {
    const BB: usize = 22;
    const HAS_M: bool = true;
    const SIGNED: bool = false;
    const M_SCALE: f32 = -16.0;
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> __m256i {
        // SAFETY: p points at a whole 22-byte block (caller).
        unsafe { five_bits(p.add(2), p.add(6)) }
    }
}

impl Kind for KQ5_1 {
    const BB: usize = 24;
    const HAS_M: bool = true;
    const SIGNED: bool = false;
    const M_STORED: bool = true;
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> __m256i {
        // SAFETY: p points at a whole 24-byte block (caller).
        unsafe { five_bits(p.add(4), p.add(8)) }
    }
}

impl Kind for KQ4_0 {
    const BB: usize = 18;
    const HAS_M: bool = true;
    const SIGNED: bool = false;
    const M_SCALE: f32 = -8.0;
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> __m256i {
        // SAFETY: p points at a whole 18-byte block (caller).
        unsafe { nibbles(p.add(2)) }
    }
}

impl Kind for KQ4_1 {
    const BB: usize = 20;
    const HAS_M: bool = true;
    const SIGNED: bool = false;
    const M_STORED: bool = true;
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> __m256i {
        // SAFETY: p points at a whole 20-byte block (caller).
        unsafe { nibbles(p.add(4)) }
    }
}

impl Kind for KQ8_0 {
    const BB: usize = 34;
    const HAS_M: bool = false;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> __m256i {
        // SAFETY: p points at a whole 34-byte block (caller).
        unsafe { _mm256_loadu_si256(p.add(2).cast()) }
    }
}

/// Block `b` of the eight rows at `rowp`: each row's 32 codes in value order, and the
/// rows' scales and offsets one to a lane; the same block `next` bytes further (the next
/// tile's rows) is prefetched.
///
/// # Safety
/// AVX2+FMA+F16C must be present; each row holds block `b` of `K::BB` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn rows_block<K: Kind>(
    rowp: &[*const u8; ROWS],
    b: usize,
    next: usize,
) -> ([__m256i; ROWS], __m256, __m256) {
    let mut codes = [_mm256_setzero_si256(); ROWS];
    let mut d = [0.0f32; ROWS];
    let mut m = [0.0f32; ROWS];
    for r in 0..ROWS {
        let p = rowp[r].wrapping_add(b * K::BB);
        // A hint, never a fault, even past the end of the data.
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(next).cast());
        // SAFETY: block b of row r lies inside the data (caller).
        (codes[r], d[r], m[r]) = unsafe { K::load(p) };
    }
    // Built from registers: eight scalar stores read back as one vector would stall.
    let dv = _mm256_setr_ps(d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]);
    let mv = _mm256_setr_ps(m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7]);
    (codes, dv, mv)
}

/// Blocks `b0..b0 + n` of the eight rows at `rowp` into `panel[..n]` (see
/// [`rows_block`] for `next`); with `OFFSET` (Q8_0 on the VNNI build), each block's
/// `-128 · Σ w` per row too.
///
/// # Safety
/// AVX2+FMA+F16C must be present; each row holds blocks `b0..b0 + n` of `K::BB` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn decode<K: Kind, const OFFSET: bool>(
    rowp: &[*const u8; ROWS],
    b0: usize,
    n: usize,
    next: usize,
    panel: &mut [BlockPanel; SEG],
) {
    for (i, pb) in panel.iter_mut().enumerate().take(n) {
        // SAFETY: forwarded contract.
        let (codes, d, m) = unsafe { rows_block::<K>(rowp, b0 + i, next) };
        pb.code = transpose8(codes);
        pb.d = d;
        pb.m = m;
        if OFFSET {
            // Σ w per row: u8 ones × i8 codes, pairs to i16 (≤ 256), then to i32.
            let mut s = _mm256_setzero_si256();
            for c in pb.code {
                let p = _mm256_maddubs_epi16(_mm256_set1_epi8(1), c);
                s = _mm256_add_epi32(s, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
            }
            pb.corr = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<7>(s));
        }
    }
}

/// Each row's block sum from its eight four-value sums `y[r]`, row `r` in lane `r`.
/// With `SMALL`, four-value sums fit in 15 bits and so do eight-value ones.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn row_sums<const SMALL: bool>(y: [__m256i; ROWS]) -> __m256i {
    let l1 = [
        pair_sums::<SMALL>(y[0], y[1]),
        pair_sums::<SMALL>(y[2], y[3]),
        pair_sums::<SMALL>(y[4], y[5]),
        pair_sums::<SMALL>(y[6], y[7]),
    ];
    // [row 0..4: values 0..16 | row 0..4: values 16..32], then rows 4..8.
    let l2 = [
        pair_sums::<SMALL>(l1[0], l1[1]),
        pair_sums::<SMALL>(l1[2], l1[3]),
    ];
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(l2[0], l2[1]),
        _mm256_permute2x128_si256::<0x31>(l2[0], l2[1]),
    )
}

/// As [`dot_u`] for signed codes: `|w|` times `a` carrying `w`'s sign.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_s(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    dot_u(acc, _mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
}

/// Signed codes `w` with `a + 128` (unsigned, prepared by the tile): `Σ (a + 128) w`,
/// which the panel's `-128 · Σ w` starting value brings back to `Σ a w`.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn dot_s_vnni(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, a, w)
}

/// Defines the tile `$tile` and driver `$gemm` for `$features`, with dot products from
/// `$dot_u` (unsigned codes) and `$dot_s` (signed), up to `$rn` tokens per tile; with
/// `$offset`, signed codes take the `a + 128` form.
macro_rules! brows_driver {
    ($tile:ident, $dtile:ident, $gemm:ident, $dot_u:ident, $dot_s:ident, $offset:literal,
     $rn:literal, $features:literal) => {
        /// Tokens `t0..t0 + RN` through blocks `b0..b0 + n` of the panel, into `acc[..RN]`.
        ///
        /// # Safety
        /// The features must be present; `acts` holds tokens `t0..t0 + RN` of `nb` blocks.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $tile<K: Kind, const RN: usize>(
            panel: &[BlockPanel; SEG],
            n: usize,
            acts: *const BlockQ8,
            nb: usize,
            (b0, t0): (usize, usize),
            acc: &mut [__m256],
        ) {
            let mut a: [__m256; RN] = std::array::from_fn(|t| acc[t]);
            let mut shifted = [_mm256_setzero_si256(); RN];
            for (i, pb) in panel.iter().enumerate().take(n) {
                let blocks: [*const BlockQ8; RN] =
                    std::array::from_fn(|t| acts.wrapping_add((t0 + t) * nb + b0 + i));
                if K::SIGNED && $offset {
                    for t in 0..RN {
                        // SAFETY: token t0 + t's block b0 + i is in `acts` (caller).
                        let v = unsafe { _mm256_loadu_si256((*blocks[t]).qs.as_ptr().cast()) };
                        shifted[t] = _mm256_xor_si256(v, _mm256_set1_epi8(-128));
                    }
                }
                let sp = shifted.as_ptr();
                let src: [*const u8; RN] = std::array::from_fn(|t| {
                    if K::SIGNED && $offset {
                        sp.wrapping_add(t).cast()
                    } else {
                        // SAFETY: token t0 + t's block b0 + i is in `acts` (caller).
                        unsafe { (*blocks[t]).qs.as_ptr().cast() }
                    }
                });
                let start = if K::SIGNED && $offset {
                    pb.corr
                } else {
                    _mm256_setzero_si256()
                };
                let mut isum = [start; RN];
                for (j, &wv) in pb.code.iter().enumerate() {
                    for t in 0..RN {
                        // SAFETY: src[t] holds 32 bytes and 4j + 4 ≤ 32.
                        let q = unsafe {
                            _mm256_set1_epi32(std::ptr::read_unaligned(
                                src[t].add(4 * j).cast::<i32>(),
                            ))
                        };
                        isum[t] = if K::SIGNED {
                            $dot_s(isum[t], wv, q)
                        } else {
                            $dot_u(isum[t], wv, q)
                        };
                    }
                }
                for t in 0..RN {
                    // SAFETY: as above.
                    let blk = unsafe { &*blocks[t] };
                    let sd = _mm256_mul_ps(pb.d, _mm256_set1_ps(blk.d));
                    a[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), sd, a[t]);
                    if K::HAS_M {
                        a[t] = _mm256_fmadd_ps(pb.m, _mm256_set1_ps(blk.s), a[t]);
                    }
                }
            }
            acc[..RN].copy_from_slice(&a);
        }

        /// The one token `t` through rows `rowp`, without a panel. The rows are read one
        /// after another, each front to back (they lie end to end in memory, so the tile
        /// is one stream), a segment of blocks at a time: pass one takes each row-block's
        /// four-value sums (exact integers) and its scale and offset into L1; pass two
        /// reduces the eight rows' sums of a block into one vector (row `r` in lane `r`,
        /// exact) and takes the float steps with the rows in the lanes, in block order:
        /// the panel tile's integers and float steps, so the same bits.
        ///
        /// Reading eight rows side by side kept eight streams apart, and one row's float
        /// steps alone were a chain of dependent fused multiply-adds; this way is
        /// 1.2-1.5x faster on a Zen 4 (figures in the engine design notes).
        ///
        /// # Safety
        /// The features must be present; every row holds `nb` blocks, `acts` token
        /// `t`'s `nb` blocks. Rows past the last that repeat row 0 are not read.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $dtile<K: Kind>(
            rowp: &[*const u8; ROWS],
            acts: *const BlockQ8,
            nb: usize,
            t: usize,
        ) -> __m256 {
            let zero = _mm256_setzero_si256();
            let mut seg = DecodeSeg::new();
            let mut acc = _mm256_setzero_ps();
            let mut b0 = 0;
            while b0 < nb {
                let n = (nb - b0).min(SEG);
                for r in 0..ROWS {
                    if r > 0 && rowp[r] == rowp[0] {
                        // Past the last row: lanes the caller drops, zero.
                        for i in 0..n {
                            seg.put(i, r, zero, 0, 0);
                        }
                        continue;
                    }
                    for i in 0..n {
                        let p = rowp[r].wrapping_add((b0 + i) * K::BB);
                        // Further along the stream: a hint, never a fault, even past the
                        // end of the data (the hardware prefetcher does not cross a page).
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(DECODE_AHEAD).cast());
                        // The scale and offset stay f16 bits until pass two converts eight
                        // rows' at once.
                        // SAFETY: block b0 + i of the row lies inside the data, token t's
                        // inside `acts` (caller).
                        let (w, d, m, blk) = unsafe {
                            (
                                K::codes(p),
                                std::ptr::read_unaligned(p.cast::<u16>()),
                                if K::M_STORED {
                                    std::ptr::read_unaligned(p.add(2).cast::<u16>())
                                } else {
                                    0
                                },
                                &*acts.add(t * nb + b0 + i),
                            )
                        };
                        // SAFETY: 32 bytes.
                        let a = unsafe { _mm256_loadu_si256(blk.qs.as_ptr().cast()) };
                        let y = if K::SIGNED {
                            // |w| ≤ 128 times a carrying w's sign: exact on both builds.
                            $dot_u(zero, _mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
                        } else {
                            $dot_u(zero, w, a)
                        };
                        seg.put(i, r, y, d, m);
                    }
                }
                for i in 0..n {
                    // SAFETY: pass one wrote all eight rows of block i.
                    let (y, dv, mv) = unsafe { seg.get::<K>(i) };
                    // Four-value sums: codes below 32 times |a| ≤ 127 fit 15 bits, eight
                    // of them too; Q8_0's (up to 4 · 128 · 127) do not.
                    let isum = if K::SIGNED {
                        row_sums::<false>(y)
                    } else {
                        row_sums::<true>(y)
                    };
                    // SAFETY: token t's block b0 + i is in `acts`.
                    let blk = unsafe { &*acts.add(t * nb + b0 + i) };
                    let sd = _mm256_mul_ps(dv, _mm256_set1_ps(blk.d));
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), sd, acc);
                    if K::HAS_M {
                        acc = _mm256_fmadd_ps(mv, _mm256_set1_ps(blk.s), acc);
                    }
                }
                b0 += n;
            }
            acc
        }

        #[target_feature(enable = $features)]
        unsafe fn $gemm<K: Kind>(
            w: RowsRef<'_>,
            rows: std::ops::Range<usize>,
            acts: &[BlockQ8],
            n_tokens: usize,
            out: OutPtr,
        ) {
            let nb = w.cols / QK;
            assert!(acts.len() >= n_tokens * nb, "gemm: activations too short");
            assert!(
                rows.end * w.row_bytes <= w.data.len(),
                "gemm: rows out of range"
            );
            let a = acts.as_ptr();
            let rows_at = |r: usize, nr: usize| -> [*const u8; ROWS] { row_ptrs(&w, r, nr) };
            if n_tokens == 1 {
                // A lone token (decode) skips the panel, whose transposes only pay off
                // across many tokens (and whose zeroing alone, per call, was 2% of a
                // decode step).
                let mut r = rows.start;
                while r < rows.end {
                    let nr = (rows.end - r).min(ROWS);
                    // SAFETY: rows r..r + nr lie inside w.data and token 0 inside `acts`
                    // (asserted above).
                    let acc = unsafe { $dtile::<K>(&rows_at(r, nr), a, nb, 0) };
                    // SAFETY: the driver's caller owns (0, r..r + nr).
                    unsafe { store_rows(acc, out.ptr.wrapping_add(r), nr) };
                    r += nr;
                }
                return;
            }
            // SAFETY: plain vectors; every block is written by decode before a read.
            let mut panel: [BlockPanel; SEG] = unsafe { std::mem::zeroed() };
            let mut acc = [_mm256_setzero_ps(); TOKEN_BLOCK];
            let mut tb = 0;
            while tb < n_tokens {
                let te = (tb + TOKEN_BLOCK).min(n_tokens);
                let mut r = rows.start;
                while r < rows.end {
                    let nr = (rows.end - r).min(ROWS);
                    let rowp = rows_at(r, nr);
                    if te - tb == 1 {
                        // A lone last token (the 65th, say) as above: the same bits.
                        // SAFETY: rows r..r + nr lie inside w.data and token tb inside
                        // `acts` (asserted above).
                        acc[0] = unsafe { $dtile::<K>(&rowp, a, nb, tb) };
                    } else {
                        acc[..te - tb].fill(_mm256_setzero_ps());
                        let mut b0 = 0;
                        while b0 < nb {
                            let n = (nb - b0).min(SEG);
                            // SAFETY (decode and tiles): rows r..r + nr lie inside w.data and
                            // tokens tb..te inside `acts` (asserted above).
                            unsafe {
                                decode::<K, $offset>(&rowp, b0, n, ROWS * w.row_bytes, &mut panel);
                                let mut t = tb;
                                while t + $rn <= te {
                                    $tile::<K, $rn>(&panel, n, a, nb, (b0, t), &mut acc[t - tb..]);
                                    t += $rn;
                                }
                                if $rn > 4 && t + 4 <= te {
                                    $tile::<K, 4>(&panel, n, a, nb, (b0, t), &mut acc[t - tb..]);
                                    t += 4;
                                }
                                if t + 2 <= te {
                                    $tile::<K, 2>(&panel, n, a, nb, (b0, t), &mut acc[t - tb..]);
                                    t += 2;
                                }
                                if t < te {
                                    $tile::<K, 1>(&panel, n, a, nb, (b0, t), &mut acc[t - tb..]);
                                }
                            }
                            b0 += n;
                        }
                    }
                    for t in tb..te {
                        // SAFETY: the driver's caller owns (t, r..r + nr).
                        unsafe {
                            store_rows(acc[t - tb], out.ptr.wrapping_add(t * out.ld + r), nr)
                        };
                    }
                    r += nr;
                }
                tb = te;
            }
        }
    };
}

brows_driver!(
    btile,
    bdtile,
    bgemm,
    dot_u,
    dot_s,
    false,
    4,
    "avx2,fma,f16c"
);
brows_driver!(
    btile_wide,
    bdtile_wide,
    bgemm_wide,
    dot_u_vnni,
    dot_s_vnni,
    true,
    8,
    "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"
);

/// One segment's pass-one results for a decode tile ([`bdtile`]): per block, the eight
/// rows' four-value sums and their scales and offsets. Left uninitialised (zeroing it
/// per tile would cost a fifth of the tile's work); `get` reads only what `put` wrote.
struct DecodeSeg {
    y: [[std::mem::MaybeUninit<__m256i>; ROWS]; SEG],
    /// Scales and offsets as f16 bits.
    d: [[std::mem::MaybeUninit<u16>; ROWS]; SEG],
    m: [[std::mem::MaybeUninit<u16>; ROWS]; SEG],
}

impl DecodeSeg {
    #[inline(always)]
    fn new() -> Self {
        // SAFETY: arrays of `MaybeUninit` need no initialisation.
        unsafe { std::mem::MaybeUninit::uninit().assume_init() }
    }

    #[inline(always)]
    fn put(&mut self, i: usize, r: usize, y: __m256i, d: u16, m: u16) {
        self.y[i][r].write(y);
        self.d[i][r].write(d);
        self.m[i][r].write(m);
    }

    /// Block `i`'s eight rows: sums, scales, offsets (row `r` in lane `r`).
    ///
    /// # Safety
    /// `put` has written block `i` for every row; AVX must be present.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn get<K: Kind>(&self, i: usize) -> ([__m256i; ROWS], __m256, __m256) {
        // SAFETY: written (caller); MaybeUninit<u16> has u16's layout, eight in a row.
        unsafe {
            let d = _mm256_cvtph_ps(_mm_loadu_si128(self.d[i].as_ptr().cast()));
            let m = if K::M_STORED {
                _mm256_cvtph_ps(_mm_loadu_si128(self.m[i].as_ptr().cast()))
            } else {
                // As `K::load`'s scalar `M_SCALE · d`: the same rounding.
                _mm256_mul_ps(d, _mm256_set1_ps(K::M_SCALE))
            };
            (std::array::from_fn(|r| self.y[i][r].assume_init()), d, m)
        }
    }
}

/// Lanes `0..nr` of `acc` to `o[0..nr]`.
///
/// # Safety
/// AVX must be present; `o` is valid for `nr ≤ 8` writes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn store_rows(acc: __m256, o: *mut f32, nr: usize) {
    if nr == ROWS {
        // SAFETY: eight floats at o (caller).
        unsafe { _mm256_storeu_ps(o, acc) };
    } else {
        let mut v = [0.0f32; ROWS];
        // SAFETY: v holds 8 floats.
        unsafe { _mm256_storeu_ps(v.as_mut_ptr(), acc) };
        for (i, v) in v.iter().enumerate().take(nr) {
            // SAFETY: i < nr writes at o (caller).
            unsafe { *o.add(i) = *v };
        }
    }
}

/// A driver: weights, rows, activations, tokens, output.
type Driver = unsafe fn(RowsRef<'_>, std::ops::Range<usize>, &[BlockQ8], usize, OutPtr);

/// `K`'s driver, the AVX-512 build when `wide`.
fn driver<K: Kind>(wide: bool) -> Driver {
    if wide { bgemm_wide::<K> } else { bgemm::<K> }
}

/// Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 weights × 32-value activation blocks, on the AVX-512
/// build when `wide`.
///
/// # Safety
/// AVX2+FMA+F16C must be present, and AVX-512F/VL/BW/VNNI when `wide`; see
/// [`super::super::gemm_q8`] for the output contract.
pub(crate) unsafe fn gemm_b(
    wide: bool,
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    acts: &[BlockQ8],
    n_tokens: usize,
    out: OutPtr,
) {
    let run = match w.wtype {
        WType::Q4_0 => driver::<KQ4_0>(wide),
        WType::Q4_1 => driver::<KQ4_1>(wide),
        WType::Q5_0 => driver::<KQ5_0>(wide),
        WType::Q5_1 => driver::<KQ5_1>(wide),
        WType::Q8_0 => driver::<KQ8_0>(wide),
        t => unreachable!("{t:?} takes another kernel"),
    };
    // SAFETY: forwarded contract.
    unsafe { run(w, rows, acts, n_tokens, out) }
}
