//! The AVX2 and AVX-512 builds of the quantized matrix product: how each weight kind's
//! blocks unpack, the register tiles, and the driver that walks rows and tokens.

use std::arch::x86_64::*;

use super::super::{OutPtr, RowsRef};
use super::{has_avx512, hsum};
use crate::quant::{BlockQ8, QK, WType};

/// Tokens per cache block in the prefill loop: 64 tokens of activations (≈46 KiB for a
/// 576-wide model) stay in L2 while every row tile of the chunk streams past them.
pub(super) const TOKEN_BLOCK: usize = 64;

/// How far ahead of the current block the weight stream is prefetched.
pub(super) const PREFETCH_BYTES: usize = 4096;

/// How a weight block turns into 32 small integers plus scale and offset.
trait Kind {
    /// Bytes per block.
    const BB: usize;
    /// Whether the block has an additive term (`m · s` of the activation block).
    const HAS_M: bool;
    /// Loads block at `p`: the 32 quants, the scale `d`, and the offset factor `m`.
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32);
    /// 8 lanes of partial integer dot products of weights `w` with activations `a`; the
    /// default is for unsigned (4-bit) weights.
    #[inline(always)]
    unsafe fn dot(w: __m256i, a: __m256i) -> __m256i {
        // SAFETY: AVX2 present (module contract).
        unsafe { dot_u8_i8(w, a) }
    }
    /// As [`Kind::dot`] with AVX-512 VNNI's one-instruction u8 × i8 dot product (the same
    /// integers: neither form overflows).
    #[inline(always)]
    unsafe fn dot_vnni(w: __m256i, a: __m256i) -> __m256i {
        // SAFETY: the caller has AVX-512 VNNI (only the wide build calls this).
        unsafe { dot_u8_i8_vnni(w, a) }
    }
}

#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
pub(super) unsafe fn dot_u8_i8_vnni(w: __m256i, a: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn f16x2(p: *const u8) -> (f32, f32) {
    // SAFETY: the caller guarantees 4 readable bytes at p.
    let bits = unsafe { std::ptr::read_unaligned(p.cast::<i32>()) };
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
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

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn dot_u8_i8(w: __m256i, a: __m256i) -> __m256i {
    // u8 × i8 pairs summed to i16: 15 · 127 · 2 fits; then pairs of i16 to i32.
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
}

struct KQ4_0;
struct KQ4_1;
struct KQ8_0;
struct KQ5_0;
struct KQ5_1;

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

impl Kind for KQ5_0 {
    const BB: usize = 22;
    const HAS_M: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        // SAFETY: p points at a whole 22-byte block (caller). Codes ≤ 31, so the u8 × i8
        // pairs of the dot product (31 · 127 · 2) fit an i16.
        unsafe {
            let (d, _) = f16x2(p);
            (five_bits(p.add(2), p.add(6)), d, -16.0 * d)
        }
    }
}

impl Kind for KQ5_1 {
    const BB: usize = 24;
    const HAS_M: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        // SAFETY: p points at a whole 24-byte block (caller).
        unsafe {
            let (d, m) = f16x2(p);
            (five_bits(p.add(4), p.add(8)), d, m)
        }
    }
}

impl Kind for KQ4_0 {
    const BB: usize = 18;
    const HAS_M: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        // SAFETY: p points at a whole 18-byte block (caller).
        unsafe {
            let (d, _) = f16x2(p);
            (nibbles(p.add(2)), d, -8.0 * d)
        }
    }
}

impl Kind for KQ4_1 {
    const BB: usize = 20;
    const HAS_M: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        // SAFETY: p points at a whole 20-byte block (caller).
        unsafe {
            let (d, m) = f16x2(p);
            (nibbles(p.add(4)), d, m)
        }
    }
}

impl Kind for KQ8_0 {
    const BB: usize = 34;
    const HAS_M: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        // SAFETY: p points at a whole 34-byte block (caller).
        unsafe {
            let (d, _) = f16x2(p);
            (_mm256_loadu_si256(p.add(2).cast()), d, 0.0)
        }
    }
    #[inline(always)]
    unsafe fn dot(w: __m256i, a: __m256i) -> __m256i {
        // i8 × i8 through maddubs: move w's sign onto a, multiply |w| (≤ 128) by it.
        // SAFETY: AVX2 present (module contract).
        unsafe { dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)) }
    }
    #[inline(always)]
    unsafe fn dot_vnni(w: __m256i, a: __m256i) -> __m256i {
        // SAFETY: the caller has AVX-512 VNNI (only the wide build calls this).
        unsafe { dot_u8_i8_vnni(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)) }
    }
}

