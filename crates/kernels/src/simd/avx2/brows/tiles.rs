//! The Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 prefill on AMX tiles: the same block sums and
//! float steps as the row panels (see the parent module), so the same bits, with one
//! block's integer sums for 16 tokens × 16 rows in one tile instruction.
//!
//! Every block has its own float scale, so a tile sums one block (32 values) and its
//! sums go straight to the float steps, `acc = fma(isum, d · d_b, acc)` and, with an
//! offset, `acc = fma(m, s_b, acc)`, lane `r` for row `r`; the 16 tokens' accumulators
//! are kept across a run of blocks (in registers). The loop is software-pipelined (see
//! `block_loop`), so one block's float steps overlap later blocks' tile work. The
//! weights of 16 rows are decoded once per run of blocks and block of tokens into tiles
//! of codes (a tile row: four codes of each of the 16 rows); the tokens' values come
//! from the token rows [`crate::simd::pack_token_rows`] lays out, 32 bytes of a token
//! per tile row. As in the k-quant tiles, a block's last partial 16-token tile starts 16
//! tokens before its end and keeps only the tokens the tile before did not; the driver
//! takes 16 tokens or more.

use std::arch::x86_64::*;

use super::super::super::{OutPtr, RowsRef};
use super::super::amx::{TOKEN_BLOCK, TileConfig, Tiles, store_tokens, tile, token_blocks};
use super::super::gemm::row_ptrs;
use super::super::lanes::transpose8;
use super::{KQ4_0, KQ4_1, KQ5_0, KQ5_1, KQ8_0, Kind, rows_block};
use crate::quant::{BlockQ8, QK, WType};

/// Tokens per tile.
const TT: usize = 16;
/// Weight rows per tile.
const RT: usize = 16;
/// Blocks decoded at a time: 32 blocks of 16 rows are 16 KiB of weight tiles, in L1.
const SEG: usize = 32;

/// Tiles 0, 1: sums (16 tokens × 16 rows of i32) of two blocks; 2, 3: their activations
/// (16 tokens × 32 values); 4, 5: their weights (8 rows of four values × 16 rows).
const CONFIG: TileConfig = TileConfig::new([
    (16, 64),
    (16, 64),
    (16, 32),
    (16, 32),
    (8, 64),
    (8, 64),
    (0, 0),
    (0, 0),
]);

/// One block of 16 rows: the codes as a weight tile, the rows' scales and offsets.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct BlockTile {
    code: [u8; 512],
    d: [f32; RT],
    m: [f32; RT],
}

/// Blocks `b0..b0 + n` of the 16 rows at `rowp` into `seg[..n]`.
///
/// # Safety
/// Each row holds blocks `b0..b0 + n` of `K::BB` bytes.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
#[inline]
unsafe fn decode<K: Kind>(
    rowp: &[*const u8; RT],
    (b0, n): (usize, usize),
    next: usize,
    seg: &mut [BlockTile; SEG],
) {
    for (i, bt) in seg.iter_mut().enumerate().take(n) {
        for h in 0..2 {
            let half: &[*const u8; 8] = rowp[8 * h..8 * h + 8].try_into().unwrap();
            // SAFETY: forwarded contract.
            let (codes, d, m) = unsafe { rows_block::<K>(half, b0 + i, next) };
            let code = transpose8(codes);
            for (j, c) in code.iter().enumerate() {
                // SAFETY: 64j + 32h + 32 ≤ 512.
                unsafe { _mm256_store_si256(bt.code.as_mut_ptr().add(64 * j + 32 * h).cast(), *c) };
            }
            // SAFETY: eight floats each.
            unsafe {
                _mm256_storeu_ps(bt.d.as_mut_ptr().add(8 * h), d);
                _mm256_storeu_ps(bt.m.as_mut_ptr().add(8 * h), m);
            }
        }
    }
}

/// The float steps of one block's sums `c` for the 16 tokens whose activation blocks
/// are `blk + i · nb`, into `acc`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
#[inline]
fn steps<K: Kind>(
    c: &[i32; 256],
    bt: &BlockTile,
    blk: *const BlockQ8,
    nb: usize,
    acc: &mut [__m512; TT],
) {
    // SAFETY: 16 floats each.
    let (d, m) = unsafe {
        (
            _mm512_loadu_ps(bt.d.as_ptr()),
            _mm512_loadu_ps(bt.m.as_ptr()),
        )
    };
    for (i, acc) in acc.iter_mut().enumerate() {
        // SAFETY: c holds 16 rows of 16 i32; the token's block is in `acts` (driver).
        let (isum, b) = unsafe {
            (
                _mm512_loadu_si512(c.as_ptr().add(16 * i).cast()),
                &*blk.wrapping_add(i * nb),
            )
        };
        let sd = _mm512_mul_ps(d, _mm512_set1_ps(b.d));
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sd, *acc);
        if K::HAS_M {
            *acc = _mm512_fmadd_ps(m, _mm512_set1_ps(b.s), *acc);
        }
    }
}

/// Sums of one block for 16 tokens × 16 rows, as a tile stores them.
#[repr(C, align(64))]
struct Sums([i32; 256]);

