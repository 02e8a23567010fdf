//! Matrix × activations: `out[t][r] = Σ_k W[r][k] · x[t][k]` for one token or many.
//!
//! Quantized weights multiply 8-bit activation blocks with integer dot products; float
//! weights multiply f32 activations. Rows are handed out to the pool's threads in chunks
//! from one atomic counter, so a thread slowed by a shared core takes fewer chunks.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Isa;
use crate::pool::ThreadPool;
use crate::quant::{BlockQ8, WType, shares_super_block_scales};
use crate::simd::{self, OutPtr, RowsRef};

/// A weight matrix in ggml layout (row-major, `rows` rows of `cols` elements), borrowed
/// in place from the model file.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    wtype: WType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: &'a [u8],
}

/// Why a matrix could not be built from bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShapeError {
    #[error("{cols} columns is not a whole number of {wtype:?} blocks")]
    PartialBlock { wtype: WType, cols: usize },
    #[error("a {rows}×{cols} {wtype:?} matrix needs {needed} bytes, got {got}")]
    WrongSize {
        wtype: WType,
        rows: usize,
        cols: usize,
        needed: usize,
        got: usize,
    },
}

impl<'a> QMatrix<'a> {
    /// Views `data` as a `rows × cols` matrix of `wtype`, checking its size exactly.
    pub fn new(wtype: WType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, ShapeError> {
        let row_bytes = wtype
            .row_bytes(cols)
            .ok_or(ShapeError::PartialBlock { wtype, cols })?;
        let needed = row_bytes.checked_mul(rows);
        if needed != Some(data.len()) {
            return Err(ShapeError::WrongSize {
                wtype,
                rows,
                cols,
                needed: needed.unwrap_or(usize::MAX),
                got: data.len(),
            });
        }
        Ok(QMatrix {
            wtype,
            rows,
            cols,
            row_bytes,
            data,
        })
    }

    pub fn wtype(&self) -> WType {
        self.wtype
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The raw bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    fn rows_ref(&self) -> RowsRef<'a> {
        RowsRef {
            wtype: self.wtype,
            data: self.data,
            row_bytes: self.row_bytes,
            cols: self.cols,
        }
    }
}

/// One product of a batched call: a matrix and where its `n_tokens × rows` result goes.
pub struct MatJob<'a, 'o> {
    w: QMatrix<'a>,
    out: &'o mut [f32],
}

impl<'a, 'o> MatJob<'a, 'o> {
    pub fn new(w: QMatrix<'a>, out: &'o mut [f32]) -> Self {
        MatJob { w, out }
    }
}

struct SyncOut(OutPtr);
// SAFETY: threads write disjoint row ranges of each output (chunks are claimed once from
// an atomic counter), so sharing the pointer cannot race.
unsafe impl Sync for SyncOut {}

impl SyncOut {
    fn get(&self) -> OutPtr {
        self.0
    }
}

/// Computes every job's product for `n_tokens` tokens of input, in parallel.
///
/// `x` holds the f32 input (`n_tokens × cols`) and `xq` the same input quantized with
/// [`crate::quant::quantize_row_for`] (`n_tokens × cols / 32` blocks; it may be empty when
/// no job has quantized weights; Q4_K, Q5_K and Q6_K need its one scale per 256
/// values). All jobs share the input, so they must share `cols`.
///
/// # Panics
/// On mismatched sizes (jobs with different `cols`, outputs or inputs too short), and on
/// Q4_K, Q5_K or Q6_K weights with activations not quantized one scale per 256 values.
pub fn matmul(
    pool: &ThreadPool,
    jobs: &mut [MatJob<'_, '_>],
    x: &[f32],
    xq: &[BlockQ8],
    n_tokens: usize,
) {
    matmul_with(Isa::detect(), pool, jobs, x, xq, n_tokens);
}

/// [`matmul`] on a chosen instruction set (tests compare them).
pub fn matmul_with(
    isa: Isa,
    pool: &ThreadPool,
    jobs: &mut [MatJob<'_, '_>],
    x: &[f32],
    xq: &[BlockQ8],
    n_tokens: usize,
) {
    let Some(first) = jobs.first() else { return };
    let cols = first.w.cols;
    for j in jobs.iter() {
        assert_eq!(j.w.cols, cols, "matmul: jobs must share the input width");
        assert!(
            j.out.len() >= n_tokens * j.w.rows,
            "matmul: output too short"
        );
        if j.w.wtype.uses_q8_activations() {
            assert!(
                xq.len() >= n_tokens * cols / 32,
                "matmul: quantized input too short"
            );
            assert!(
                !j.w.wtype.needs_super_block_acts()
                    || shares_super_block_scales(&xq[..n_tokens * cols / 32]),
                "matmul: {:?} weights need activations with one scale per 256 values \
                 (quantize_row_for)",
                j.w.wtype
            );
        } else {
            assert!(x.len() >= n_tokens * cols, "matmul: input too short");
        }
    }
    let total_rows: usize = jobs.iter().map(|j| j.w.rows).sum();
    let tiles = jobs
        .iter()
        .any(|j| simd::wants_token_rows(isa, j.w.wtype, n_tokens));
    let groups = token_groups(n_tokens, cols);
    // Enough chunks for balance (≥ 8 per thread over all token groups), each a multiple
    // of 8 rows: the row-panel kernels take eight rows at a time, the tile kernels
    // sixteen.
    let chunk = (total_rows * groups / (pool.n_threads() * 8))
        .clamp(8, 64)
        .next_multiple_of(if tiles { 16 } else { 8 });
    let mut starts = Vec::with_capacity(jobs.len());
    let mut n_chunks = 0;
    for j in jobs.iter() {
        starts.push(n_chunks);
        n_chunks += j.w.rows.div_ceil(chunk);
    }
    let outs: Vec<SyncOut> = jobs
        .iter_mut()
        .map(|j| {
            SyncOut(OutPtr {
                ptr: j.out.as_mut_ptr(),
                ld: j.w.rows,
            })
        })
        .collect();
    let mats: Vec<QMatrix<'_>> = jobs.iter().map(|j| j.w).collect();
    let run = |token_rows: Option<&[i8]>| {
        let layout = (&starts[..], n_chunks, chunk, groups);
        run_chunks(
            isa,
            pool,
            &mats,
            &outs,
            layout,
            (x, xq, token_rows),
            n_tokens,
        );
    };
    if !tiles {
        return run(None);
    }
    TOKEN_ROWS.with_borrow_mut(|buf| {
        let len = n_tokens * cols;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let dst = SyncRows(buf.as_mut_ptr());
        let next = AtomicUsize::new(0);
        pool.run(|_| {
            loop {
                let t0 = next.fetch_add(PACK_TOKENS, Ordering::Relaxed);
                if t0 >= n_tokens {
                    break;
                }
                let t1 = (t0 + PACK_TOKENS).min(n_tokens);
                // SAFETY: tokens t0..t1 are claimed by this thread alone, and their rows
                // lie inside the buffer (len = n_tokens × cols).
                let rows = unsafe {
                    std::slice::from_raw_parts_mut(dst.get().add(t0 * cols), (t1 - t0) * cols)
                };
                simd::pack_token_rows(xq, cols, t0..t1, rows);
            }
        });
        run(Some(&buf[..len]));
    });
}

thread_local! {
    /// The tile kernels' token rows (see [`token_rows_bytes`]), kept between products so
    /// that a forward pass does not fault in fresh pages for each one.
    static TOKEN_ROWS: std::cell::RefCell<Vec<i8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Tokens per claim when packing token rows.
const PACK_TOKENS: usize = 16;

/// Bytes a thread that runs [`matmul`] keeps for the tile kernels' token rows, at most,
/// for inputs of up to `values` quantized activation values (tokens × widest input): one
/// byte each where the tile kernels run on this CPU, else none.
pub fn token_rows_bytes(values: usize) -> u64 {
    let isa = Isa::detect();
    let any = simd::wants_token_rows(isa, WType::Q8_0, usize::MAX);
    if any { values as u64 } else { 0 }
}

struct SyncRows(*mut i8);
// SAFETY: threads write disjoint token ranges (claimed once from an atomic counter).
unsafe impl Sync for SyncRows {}

impl SyncRows {
    fn get(&self) -> *mut i8 {
        self.0
    }
}

/// Bytes of input a token group spans at most (one byte a value: the tile kernels'
/// token rows; the row panels' quantized blocks are a quarter larger): a thread's
/// consecutive chunks of one group then find its input in L2 (see [`token_groups`]).
const GROUP_ROWS_BYTES: usize = 1 << 20;

/// How many near-equal groups of tokens a product's chunks split `n_tokens` into.
///
/// The kernels stream every token of their call past each tile of rows; with the rows cut
/// into chunks for the threads, a chunk that took every token would read all of them
/// from beyond L2 again (a prompt of 512 tokens × 4,864 values is 2.4 MiB of token
/// rows), so a product whose input outgrows [`GROUP_ROWS_BYTES`] is cut by tokens too.
/// Chunks are claimed group by group, so a thread's next chunk mostly reads the group it
/// just read. Every group keeps 16 tokens or more (the tile kernels' least); a token's
/// sums do not depend on its group, so neither do the bits.
fn token_groups(n_tokens: usize, cols: usize) -> usize {
    let by_bytes = (n_tokens * cols).div_ceil(GROUP_ROWS_BYTES);
    by_bytes.min(n_tokens / 16).max(1)
}

/// Runs the row chunks of every job on the pool, for each of `groups` near-equal token
/// groups in turn: item `c` is group `c / n_chunks`'s tokens and chunk `c % n_chunks`,
/// which is rows `(k - starts[j]) · chunk..` of the job `j` it falls in.
fn run_chunks(
    isa: Isa,
    pool: &ThreadPool,
    mats: &[QMatrix<'_>],
    outs: &[SyncOut],
    (starts, n_chunks, chunk, groups): (&[usize], usize, usize, usize),
    (x, xq, token_rows): (&[f32], &[BlockQ8], Option<&[i8]>),
    n_tokens: usize,
) {
    let cols = mats[0].cols;
    let next = AtomicUsize::new(0);
    pool.run(|_| {
        loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= n_chunks * groups {
                break;
            }
            let (g, k) = (c / n_chunks, c % n_chunks);
            let (t0, t1) = (g * n_tokens / groups, (g + 1) * n_tokens / groups);
            let ji = starts.partition_point(|&s| s <= k) - 1;
            let w = &mats[ji];
            let r0 = (k - starts[ji]) * chunk;
            let rows = r0..(r0 + chunk).min(w.rows);
            let out = outs[ji].get();
            let out = OutPtr {
                ptr: out.ptr.wrapping_add(t0 * out.ld),
                ..out
            };
            let n = t1 - t0;
            // SAFETY: item `c` is claimed by exactly one thread, so rows `rows` of
            // tokens t0..t1 of this output are written by it alone; sizes were checked
            // above, and the inputs are sliced at token t0.
            unsafe {
                if w.wtype.uses_q8_activations() {
                    let blocks = cols / 32;
                    let rows_of = token_rows.map(|r| &r[t0 * cols..t1 * cols]);
                    let acts = &xq[t0 * blocks..t1 * blocks];
                    simd::gemm_q8(isa, w.rows_ref(), rows, acts, rows_of, n, out);
                } else {
                    let x = &x[t0 * cols..t1 * cols];
                    simd::gemm_f32(isa, w.rows_ref(), rows, x, n, out);
                }
            }
        }
    });
}