/// Defines the prefill driver `$gemm` and its tile kernel `$tile` compiled for
/// `$features`, taking integer dot products with `Kind::$dot`. The code is the same for
/// both builds: with AVX-512VL the compiler has 32 vector registers instead of 16, so the
/// 4 × 2 tile's accumulators, activations and scales stay in registers, and VNNI's
/// `vpdpbusd` replaces the two-instruction `maddubs`/`madd` dot product. Measured on a
/// Zen 4 core: 18% fewer samples in this loop from the registers, then a further 9% off
/// prefill from VNNI. The results are bit for bit the same: the integer dot products are
/// exact either way, and every float operation is spelled out, none reassociated.
macro_rules! gemm_driver {
    ($tile:ident, $tile4:ident, $gemm:ident, $dot:ident, $widest:literal, $features:literal) => {
        /// Computes the RM × RN tile at rows `r0..r0+RM`, tokens `t0..t0+RN`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $tile<K: Kind, const RM: usize, const RN: usize>(
            w: &RowsRef<'_>,
            r0: usize,
            acts: *const BlockQ8,
            nb: usize,
            t0: usize,
            out: OutPtr,
        ) {
            let mut acc = [[_mm256_setzero_ps(); RN]; RM];
            let mut corr = [[0.0f32; RN]; RM];
            let wbase = w.data.as_ptr();
            for b in 0..nb {
                let mut av = [_mm256_setzero_si256(); RN];
                let mut ad = [0.0f32; RN];
                let mut asum = [0.0f32; RN];
                for t in 0..RN {
                    // SAFETY: token t0+t and block b lie inside `acts` (checked by the driver).
                    unsafe {
                        let blk = acts.add((t0 + t) * nb + b);
                        av[t] = _mm256_loadu_si256((*blk).qs.as_ptr().cast());
                        ad[t] = (*blk).d;
                        asum[t] = (*blk).s;
                    }
                }
                for r in 0..RM {
                    let p = wbase.wrapping_add((r0 + r) * w.row_bytes + b * K::BB);
                    // Decode streams weights from DRAM once per token; the hardware prefetcher
                    // alone left one thread at a third of its bandwidth here. Fetch ahead.
                    // A prefetch is a hint and never faults, even past the end of the data.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES).cast());
                    // SAFETY: row r0+r block b lies inside w.data (checked by QMatrix::new).
                    let (wv, d, m) = unsafe { K::load(p) };
                    for t in 0..RN {
                        // SAFETY: AVX2 present.
                        let p = unsafe { K::$dot(wv, av[t]) };
                        acc[r][t] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(p),
                            _mm256_set1_ps(d * ad[t]),
                            acc[r][t],
                        );
                        if K::HAS_M {
                            corr[r][t] += m * asum[t];
                        }
                    }
                }
            }
            for r in 0..RM {
                for t in 0..RN {
                    // SAFETY: the driver's caller owns (t0+t, r0+r) of `out`.
                    unsafe {
                        *out.ptr.add((t0 + t) * out.ld + r0 + r) = hsum(acc[r][t]) + corr[r][t]
                    };
                }
            }
        }

        /// The RM × 4 tile at rows `r0..r0+RM`, tokens `t0..t0+4`: as `$tile`, with each
        /// weight block unpacked once for four tokens and the per-(row, token) scale
        /// products and offset terms taken four tokens to a vector. Lane `t` of each vector
        /// does exactly the scalar operations `$tile` does for token `t` (one multiply for
        /// `d · ad`, a multiply then an add for the offset), so the results are the same bits.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $tile4<K: Kind, const RM: usize>(
            w: &RowsRef<'_>,
            r0: usize,
            acts: *const BlockQ8,
            nb: usize,
            t0: usize,
            out: OutPtr,
        ) {
            let mut acc = [[_mm256_setzero_ps(); 4]; RM];
            let mut corr = [_mm_setzero_ps(); RM];
            let lane = [
                _mm256_set1_epi32(0),
                _mm256_set1_epi32(1),
                _mm256_set1_epi32(2),
                _mm256_set1_epi32(3),
            ];
            let wbase = w.data.as_ptr();
            for b in 0..nb {
                let mut av = [_mm256_setzero_si256(); 4];
                let mut ad = [0.0f32; 4];
                let mut asum = [0.0f32; 4];
                for t in 0..4 {
                    // SAFETY: token t0+t and block b lie inside `acts` (checked by the driver).
                    unsafe {
                        let blk = acts.add((t0 + t) * nb + b);
                        av[t] = _mm256_loadu_si256((*blk).qs.as_ptr().cast());
                        ad[t] = (*blk).d;
                        asum[t] = (*blk).s;
                    }
                }
                // SAFETY: four floats each.
                let (adv, asv) =
                    unsafe { (_mm_loadu_ps(ad.as_ptr()), _mm_loadu_ps(asum.as_ptr())) };
                for r in 0..RM {
                    let p = wbase.wrapping_add((r0 + r) * w.row_bytes + b * K::BB);
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES).cast());
                    // SAFETY: row r0+r block b lies inside w.data (checked by QMatrix::new).
                    let (wv, d, m) = unsafe { K::load(p) };
                    let dv = _mm256_castps128_ps256(_mm_mul_ps(_mm_set1_ps(d), adv));
                    if K::HAS_M {
                        corr[r] = _mm_add_ps(corr[r], _mm_mul_ps(_mm_set1_ps(m), asv));
                    }
                    for t in 0..4 {
                        // SAFETY: AVX2 present.
                        let p = unsafe { K::$dot(wv, av[t]) };
                        acc[r][t] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(p),
                            _mm256_permutevar8x32_ps(dv, lane[t]),
                            acc[r][t],
                        );
                    }
                }
            }
            for r in 0..RM {
                let mut c = [0.0f32; 4];
                // SAFETY: four floats.
                unsafe { _mm_storeu_ps(c.as_mut_ptr(), corr[r]) };
                for t in 0..4 {
                    // SAFETY: the driver's caller owns (t0+t, r0+r) of `out`.
                    unsafe { *out.ptr.add((t0 + t) * out.ld + r0 + r) = hsum(acc[r][t]) + c[t] };
                }
            }
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
            let mut tb = 0;
            while tb < n_tokens {
                let te = (tb + TOKEN_BLOCK).min(n_tokens);
                let mut r = rows.start;
                if te - tb == 1 {
                    // One token (decode): two rows at a time. Measured on Zen 4, paired
                    // runs, one row at a time was fastest (2-row tiles took 1.33× as long,
                    // 4-row 1.40×); on a Xeon with AVX-512 VNNI it is the other way round
                    // by far: 8960 × 1536, two threads, one row 2.3 ms (Q4_0) / 2.3 ms
                    // (Q5_0), two rows 0.64 / 0.90 ms; 151936 × 1536 (past the caches)
                    // 96–121 ms against 33–45 ms. A lone row waits on its one chain of
                    // dependent adds; two interleave two. Each row's sum is formed in the
                    // same order as in the multi-row tiles, so the results are the same bits.
                    while r + 2 <= rows.end {
                        // SAFETY: as below.
                        unsafe { $tile::<K, 2, 1>(&w, r, a, nb, tb, out) };
                        r += 2;
                    }
                    while r < rows.end {
                        // SAFETY: as below.
                        unsafe { $tile::<K, 1, 1>(&w, r, a, nb, tb, out) };
                        r += 1;
                    }
                }
                while r + 4 <= rows.end {
                    let mut t = tb;
                    // SAFETY (all tile calls): bounds asserted above; the caller owns these rows.
                    while $widest == 4 && t + 4 <= te {
                        // SAFETY: bounds asserted above; the caller owns rows r..r+4.
                        unsafe { $tile4::<K, 4>(&w, r, a, nb, t, out) };
                        t += 4;
                    }
                    while t + 2 <= te {
                        // SAFETY: bounds asserted above; the caller owns rows r..r+4.
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

gemm_driver!(tile, tile4, gemm_kind, dot, 2, "avx2,fma,f16c");
gemm_driver!(
    tile_wide,
    tile4_wide,
    gemm_kind_wide,
    dot_vnni,
    4,
    "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"
);

/// # Safety
/// AVX2+FMA+F16C must be present; see [`super::super::gemm_q8`] for the output contract.
pub(crate) unsafe fn gemm_q8(
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    acts: &[BlockQ8],
    n_tokens: usize,
    out: OutPtr,
) {
    // SAFETY: forwarded contract.
    unsafe { gemm_q8_on(has_avx512(), w, rows, acts, n_tokens, out) }
}

/// As [`gemm_q8`], on the AVX-512 build when `wide` (tests compare the two).
///
/// # Safety
/// As [`gemm_q8`], and AVX-512F/VL/BW/VNNI must be present when `wide`.
pub(crate) unsafe fn gemm_q8_on(
    wide: bool,
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    acts: &[BlockQ8],
    n_tokens: usize,
    out: OutPtr,
) {
    // SAFETY: forwarded contract; `wide` only where the CPU has AVX-512F/VL/BW/VNNI.
    unsafe {
        match (w.wtype, wide) {
            (WType::Q4_0, false) => gemm_kind::<KQ4_0>(w, rows, acts, n_tokens, out),
            (WType::Q4_1, false) => gemm_kind::<KQ4_1>(w, rows, acts, n_tokens, out),
            (WType::Q8_0, false) => gemm_kind::<KQ8_0>(w, rows, acts, n_tokens, out),
            (WType::Q4_0, true) => gemm_kind_wide::<KQ4_0>(w, rows, acts, n_tokens, out),
            (WType::Q4_1, true) => gemm_kind_wide::<KQ4_1>(w, rows, acts, n_tokens, out),
            (WType::Q8_0, true) => gemm_kind_wide::<KQ8_0>(w, rows, acts, n_tokens, out),
            (WType::Q5_0, false) => gemm_kind::<KQ5_0>(w, rows, acts, n_tokens, out),
            (WType::Q5_1, false) => gemm_kind::<KQ5_1>(w, rows, acts, n_tokens, out),
            (WType::Q5_0, true) => gemm_kind_wide::<KQ5_0>(w, rows, acts, n_tokens, out),
            (WType::Q5_1, true) => gemm_kind_wide::<KQ5_1>(w, rows, acts, n_tokens, out),
            (WType::Q4_K | WType::Q5_K | WType::Q6_K, _) => {
                super::krows::gemm_k(wide, w, rows, acts, n_tokens, out)
            }
            (WType::Q3_K, _) => super::kgemm::gemm_k(wide, w, rows, acts, n_tokens, out),
            // Q2_K (per-16 offsets, rare in downloaded models) takes the portable loop.
            (WType::Q2_K, _) => super::super::portable::gemm_q8(w, rows, acts, n_tokens, out),
            (WType::F16 | WType::F32 | WType::BF16, _) => {
                unreachable!("float weights take f32 activations")
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8(wtype: WType, row: *const u8, i: usize) -> __m256 {
    // SAFETY: the caller guarantees 8 elements at index i inside the row.
    unsafe {
        match wtype {
            WType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * i).cast())),
            WType::BF16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(row.add(2 * i).cast()),
            ))),
            _ => _mm256_loadu_ps(row.add(4 * i).cast()),
        }
    }
}

/// # Safety
/// AVX2+FMA+F16C must be present; see [`super::super::gemm_q8`] for the output contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gemm_f32(
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    x: &[f32],
    n_tokens: usize,
    out: OutPtr,
) {
    let k = w.cols;
    assert!(x.len() >= n_tokens * k && rows.end * w.row_bytes <= w.data.len());
    let esz = if w.wtype == WType::F32 { 4 } else { 2 };
    for t in 0..n_tokens {
        let xt = &x[t * k..(t + 1) * k];
        for r in rows.clone() {
            // SAFETY: row r is inside w.data (asserted).
            let row = unsafe { w.data.as_ptr().add(r * w.row_bytes) };
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i + 8 <= k {
                // SAFETY: i + 8 ≤ k elements in both the row and xt.
                unsafe {
                    acc = _mm256_fmadd_ps(load8(w.wtype, row, i), _mm256_loadu_ps(&xt[i]), acc);
                }
                i += 8;
            }
            // SAFETY: AVX present.
            let mut s = unsafe { hsum(acc) };
            while i < k {
                let bytes = &w.data[r * w.row_bytes + i * esz..];
                let wv = if w.wtype == WType::BF16 {
                    crate::quant::read_bf16(bytes, 0)
                } else if esz == 2 {
                    crate::quant::read_f16(bytes, 0)
                } else {
                    f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
                };
                s += wv * xt[i];
                i += 1;
            }
            // SAFETY: the caller owns (t, r).
            unsafe { *out.ptr.add(t * out.ld + r) = s };
        }
    }
}
