//! The Q4_K, Q5_K and Q6_K prefill on AMX tiles: the same integers and float steps as
//! the row panels (see the parent module), so the same bits, with the integer dot
//! products of 16 tokens × 16 rows × 32 values done by one tile instruction.
//!
//! A tile instruction sums whole 32-value blocks, while a super-block scales each group
//! (32 values; Q6_K: 16) by its own integer. The scale therefore goes into the weight
//! tile, split into digits small enough that code × digit still fits a byte:
//!
//! ```text
//! Q4_K/Q5_K: sc = lo + 8 · hi              lo, hi in 0..8, code · digit ≤ 31 · 7
//! Q6_K:      sc = e0 + 7 · e1 + 49 · e2    e in -3..=3,    (code − 32) · e in -96..=96
//! ```
//!
//! and one tile of sums per digit, combined as `C_lo + 8 · C_hi` (or `C0 + 7 · C1 + 49 ·
//! C2`), is exactly `Σ_g sc[g] · Σ_{i in g} q[i] · a[i]` over the super-block: the
//! integer the other paths form. The mins (Q4_K/Q5_K) take the activation sums as the
//! row panels do; the float steps are theirs, lane for lane.
//!
//! Each super-block of 16 rows is decoded once per block of up to 128 tokens into tiles
//! of weights (a tile row: four values of each of the 16 rows), which every 16-token
//! tile of activations then meets, 64 values per instruction. The activations' values
//! are read from token rows (see [`crate::simd::pack_token_rows`]: a token's quantized values in
//! order, without the blocks' scales, so that 64 of them lie together); their scales and
//! sums from the blocks. A block's last, partial 16-token tile starts 16 tokens before
//! its end and keeps only the tokens the previous tile did not, so every tile is whole;
//! the driver therefore takes 16 tokens or more.

use std::arch::x86_64::*;

use super::super::super::{OutPtr, RowsRef};
use super::super::amx::{TOKEN_BLOCK, TileConfig, Tiles, store_tokens, tile, token_blocks};
use super::super::gemm::row_ptrs;
use super::blocks::{KRows, Panel, RQ4K, RQ5K, RQ6K, SUBS, panel_header};
use crate::quant::{BlockQ8, QK, QK_K, WType};

/// Tokens per tile (rows of the activation and sum tiles).
const TT: usize = 16;
/// Weight rows per tile (columns of the sum tile).
const RT: usize = 16;
/// Weight tiles per super-block step: Q4_K/Q5_K the scale's two digits and the mins,
/// Q6_K the scale's three digits.
const MAX_DIGITS: usize = 3;

/// Values per tile instruction.
const KT: usize = 64;
/// Tile instructions per super-block and digit.
const STEPS: usize = QK_K / KT;

/// Tiles 0..3: sums (16 tokens × 16 rows of i32); 3: activations (16 tokens × 64
/// values); 4..7: weights (16 rows of four values × 16 weight rows), one per digit.
const CONFIG: TileConfig = TileConfig::new([
    (16, 64),
    (16, 64),
    (16, 64),
    (16, 64),
    (16, 64),
    (16, 64),
    (16, 64),
    (0, 0),
]);

/// One super-block of 16 rows as weight tiles: `b[digit][step]` is the tile of values
/// `64 · step..64 · step + 64`, row `k` of it values `4k..4k + 4` of those for each of
/// the 16 rows (64 bytes).
#[repr(C, align(64))]
struct WeightTiles {
    b: [[[u8; 1024]; STEPS]; MAX_DIGITS],
}

/// The 16 rows' float factors, lane `r` for row `r`.
#[repr(C, align(64))]
struct Factors {
    d: [f32; RT],
    ndmin: [f32; RT],
}

/// How a k-quant's scales split into digits of its weight tiles.
trait Digits: KRows {
    /// Row half `h` (rows `8h..8h + 8`) of the decoded `panel` into `w`.
    unsafe fn fold(panel: &Panel, h: usize, w: &mut WeightTiles);
}

/// The i16 pair `x, x` in each 32-bit lane (x < 2^15).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn twice16(x: __m256i) -> __m256i {
    _mm256_or_si256(x, _mm256_slli_epi32::<16>(x))
}

