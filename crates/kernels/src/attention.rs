//! Causal grouped-query attention that reads K and V in place from paged blocks, f16 or
//! quantized ([`crate::kvquant`]).
//!
//! The cache hands in one view per block. Inside an f16 block, each layer's keys and
//! values for one KV head are `block_tokens × head_dim` contiguous f16 values (quantized
//! blocks keep the same per-(layer, head) grouping in chunks of codes and scales):
//!
//! ```text
//! block ─┬─ … ─┬─ K(layer, head h): [token 0: head_dim f16][token 1] … [token bt-1]
//!        │     │   at k_base + h · head_stride
//!        │     └─ V(layer, head h): same shape, at v_base + h · head_stride
//! ```
//!
//! Work is split into items of (KV head, tile of query tokens, range of key blocks); each
//! item runs an online softmax (running max and sum, as in FlashAttention) over its
//! blocks, converting each K/V block to f32 once for all the query rows of the tile
//! (dequantizing int8/4/2-bit codes on the way: no block is ever copied out in f16). When
//! there are few query tokens (decode), the keys are split into spans of about
//! [`SPLIT_KEYS`] or more and the partial results merged by their maxima and sums; the
//! item that finishes a (head, tile)'s last span merges it, so merging is spread over the
//! threads as the spans are.
//!
//! How a call is cut depends on its shape and the block size alone, never on the thread
//! count or on the other calls of a batch: a row's sums are formed in the same order on
//! any pool and in any batch.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Isa;
use crate::kvquant::{self, BlockGeom, KvBlock, KvFormat};
use crate::pool::ThreadPool;
use crate::simd;

/// Largest head dimension supported (stack buffers are sized for it).
pub const MAX_HEAD_DIM: usize = 256;
/// Largest block size in tokens supported.
pub const MAX_BLOCK_TOKENS: usize = 32;
/// Query tokens per work item in prefill.
const Q_TILE: usize = 4;
/// Largest number of query heads sharing one KV head.
pub const MAX_GROUP: usize = 16;
/// Calls of at most this many query tokens split their keys.
pub const SPLIT_MAX_Q: usize = 2 * Q_TILE;
/// Keys per split, about: a call of few query tokens splits `keys / SPLIT_KEYS` ways (at
/// least 1, at most 32), each split whole blocks. Each split's partial result costs a
/// merge step of one head row, against its keys' scores and values.
pub const SPLIT_KEYS: usize = 64;
/// Blocks of keys and values asked for ahead of use.
const PREFETCH_BLOCKS: usize = 4;
/// Most splits of one (KV head, query tile): bounds the scratch and the merge at long
/// contexts (32 splits of 1,024 keys at 32k).
const MAX_SPLITS: usize = 32;

/// One layer's view of a sequence's cache blocks.
#[derive(Clone, Copy, Debug)]
pub struct PagedKv<'a> {
    /// One view per block of the sequence, in order.
    pub blocks: &'a [KvBlock<'a>],
    /// Shape of every block.
    pub geom: BlockGeom,
    /// Which layer this call attends over.
    pub layer: usize,
}

/// Shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Query tokens in this call.
    pub n_q: usize,
    /// Position of the first query token; query `i` sees keys `0..=pos0 + i` (the last
    /// `window` of them under a window).
    pub pos0: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Usually `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// Sliding window: query at position `p` sees only keys `p + 1 - window ..= p`
    /// (`None`: all keys up to `p`).
    pub window: Option<usize>,
}

impl AttnShape {
    fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// The first key the query at position `pos` sees.
    fn first_key(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }
}

/// f32 scratch the caller must provide for [`attention`], in elements.
pub fn scratch_len(shape: &AttnShape, head_dim: usize) -> usize {
    let (items, _, _) = plan(shape);
    items * shape.group() * Q_TILE.min(shape.n_q.max(1)) * (head_dim + 2)
}

/// Whether [`attention`] splits one query row's keys across work items for `shape` (it
/// does for calls of few query tokens), merging partial softmaxes. When it does not, each
/// query row is computed alone, in the same order whatever the other rows of the call: a
/// row's result then does not depend on how the tokens were cut into calls, only on the
/// row and the cache.
pub fn splits_keys(shape: &AttnShape) -> bool {
    shape.n_q <= SPLIT_MAX_Q
}

/// Returns (work items, key splits per (head, tile), query tiles). A split takes an
/// even share of whole blocks ([`run_item`]); where the blocks do not divide evenly a
/// tile's last split may get none, and its empty partial rows are skipped by the merge.
fn plan(shape: &AttnShape) -> (usize, usize, usize) {
    let q_tiles = shape.n_q.div_ceil(Q_TILE);
    let base = shape.n_kv_heads * q_tiles;
    let splits = if splits_keys(shape) {
        ((shape.pos0 + shape.n_q) / SPLIT_KEYS).clamp(1, MAX_SPLITS)
    } else {
        1
    };
    (base * splits, splits, q_tiles)
}

struct SyncPtr(*mut f32);
// SAFETY: every work item writes only its own partial slot; the final merge writes
// disjoint output rows per (head, token).
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Attention for `shape.n_q` query tokens: `q` and `out` are `n_q × n_heads × head_dim`.
///
/// # Panics
/// If the shapes are inconsistent (head dim or group size over the limits, buffers too
/// short, fewer blocks than the keys need).
pub fn attention(
    pool: &ThreadPool,
    q: &[f32],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    attention_with(Isa::detect(), pool, q, kv, shape, scratch, out);
}

/// [`attention`] on a chosen instruction set.
pub fn attention_with(
    isa: Isa,
    pool: &ThreadPool,
    q: &[f32],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let call = AttnCall {
        q,
        kv: *kv,
        shape: *shape,
        out,
    };
    attention_many_with(isa, pool, &mut [call], scratch);
}

/// Merges the key splits of KV head `h`, query tile `tile` of one call from its items'
/// slots (`[max, sum, acc]` per row, as [`run_item`] leaves them; `parts` starts at the
/// group's first split) into the output rows: token `t`, head `head` at
/// `out[(t · n_heads + head) · hd..]`.
///
/// # Safety
/// `out` must be valid for writes of those rows, and no other thread may touch them.
unsafe fn merge_group(
    isa: Isa,
    shape: &AttnShape,
    hd: usize,
    (h, tile, splits): (usize, usize, usize),
    parts: &[f32],
    out: *mut f32,
) {
    let g = shape.group();
    let tq = Q_TILE.min(shape.n_q.max(1));
    let slot = g * tq * (hd + 2);
    let mut acc = [0.0f32; MAX_HEAD_DIM];
    let acc = &mut acc[..hd];
    let t0 = tile * Q_TILE;
    for ti in 0..tq.min(shape.n_q - t0) {
        for gi in 0..g {
            let row = ti * g + gi;
            let mut m = f32::NEG_INFINITY;
            for s in 0..splits {
                m = m.max(parts[s * slot + row * (hd + 2)]);
            }
            acc.iter_mut().for_each(|a| *a = 0.0);
            let mut l = 0.0f32;
            for s in 0..splits {
                let p = &parts[s * slot + row * (hd + 2)..];
                if p[1] == 0.0 {
                    continue;
                }
                let c = (p[0] - m).exp();
                l += p[1] * c;
                simd::axpy(isa, c, &p[2..2 + hd], acc);
            }
            let head = h * g + gi;
            // SAFETY: the caller hands this group's rows to this call alone.
            let o = unsafe {
                std::slice::from_raw_parts_mut(out.add(((t0 + ti) * shape.n_heads + head) * hd), hd)
            };
            let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
            for (ov, av) in o.iter_mut().zip(acc.iter()) {
                *ov = av * inv;
            }
        }
    }
}

/// One sequence's share of [`attention_many`]: its queries (`n_q × n_heads × head_dim`),
/// its blocks, its shape, and where its output rows go.
#[derive(Debug)]
pub struct AttnCall<'a> {
    pub q: &'a [f32],
    pub kv: PagedKv<'a>,
    pub shape: AttnShape,
    pub out: &'a mut [f32],
}

/// f32 scratch [`attention_many`] needs for calls of these shapes, in elements.
pub fn scratch_len_many<'s>(
    shapes: impl IntoIterator<Item = &'s AttnShape>,
    head_dim: usize,
) -> usize {
    shapes.into_iter().map(|s| scratch_len(s, head_dim)).sum()
}

/// [`attention`] for many sequences in one dispatch: every call's work items (KV head,
/// query tile, key split) go into one pool job, so a batch of single-token sequences
/// shares the threads across (sequence, head) pairs instead of waking them once per
/// sequence. Each call is split and merged exactly as [`attention`] would split it on
/// this pool, so its output is bit for bit what [`attention`] gives.
///
/// # Panics
/// As [`attention`], for any call; or if `scratch` is shorter than [`scratch_len_many`].
pub fn attention_many(pool: &ThreadPool, calls: &mut [AttnCall<'_>], scratch: &mut [f32]) {
    attention_many_with(Isa::detect(), pool, calls, scratch);
}

/// [`attention_many`] on a chosen instruction set.
pub fn attention_many_with(
    isa: Isa,
    pool: &ThreadPool,
    calls: &mut [AttnCall<'_>],
    scratch: &mut [f32],
) {
    // Per call: (first item, first scratch element, splits, query tiles, slot, first
    // (head, tile) group).
    let mut plans = Vec::with_capacity(calls.len());
    let (mut items, mut used, mut groups) = (0, 0, 0);
    for c in calls.iter() {
        check_call(c.q, &c.kv, &c.shape, c.out.len());
        let hd = c.kv.geom.head_dim;
        let (n, splits, q_tiles) = plan(&c.shape);
        let slot = c.shape.group() * Q_TILE.min(c.shape.n_q.max(1)) * (hd + 2);
        plans.push((items, used, splits, q_tiles, slot, groups));
        items += n;
        used += n * slot;
        groups += n / splits;
    }
    assert!(scratch.len() >= used, "attention: scratch too short");
    // Splits of each (head, tile) done so far: the item that finishes the last merges.
    let done: Vec<AtomicUsize> = (0..groups).map(|_| AtomicUsize::new(0)).collect();
    let outs: Vec<SyncPtr> = calls
        .iter_mut()
        .map(|c| SyncPtr(c.out.as_mut_ptr()))
        .collect();
    let ins: Vec<(&[f32], PagedKv<'_>, AttnShape)> =
        calls.iter().map(|c| (c.q, c.kv, c.shape)).collect();
    let sp = SyncPtr(scratch.as_mut_ptr());
    let next = AtomicUsize::new(0);
    pool.run(|_| {
        let mut kf = [0.0f32; MAX_BLOCK_TOKENS * MAX_HEAD_DIM];
        let mut vf = [0.0f32; MAX_BLOCK_TOKENS * MAX_HEAD_DIM];
        loop {
            let it = next.fetch_add(1, Ordering::Relaxed);
            if it >= items {
                break;
            }
            let ci = plans.partition_point(|p| p.0 <= it) - 1;
            let (first, base, splits, q_tiles, slot, group0) = plans[ci];
            let local = it - first;
            let split = local % splits;
            let tile = (local / splits) % q_tiles;
            let h = local / splits / q_tiles;
            // SAFETY: item `it` owns its slot of the scratch, inside the length asserted.
            let part =
                unsafe { std::slice::from_raw_parts_mut(sp.get().add(base + local * slot), slot) };
            let (q, kv, shape) = &ins[ci];
            run_item(
                isa,
                q,
                kv,
                shape,
                (h, tile, split, splits),
                part,
                &mut kf,
                &mut vf,
            );
            // Release this item's slot; the last of the group acquires all of them.
            let gi = group0 + local / splits;
            if done[gi].fetch_add(1, Ordering::AcqRel) + 1 == splits {
                let g0 = base + (local - split) * slot;
                // SAFETY: every split of this group has finished writing its slot (the
                // counter says so, with acquire ordering); no item writes them again. The
                // group's output rows are written by this merge alone.
                unsafe {
                    let parts = std::slice::from_raw_parts(sp.get().add(g0), splits * slot);
                    merge_group(
                        isa,
                        shape,
                        kv.geom.head_dim,
                        (h, tile, splits),
                        parts,
                        outs[ci].get(),
                    );
                }
            }
        }
    });
}

/// Checks one call's shapes (see [`attention`]'s panics).
fn check_call(q: &[f32], kv: &PagedKv<'_>, shape: &AttnShape, out_len: usize) {
    let hd = kv.geom.head_dim;
    let bt = kv.geom.block_tokens;
    let g = shape.group();
    assert_eq!(kv.geom.n_kv_heads, shape.n_kv_heads);
    assert!(kv.layer < kv.geom.n_layers);
    assert!(hd <= MAX_HEAD_DIM && bt <= MAX_BLOCK_TOKENS && (1..=MAX_GROUP).contains(&g));
    assert_eq!(shape.n_heads % shape.n_kv_heads, 0);
    let n_keys = shape.pos0 + shape.n_q;
    assert!(
        kv.blocks.len() * bt >= n_keys,
        "attention: fewer blocks than keys"
    );
    let n = shape.n_q * shape.n_heads * hd;
    assert!(q.len() >= n && out_len >= n, "attention: buffers too short");
}

/// One work item: rows = (query token in tile) × (query head in group); writes per row
/// `[max, sum, acc[head_dim]]` into `part`.
#[allow(clippy::too_many_arguments)]
fn run_item(
    isa: Isa,
    q: &[f32],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    (h, tile, split, splits): (usize, usize, usize, usize),
    part: &mut [f32],
    kf: &mut [f32],
    vf: &mut [f32],
) {
    let hd = kv.geom.head_dim;
    let bt = kv.geom.block_tokens;
    let g = shape.group();
    let t0 = tile * Q_TILE;
    let nt = Q_TILE.min(shape.n_q - t0);
    let rows = nt * g;
    // Keys this tile can see at most (from its first query's first key, under a
    // window), then this split's share of their blocks.
    let last_key = shape.pos0 + t0 + nt - 1;
    let n_blocks = last_key / bt + 1;
    let first_block = shape.first_key(shape.pos0 + t0) / bt;
    let span = n_blocks - first_block;
    let per = span.div_ceil(splits);
    let (b0, b1) = (
        first_block + (split * per).min(span),
        first_block + ((split + 1) * per).min(span),
    );
    for r in 0..rows {
        let p = &mut part[r * (hd + 2)..(r + 1) * (hd + 2)];
        p[0] = f32::NEG_INFINITY;
        p[1] = 0.0;
        p[2..].iter_mut().for_each(|v| *v = 0.0);
    }
    let mut scores = [0.0f32; MAX_BLOCK_TOKENS];
    let mut ksm = [0.0f32; 2 * MAX_HEAD_DIM];
    let mut vsm = [0.0f32; kvquant::V_SCALES];
    let mut qs = [0.0f32; MAX_HEAD_DIM];
    // Blocks lie apart in memory, each too short for the hardware to see a stream: ask
    // for the first few at once, then keep that many ahead.
    // Keys of block `b` this tile reads.
    let keys_of = |b: usize| bt.min(last_key + 1 - b * bt);
    for b in b0..b1.min(b0 + PREFETCH_BLOCKS) {
        head_rows(kv, b, h, keys_of(b)).prefetch();
    }
    for b in b0..b1 {
        let j0 = b * bt;
        let nk = keys_of(b);
        if b + PREFETCH_BLOCKS < b1 {
            let ahead = b + PREFETCH_BLOCKS;
            head_rows(kv, ahead, h, keys_of(ahead)).prefetch();
        }
        let codes = load_block(isa, kv, b, h, nk, kf, vf, &mut ksm, &mut vsm);
        for ti in 0..nt {
            let limit = shape.pos0 + t0 + ti; // last key this query token may see
            if limit < j0 {
                continue;
            }
            let end = nk.min(limit + 1 - j0);
            // Under a window the block's first `skip` keys are out of this query's sight.
            let skip = shape.first_key(limit).saturating_sub(j0);
            if skip >= end {
                continue;
            }
            let nv = end - skip;
            let (kf, vf) = (&kf[skip * hd..], &vf[skip * hd..]);
            if !codes && attend_grouped(isa, q, (h, t0 + ti, ti), shape, (kf, vf), (hd, nv), part) {
                continue;
            }
            for gi in 0..g {
                let head = h * g + gi;
                let qr = &q[((t0 + ti) * shape.n_heads + head) * hd..][..hd];
                let p = &mut part[(ti * g + gi) * (hd + 2)..][..hd + 2];
                if codes {
                    // Key scales folded into the query: q·(c·s + m) = (q⊙s)·c + q·m.
                    for ((o, &x), &sc) in qs.iter_mut().zip(qr).zip(&ksm[..hd]) {
                        *o = x * sc;
                    }
                    let bias = simd::dot_f32(isa, qr, &ksm[hd..2 * hd]);
                    let per_row = 2 * hd / kvquant::V_GROUP;
                    let vs = &vsm[skip * per_row..end * per_row];
                    let done =
                        attend_fast(isa, &qs[..hd], bias, kf, vf, Some(vs), nv, shape.scale, p);
                    debug_assert!(done, "codes are only loaded for the fused kernel");
                    continue;
                }
                if attend_fast(isa, qr, 0.0, kf, vf, None, nv, shape.scale, p) {
                    continue;
                }
                let mut bmax = f32::NEG_INFINITY;
                for j in 0..nv {
                    let s = simd::dot_f32(isa, qr, &kf[j * hd..(j + 1) * hd]) * shape.scale;
                    scores[j] = s;
                    bmax = bmax.max(s);
                }
                let m_new = p[0].max(bmax);
                if p[1] > 0.0 {
                    let c = (p[0] - m_new).exp();
                    p[1] *= c;
                    p[2..].iter_mut().for_each(|v| *v *= c);
                }
                p[0] = m_new;
                p[1] += simd::exp_sub_sum(isa, &mut scores[..nv], m_new);
                for j in 0..nv {
                    simd::axpy(isa, scores[j], &vf[j * hd..(j + 1) * hd], &mut p[2..]);
                }
            }
        }
    }
}

/// Where KV head `h`'s part of block `b` lies: its first `nk` keys and values as f16
/// rows, or its key and value code chunks (quantized).
enum HeadRows<'a> {
    F16 {
        k: &'a [u16],
        v: &'a [u16],
    },
    Quant {
        f: KvFormat,
        k: &'a [u8],
        v: &'a [u8],
    },
}

fn head_rows<'a>(kv: &PagedKv<'a>, b: usize, h: usize, nk: usize) -> HeadRows<'a> {
    let g = &kv.geom;
    let n = nk * g.head_dim;
    let (blk, koff, voff) = match kv.blocks[b] {
        KvBlock::F16(blk) => (
            blk,
            g.f16_k_base(kv.layer) + h * g.head_stride(),
            g.f16_v_base(kv.layer) + h * g.head_stride(),
        ),
        KvBlock::F16Layer(blk) => (
            blk,
            h * g.head_stride(),
            (g.n_kv_heads + h) * g.head_stride(),
        ),
        KvBlock::Quant(f, blk) => {
            let (ko, vo) = (g.q_k_offset(f, kv.layer, h), g.q_v_offset(f, kv.layer, h));
            return HeadRows::Quant {
                f,
                k: &blk[ko..ko + g.k_chunk_bytes(f)],
                v: &blk[vo..vo + g.v_chunk_bytes(f)],
            };
        }
    };
    HeadRows::F16 {
        k: &blk[koff..koff + n],
        v: &blk[voff..voff + n],
    }
}

impl HeadRows<'_> {
    /// Asks for these rows to be brought into cache.
    fn prefetch(&self) {
        match self {
            HeadRows::F16 { k, v } => {
                simd::prefetch(k);
                simd::prefetch(v);
            }
            HeadRows::Quant { k, v, .. } => {
                simd::prefetch(k);
                simd::prefetch(v);
            }
        }
    }
}

/// Converts block `b`'s first `nk` keys and values of KV head `h` to f32 rows. A
/// quantized block is left as codes when the fused kernel can weigh them itself
/// ([`fused`]): returns `true`, with the key scales and minima in `ksm` and the values'
/// per-group ones in `vsm` (see [`kvquant::k_codes`], [`kvquant::v_codes`]); otherwise it
/// is dequantized in the tiles.
#[allow(clippy::too_many_arguments)]
fn load_block(
    isa: Isa,
    kv: &PagedKv<'_>,
    b: usize,
    h: usize,
    nk: usize,
    kf: &mut [f32],
    vf: &mut [f32],
    ksm: &mut [f32],
    vsm: &mut [f32],
) -> bool {
    let g = &kv.geom;
    let n = nk * g.head_dim;
    match head_rows(kv, b, h, nk) {
        HeadRows::F16 { k, v } => {
            simd::f16_to_f32(isa, k, &mut kf[..n]);
            simd::f16_to_f32(isa, v, &mut vf[..n]);
            false
        }
        HeadRows::Quant { f, k, v } => {
            if fused(isa, g.head_dim) {
                kvquant::k_codes(isa, f, g, k, nk, kf, ksm);
                kvquant::v_codes(isa, f, g, v, nk, vf, vsm);
                true
            } else {
                kvquant::dequantize_k(isa, f, g, k, nk, kf);
                kvquant::dequantize_v(isa, f, g, v, nk, vf);
                false
            }
        }
    }
}

/// Whether [`attend_fast`] handles rows of `hd` on `isa`.
fn fused(isa: Isa, hd: usize) -> bool {
    cfg!(target_arch = "x86_64") && isa == Isa::Avx2 && (hd == 64 || hd == 128)
}

/// Whether [`attend_grouped`] handles rows of `hd` on `isa`: the heads the fused kernel
/// does not take, in whole 16-value steps.
#[cfg(target_arch = "x86_64")]
fn grouped(isa: Isa, hd: usize) -> bool {
    isa == Isa::Avx2 && hd.is_multiple_of(16) && !fused(isa, hd)
}

/// The query heads of KV head `h` for query token `t` (row `ti` of the tile's `part`)
/// through one block's `nv` f32 keys and values at once, if this ISA has a kernel for
/// heads of `hd` (see `avx2::attend_group`); `false` = not handled.
fn attend_grouped(
    isa: Isa,
    q: &[f32],
    (h, t, ti): (usize, usize, usize),
    shape: &AttnShape,
    (kf, vf): (&[f32], &[f32]),
    (hd, nv): (usize, usize),
    part: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if grouped(isa, hd) {
        let g = shape.group();
        let qr = &q[(t * shape.n_heads + h * g) * hd..][..g * hd];
        let p = &mut part[ti * g * (hd + 2)..][..g * (hd + 2)];
        // SAFETY: AVX2 detected; hd is a multiple of 16, nv ≤ the block's tokens (≤ 32),
        // qr holds g rows of hd, p g rows of hd + 2, kf/vf at least nv rows.
        unsafe { simd::avx2::attend_group(qr, g, (kf, vf), (hd, nv), shape.scale, p) };
        return true;
    }
    let _ = (isa, q, h, t, ti, shape, kf, vf, hd, nv, part);
    false
}

/// The fused kernel for common head sizes, if this ISA has one; `false` = not handled.
/// With `vsm`, `kf`/`vf` hold codes: `q` carries the key scales, `bias` the key minima
/// (see `avx2::attend_block`).
#[allow(clippy::too_many_arguments)]
fn attend_fast(
    isa: Isa,
    q: &[f32],
    bias: f32,
    kf: &[f32],
    vf: &[f32],
    vsm: Option<&[f32]>,
    nv: usize,
    scale: f32,
    p: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if fused(isa, q.len()) {
        // The AVX-512 build where the CPU has it (the same results, more registers).
        // SAFETY: AVX2 detected, AVX-512 asked; lengths: q and p sized by head_dim, kf/vf
        // hold nv rows, vsm (with codes) two values per (row, group of 32).
        unsafe {
            use simd::avx2::{attend_block, attend_block_wide, has_avx512};
            match (q.len(), has_avx512()) {
                (64, false) => attend_block::<8>(q, bias, kf, vf, vsm, nv, scale, p),
                (64, true) => attend_block_wide::<8>(q, bias, kf, vf, vsm, nv, scale, p),
                (_, false) => attend_block::<16>(q, bias, kf, vf, vsm, nv, scale, p),
                (_, true) => attend_block_wide::<16>(q, bias, kf, vf, vsm, nv, scale, p),
            }
        }
        return true;
    }
    let _ = (isa, q, bias, kf, vf, vsm, nv, scale, p);
    false
}