/// Defines the tile loop `$name` over blocks `0..n` of a decoded run for 16 tokens with
/// the tile instruction `$op`, software-pipelined: in slot `j` block `j`'s tile
/// instruction is issued, block `j − 1`'s sums are stored and block `j − 2`'s float
/// steps run. The float steps, the larger part, so never wait for a tile instruction,
/// and never read sums just stored (a tile store does not forward to vector loads).
/// Blocks still meet each token's accumulator in order, so the bits are unchanged.
macro_rules! block_loop {
    ($name:ident, $op:ident) => {
        /// # Safety
        /// A live [`Tiles`] with [`CONFIG`]; `vals` points at the run's first value of
        /// the first of 16 token rows `stride` bytes apart, `blk` at that token's first
        /// activation block of the run (tokens `nb` blocks apart).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
        #[inline]
        unsafe fn $name<K: Kind>(
            seg: &[BlockTile; SEG],
            n: usize,
            (vals, stride): (*const i8, usize),
            (blk, nb): (*const BlockQ8, usize),
            acc: &mut [__m512; TT],
        ) {
            let mut c = [Sums([0; 256]), Sums([0; 256])];
            let mut j = 0;
            // SAFETY (whole body): the caller's tile state and pointers; each load reads
            // 16 rows of 32 bytes or 8 of 64 in bounds, each store 16 rows of 64. Even
            // slots use tiles 0, 2, 4 and sums c[0]; odd slots tiles 1, 3, 5 and c[1].
            unsafe {
                while j < n + 2 {
                    if j < n {
                        tile!(zero 0);
                        tile!(load 2, vals.add(QK * j), stride);
                        tile!(load 4, seg[j].code.as_ptr(), 64usize);
                        tile!($op 0, 2, 4);
                    }
                    if (1..=n).contains(&j) {
                        tile!(store 1, c[1].0.as_mut_ptr(), 64usize);
                    }
                    if j >= 2 {
                        steps::<K>(&c[0].0, &seg[j - 2], blk.wrapping_add(j - 2), nb, acc);
                    }
                    j += 1;
                    if j == n + 2 {
                        break;
                    }
                    if j < n {
                        tile!(zero 1);
                        tile!(load 3, vals.add(QK * j), stride);
                        tile!(load 5, seg[j].code.as_ptr(), 64usize);
                        tile!($op 1, 3, 5);
                    }
                    if j <= n {
                        tile!(store 0, c[0].0.as_mut_ptr(), 64usize);
                    }
                    if j >= 2 {
                        steps::<K>(&c[1].0, &seg[j - 2], blk.wrapping_add(j - 2), nb, acc);
                    }
                    j += 1;
                }
            }
        }
    };
}

block_loop!(blocks_unsigned, dpbsud);
block_loop!(blocks_signed, dpbssd);

/// The AMX prefill of Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 rows `rows` × `n_tokens` (16 or
/// more), the values read from `token_rows` (all `n_tokens` packed by
/// [`crate::simd::pack_token_rows`]).
///
/// # Safety
/// [`super::super::amx::has_amx`] must hold; see [`super::super::super::gemm_q8`] for
/// the output contract.
pub(crate) unsafe fn gemm_b_amx(
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
            WType::Q4_0 => tgemm::<KQ4_0>(w, rows, acts, token_rows, n_tokens, out),
            WType::Q4_1 => tgemm::<KQ4_1>(w, rows, acts, token_rows, n_tokens, out),
            WType::Q5_0 => tgemm::<KQ5_0>(w, rows, acts, token_rows, n_tokens, out),
            WType::Q5_1 => tgemm::<KQ5_1>(w, rows, acts, token_rows, n_tokens, out),
            WType::Q8_0 => tgemm::<KQ8_0>(w, rows, acts, token_rows, n_tokens, out),
            t => unreachable!("{t:?} takes another kernel"),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn tgemm<K: Kind>(
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    acts: &[BlockQ8],
    token_rows: &[i8],
    n_tokens: usize,
    out: OutPtr,
) {
    let nb = w.cols / QK;
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
    // SAFETY: has_amx (caller).
    let _tiles = unsafe { Tiles::load(&CONFIG) };
    // SAFETY: plain data; every block is written by decode before it is read.
    let mut seg: [BlockTile; SEG] = unsafe { std::mem::zeroed() };
    let mut accs = vec![_mm512_setzero_ps(); TOKEN_BLOCK];
    for block in token_blocks(n_tokens, w.cols) {
        let (tb, n) = (block.start, block.len());
        let mut r = rows.start;
        while r < rows.end {
            let nr = (rows.end - r).min(RT);
            let rowp: [*const u8; RT] = row_ptrs(&w, r, nr);
            accs[..n].fill(_mm512_setzero_ps());
            let mut b0 = 0;
            while b0 < nb {
                let len = (nb - b0).min(SEG);
                // SAFETY: rows r..r + nr hold every block (asserted above).
                unsafe { decode::<K>(&rowp, (b0, len), RT * w.row_bytes, &mut seg) };
                let mut t0 = 0;
                while t0 < n {
                    let start = t0.min(n - TT);
                    let skip = t0 - start;
                    let acc: &mut [__m512; TT] = (&mut accs[start..start + TT]).try_into().unwrap();
                    let mut regs = *acc;
                    let vals = token_rows[(tb + start) * w.cols + b0 * QK..].as_ptr();
                    let blk = a.wrapping_add((tb + start) * nb + b0);
                    // SAFETY: tiles loaded; tokens start..start + 16 of the block are in
                    // `acts` and `token_rows`.
                    unsafe {
                        if K::SIGNED {
                            blocks_signed::<K>(&seg, len, (vals, w.cols), (blk, nb), &mut regs);
                        } else {
                            blocks_unsigned::<K>(&seg, len, (vals, w.cols), (blk, nb), &mut regs);
                        }
                    }
                    // The tokens the previous tile already took keep their sums.
                    acc[skip..].copy_from_slice(&regs[skip..]);
                    t0 = start + TT;
                }
                b0 += len;
            }
            // SAFETY: the caller owns rows r..r + nr of tokens tb..tb + n.
            unsafe { store_tokens(&accs[..n], out, tb, r, nr) };
            r += nr;
        }
    }
}