/// Q4_K/Q5_K: codes below 32 times digits below 8, byte by byte (a product below 256
/// never carries into the next byte of the 16-bit multiply).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fold_unsigned(panel: &Panel, h: usize, w: &mut WeightTiles) {
    for j in 0..QK_K / 4 {
        let (step, k) = (j / 16, j % 16);
        let sc = panel.sc[j / 8];
        let lo = twice16(_mm256_and_si256(sc, _mm256_set1_epi32(7)));
        let hi = twice16(_mm256_srli_epi32::<3>(sc));
        let at = 64 * k + 32 * h;
        // Sub-block j / 8's min in every byte of its row's lane (mins are below 64).
        let k2 = j / 16;
        let pair = panel.pair[k2];
        let min = if (j / 8) % 2 == 0 {
            _mm256_and_si256(pair, _mm256_set1_epi32(0xFFFF))
        } else {
            _mm256_srli_epi32::<16>(pair)
        };
        let min = _mm256_mullo_epi32(min, _mm256_set1_epi32(0x0101_0101));
        // SAFETY: at + 32 ≤ 1024.
        unsafe {
            _mm256_store_si256(w.b[2][step].as_mut_ptr().add(at).cast(), min);
            _mm256_store_si256(
                w.b[0][step].as_mut_ptr().add(at).cast(),
                _mm256_mullo_epi16(panel.code[j], lo),
            );
            _mm256_store_si256(
                w.b[1][step].as_mut_ptr().add(at).cast(),
                _mm256_mullo_epi16(panel.code[j], hi),
            );
        }
    }
}

impl Digits for RQ4K {
    #[inline(always)]
    unsafe fn fold(panel: &Panel, h: usize, w: &mut WeightTiles) {
        // SAFETY: AVX2 (caller).
        unsafe { fold_unsigned(panel, h, w) }
    }
}

impl Digits for RQ5K {
    #[inline(always)]
    unsafe fn fold(panel: &Panel, h: usize, w: &mut WeightTiles) {
        // SAFETY: AVX2 (caller).
        unsafe { fold_unsigned(panel, h, w) }
    }
}

/// A signed scale `s` in -128..=127 as balanced base-7 digits `e0 + 7 e1 + 49 e2`, each
/// in -3..=3, lane by lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn digits7(s: __m256i) -> [__m256i; 3] {
    // u = s + 171 = Σ (e_i + 3) · 7^i with every e_i + 3 in 0..7; u ≤ 298, where
    // (x · 9363) >> 16 is x / 7 exactly.
    let div7 = |x: __m256i| _mm256_srli_epi32::<16>(_mm256_mullo_epi32(x, _mm256_set1_epi32(9363)));
    let seven = |x: __m256i| _mm256_sub_epi32(_mm256_slli_epi32::<3>(x), x);
    let three = _mm256_set1_epi32(3);
    let u = _mm256_add_epi32(s, _mm256_set1_epi32(171));
    let u1 = div7(u);
    let u2 = div7(u1);
    [
        _mm256_sub_epi32(_mm256_sub_epi32(u, seven(u1)), three),
        _mm256_sub_epi32(_mm256_sub_epi32(u1, seven(u2)), three),
        _mm256_sub_epi32(u2, three),
    ]
}

/// Lane-wise `q · e` of signed bytes `q` (|q| ≤ 32) and a digit `e` in -3..=3 per 32-bit
/// lane: the sign moved onto `q` (`sign_epi8` reads it from every byte, so the digit is
/// spread over its lane's four bytes first), then `|e| = [odd] + 2 · [≥ 2]` in adds
/// (|q · e| ≤ 96 fits a byte).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn times_digit(q: __m256i, e: __m256i) -> __m256i {
    let y = _mm256_sign_epi8(q, _mm256_mullo_epi32(e, _mm256_set1_epi32(0x0101_0101)));
    let a = _mm256_abs_epi32(e);
    let one = _mm256_set1_epi32(1);
    let odd = _mm256_cmpeq_epi32(_mm256_and_si256(a, one), one);
    let two = _mm256_cmpgt_epi32(a, one);
    _mm256_add_epi8(
        _mm256_and_si256(y, odd),
        _mm256_and_si256(_mm256_add_epi8(y, y), two),
    )
}

impl Digits for RQ6K {
    #[inline(always)]
    unsafe fn fold(panel: &Panel, h: usize, w: &mut WeightTiles) {
        // SAFETY (whole body): AVX2 (caller); every store is inside its 1024-byte tile.
        unsafe {
            for g in 0..16 {
                let e = digits7(panel.sc[g]);
                for j in 4 * g..4 * g + 4 {
                    let (step, k) = (j / 16, j % 16);
                    let q = _mm256_sub_epi8(panel.code[j], _mm256_set1_epi8(32));
                    let at = 64 * k + 32 * h;
                    for (d, &e) in e.iter().enumerate() {
                        _mm256_store_si256(
                            w.b[d][step].as_mut_ptr().add(at).cast(),
                            times_digit(q, e),
                        );
                    }
                }
            }
        }
    }
}

/// Defines the tile pass of one super-block for a digit count: the sums of tokens
/// `t0..t0 + 16` against the weight tiles, stored to `c`.
macro_rules! pass {
    ($name:ident, $op:ident, $(($d:literal, $w:literal)),+) => {
        /// # Safety
        /// A live [`Tiles`] with [`CONFIG`]; `a` points at a super-block's 256 values
        /// of the first of 16 token rows `stride` bytes apart.
        #[inline(always)]
        unsafe fn $name(a: *const i8, stride: usize, w: &WeightTiles, c: &mut [[i32; 256]; MAX_DIGITS]) {
            // SAFETY (whole body): the caller's tile state and pointers; each load reads
            // 16 rows of 64 bytes in bounds.
            unsafe {
                $( tile!(zero $d); )+
                for b in 0..STEPS {
                    tile!(load 3, a.add(KT * b), stride);
                    $( tile!(load $w, w.b[$d][b].as_ptr(), 64usize); )+
                    $( tile!($op $d, 3, $w); )+
                }
                $( tile!(store $d, c[$d].as_mut_ptr(), 64usize); )+
            }
        }
    };
}

pass!(pass_unsigned, dpbsud, (0, 4), (1, 5), (2, 6));
pass!(pass_signed, dpbssd, (0, 4), (1, 5), (2, 6));

/// The AMX prefill of Q4_K, Q5_K or Q6_K rows `rows` × `n_tokens` (16 or more), the
/// values read from `token_rows` (all `n_tokens` packed by
/// [`crate::simd::pack_token_rows`]).
///
/// # Safety
/// [`super::super::amx::has_amx`] must hold; see [`super::super::super::gemm_q8`] for
/// the output contract.
pub(crate) unsafe fn gemm_k_amx(
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    acts: &[BlockQ8],
    token_rows: &[i8],
    n_tokens: usize,
    out: OutPtr,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match w.wtype {
            WType::Q4_K => tgemm::<RQ4K>(w, rows, acts, token_rows, n_tokens, out),
            WType::Q5_K => tgemm::<RQ5K>(w, rows, acts, token_rows, n_tokens, out),
            WType::Q6_K => tgemm::<RQ6K>(w, rows, acts, token_rows, n_tokens, out),
            t => unreachable!("{t:?} takes another kernel"),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn tgemm<K: Digits>(
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    acts: &[BlockQ8],
    token_rows: &[i8],
    n_tokens: usize,
    out: OutPtr,
) {
    let nb = w.cols / QK;
    let nsb = nb / SUBS;
    assert!(w.cols.is_multiple_of(QK_K), "gemm: partial super-block");
    assert!(
        n_tokens >= TT,
        "gemm: the tile path takes {TT} tokens or more"
    );
    assert!(acts.len() >= n_tokens * nb, "gemm: activations too short");
    assert!(
        rows.end * w.row_bytes <= w.data.len(),
        "gemm: rows out of range"
    );
    let a = acts.as_ptr();
    let stride = w.cols;
    // SAFETY: has_amx (caller).
    let _tiles = unsafe { Tiles::load(&CONFIG) };
    // SAFETY: plain data; every field is written before it is read.
    let (mut half, mut wt, mut f): (Panel, WeightTiles, Factors) = unsafe { std::mem::zeroed() };
    let mut c = [[0i32; 256]; MAX_DIGITS];
    let mut acc = [_mm512_setzero_ps(); TOKEN_BLOCK];
    let mut da = vec![0.0f32; n_tokens.min(TOKEN_BLOCK) * nsb];
    for block in token_blocks(n_tokens, w.cols) {
        let (tb, n) = (block.start, block.len());
        for t in 0..n {
            for sb in 0..nsb {
                // SAFETY: token tb + t's blocks are in `acts` (asserted above); the
                // first block of a super-block holds its scale.
                da[t * nsb + sb] = unsafe { (*a.add((tb + t) * nb + sb * SUBS)).d };
            }
        }
        let mut r = rows.start;
        while r < rows.end {
            let nr = (rows.end - r).min(RT);
            let rowp: [*const u8; RT] = row_ptrs(&w, r, nr);
            acc[..n].fill(_mm512_setzero_ps());
            for sb in 0..nsb {
                let p = rowp.map(|p| p.wrapping_add(sb * K::BB));
                for q in p {
                    let mut l = 0;
                    while l < K::BB {
                        // The next super-block: a hint, never a fault.
                        _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(K::BB + l).cast());
                        l += 64;
                    }
                }
                for h in 0..2 {
                    let ph: &[*const u8; 8] = p[8 * h..8 * h + 8].try_into().unwrap();
                    // SAFETY: each row's super-block sb lies inside w.data (asserted).
                    unsafe {
                        K::decode(ph, &mut half);
                        panel_header::<K>(ph, &mut half);
                        K::fold(&half, h, &mut wt);
                        _mm256_storeu_ps(f.d.as_mut_ptr().add(8 * h), half.d);
                        _mm256_storeu_ps(f.ndmin.as_mut_ptr().add(8 * h), half.ndmin);
                    }
                }
                // SAFETY: 16 floats / i32 each.
                let (d, ndmin) = unsafe {
                    (
                        _mm512_loadu_ps(f.d.as_ptr()),
                        _mm512_loadu_ps(f.ndmin.as_ptr()),
                    )
                };
                let mut t0 = 0;
                while t0 < n {
                    // The last tile ends at the block's end; its first `skip` tokens
                    // were the previous tile's.
                    let start = t0.min(n - TT);
                    let skip = t0 - start;
                    let vals = token_rows[(tb + start) * w.cols + sb * QK_K..].as_ptr();
                    // SAFETY: tiles loaded; tokens start..start + 16 are in the block,
                    // each with its whole row in `token_rows` (asserted by the caller).
                    unsafe {
                        if K::HAS_M {
                            pass_unsigned(vals, stride, &wt, &mut c);
                        } else {
                            pass_signed(vals, stride, &wt, &mut c);
                        }
                    }
                    for i in skip..TT {
                        let t = start + i;
                        // SAFETY: c rows hold 16 i32; token t's first block holds its
                        // super-block scale.
                        let (tot, da) = unsafe {
                            let c0 = _mm512_loadu_si512(c[0].as_ptr().add(16 * i).cast());
                            let c1 = _mm512_loadu_si512(c[1].as_ptr().add(16 * i).cast());
                            let tot = if K::HAS_M {
                                _mm512_add_epi32(c0, _mm512_slli_epi32::<3>(c1))
                            } else {
                                let c2 = _mm512_loadu_si512(c[2].as_ptr().add(16 * i).cast());
                                // c0 + 7 · (c1 + 7 · c2)
                                let x = _mm512_add_epi32(
                                    c1,
                                    _mm512_sub_epi32(_mm512_slli_epi32::<3>(c2), c2),
                                );
                                _mm512_add_epi32(c0, _mm512_sub_epi32(_mm512_slli_epi32::<3>(x), x))
                            };
                            (tot, _mm512_set1_ps(da[t * nsb + sb]))
                        };
                        if K::HAS_M {
                            // SAFETY: as above.
                            let m = unsafe { _mm512_loadu_si512(c[2].as_ptr().add(16 * i).cast()) };
                            let x = _mm512_fmadd_ps(
                                _mm512_cvtepi32_ps(tot),
                                _mm512_mul_ps(d, da),
                                acc[t],
                            );
                            acc[t] =
                                _mm512_fmadd_ps(_mm512_cvtepi32_ps(m), _mm512_mul_ps(ndmin, da), x);
                        } else {
                            acc[t] = _mm512_fmadd_ps(
                                _mm512_cvtepi32_ps(tot),
                                _mm512_mul_ps(d, da),
                                acc[t],
                            );
                        }
                    }
                    t0 = start + TT;
                }
            }
            // SAFETY: the caller owns rows r..r + nr of tokens tb..tb + n.
            unsafe { store_tokens(&acc[..n], out, tb, r, nr) };
            r += nr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_q6_k_scale_splits_into_balanced_base_7_digits_and_every_product_fits_a_byte() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        for s in -128i32..=127 {
            // SAFETY: AVX2 checked above.
            let e = unsafe { digits7(_mm256_set1_epi32(s)) };
            let e: Vec<i32> = e
                .iter()
                // SAFETY: AVX2 checked above.
                .map(|v| unsafe { _mm256_extract_epi32::<5>(*v) })
                .collect();
            assert!(e.iter().all(|e| (-3..=3).contains(e)), "{s}: {e:?}");
            assert_eq!(e[0] + 7 * e[1] + 49 * e[2], s);
            for q in -32i32..=31 {
                for &e in &e {
                    // SAFETY: AVX2 checked above.
                    let p = unsafe {
                        let v = times_digit(_mm256_set1_epi8(q as i8), _mm256_set1_epi32(e));
                        _mm256_extract_epi8::<13>(v) as i8
                    };
                    assert_eq!(i32::from(p), q * e, "{q} × {e}");
                }
            }
        }
    }
}
