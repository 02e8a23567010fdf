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
//! (dequantizing int8/4/2-bit codes on the way: no block is ever copied out in f16). A
//! prompt's f16 blocks go through the transposed-key kernel on AVX-512 (`avx2::attend_kt`),
//! 32 query tokens an item, the longest items first. When there are few query tokens
//! (decode), the keys are split at multiples of [`SPLIT_KEYS`] (more at long contexts)
//! and the partial results merged by their maxima and sums; the item that finishes a
//! (head, tile)'s last split merges it, so merging is spread over the threads as the
//! splits are. Decode calls whose splits cover the same f16 blocks (a prefix their
//! sequences share) are run as one unit that reads each such block once for all of them.
//!
//! How a call is cut depends on its shape and the block size alone, never on the thread
//! count or on the other calls of a batch, and each row goes through the same steps
//! whether or not it shares its blocks: a row's sums are formed in the same order on
//! any pool and in any batch.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Isa;
use crate::kvquant::{self, BlockGeom, KvBlock, KvFormat};
use crate::pool::ThreadPool;
use crate::simd;

mod block;
mod share;

use block::{
    attend_block_exact, attend_block_kt, attend_fast, attend_grouped, head_rows, kt_path,
    load_block,
};
use share::{run_shared, shared_units};

/// Largest head dimension supported (stack buffers are sized for it).
pub const MAX_HEAD_DIM: usize = 256;
/// Largest block size in tokens supported.
pub const MAX_BLOCK_TOKENS: usize = 32;
/// Query tokens per work item in a call that splits its keys (few query tokens).
const Q_TILE: usize = 4;
/// Query tokens per work item in a call that does not split its keys (a prompt): each
/// block is read and converted once for this many tokens' rows. A row's steps do not
/// depend on which rows share its item, so this changes no result. 32 rather than 16:
/// a block of a prompt's keys is converted half as often, 5% more of a core's
/// multiply-adds on 128-token prompts after 256 keys (Zen 4), and, where the keys come
/// from memory, half the reads.
const PROMPT_TILE: usize = 32;
/// Largest number of query heads sharing one KV head.
pub const MAX_GROUP: usize = 16;
/// Calls of at most this many query tokens split their keys.
pub const SPLIT_MAX_Q: usize = 2 * Q_TILE;
/// Keys per split: a call of few query tokens cuts its keys at multiples of this (of a
/// multiple of it past 32 splits), counted from key 0, so that sequences sharing a prefix
/// cut it alike. Each split's partial result costs a merge step of one head row, against
/// its keys' scores and values. The block size must divide it.
pub const SPLIT_KEYS: usize = 128;
/// Blocks of keys and values asked for ahead of use.
const PREFETCH_BLOCKS: usize = 4;
/// Splits of one (KV head, query tile), at most (one more where the keys a call sees
/// start off a split's edge): bounds the scratch and the merge at long contexts (32
/// splits of 1,024 keys at 32k).
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

    /// Query tokens per work item.
    fn tile(&self) -> usize {
        if splits_keys(self) {
            Q_TILE
        } else {
            PROMPT_TILE
        }
    }

    /// The first key the query at position `pos` sees.
    fn first_key(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }
}

/// f32 scratch the caller must provide for [`attention`], in elements.
pub fn scratch_len(shape: &AttnShape, head_dim: usize) -> usize {
    let (items, _, _) = plan(shape);
    items * shape.group() * shape.tile().min(shape.n_q.max(1)) * (head_dim + 2)
}

/// Whether [`attention`] splits one query row's keys across work items for `shape` (it
/// does for calls of few query tokens), merging partial softmaxes. When it does not, each
/// query row is computed alone, in the same order whatever the other rows of the call: a
/// row's result then does not depend on how the tokens were cut into calls, only on the
/// row and the cache.
pub fn splits_keys(shape: &AttnShape) -> bool {
    shape.n_q <= SPLIT_MAX_Q
}

/// Returns (work items, key splits per (head, tile), query tiles). A call that splits
/// its keys cuts them at multiples of [`split_width`] counted from key 0, so calls that
/// see the same first keys cut them in the same places ([`attention_many`] reads such
/// shared blocks once for all of them); a tile's split outside its keys gets no blocks,
/// and its empty partial rows are skipped by the merge.
fn plan(shape: &AttnShape) -> (usize, usize, usize) {
    let q_tiles = shape.n_q.div_ceil(shape.tile());
    let base = shape.n_kv_heads * q_tiles;
    if q_tiles == 0 {
        return (0, 1, 0);
    }
    let splits = if splits_keys(shape) {
        let w = split_width(shape);
        (shape.pos0 + shape.n_q - 1) / w - shape.first_key(shape.pos0) / w + 1
    } else {
        1
    };
    (base * splits, splits, q_tiles)
}

/// Keys per split of a call that splits its keys: [`SPLIT_KEYS`], times as much as keeps
/// the keys the call sees within [`MAX_SPLITS`] splits (one more where they start off a
/// split's edge).
fn split_width(shape: &AttnShape) -> usize {
    let seen = shape.pos0 + shape.n_q - shape.first_key(shape.pos0);
    SPLIT_KEYS * seen.div_ceil(SPLIT_KEYS * MAX_SPLITS).max(1)
}

/// The blocks `b0..b1` (possibly none) that split `split` of query tile `tile` reads:
/// the tile's blocks, from the one holding its first query's first key to the one
/// holding its last query, cut at multiples of [`split_width`] when the call splits.
fn split_blocks(shape: &AttnShape, bt: usize, tile: usize, split: usize) -> (usize, usize) {
    let t0 = tile * shape.tile();
    let nt = shape.tile().min(shape.n_q - t0);
    let n_blocks = (shape.pos0 + t0 + nt - 1) / bt + 1;
    let first_block = shape.first_key(shape.pos0 + t0) / bt;
    if !splits_keys(shape) {
        return (first_block, n_blocks);
    }
    let w = split_width(shape);
    let s = shape.first_key(shape.pos0) / w + split;
    let (b0, b1) = (
        (s * w / bt).max(first_block),
        ((s + 1) * w / bt).min(n_blocks),
    );
    (b0, b1.max(b0))
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
    let tq = shape.tile().min(shape.n_q.max(1));
    let slot = g * tq * (hd + 2);
    let mut acc = [0.0f32; MAX_HEAD_DIM];
    let acc = &mut acc[..hd];
    let t0 = tile * shape.tile();
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

/// How one call of [`attention_many`] is cut.
#[derive(Clone, Copy)]
struct CallPlan {
    /// Its first work item, among all calls'.
    first: usize,
    /// Its first scratch element.
    base: usize,
    /// Key splits per (head, tile).
    splits: usize,
    q_tiles: usize,
    /// Scratch elements per work item.
    slot: usize,
    /// Its first (head, tile) among all calls'.
    group0: usize,
}

/// [`attention_many`] on a chosen instruction set.
pub fn attention_many_with(
    isa: Isa,
    pool: &ThreadPool,
    calls: &mut [AttnCall<'_>],
    scratch: &mut [f32],
) {
    let mut plans = Vec::with_capacity(calls.len());
    let (mut items, mut used, mut groups) = (0, 0, 0);
    for c in calls.iter() {
        check_call(c.q, &c.kv, &c.shape, c.out.len());
        let hd = c.kv.geom.head_dim;
        let (n, splits, q_tiles) = plan(&c.shape);
        let slot = c.shape.group() * c.shape.tile().min(c.shape.n_q.max(1)) * (hd + 2);
        plans.push(CallPlan {
            first: items,
            base: used,
            splits,
            q_tiles,
            slot,
            group0: groups,
        });
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
    let (members, units) = shared_units(&ins, &plans, items);
    let sp = SyncPtr(scratch.as_mut_ptr());
    let next = AtomicUsize::new(0);
    // Item `it`: its call, and its (head, tile, split) there.
    let locate = |it: usize| {
        let ci = plans.partition_point(|p| p.first <= it) - 1;
        let p = plans[ci];
        let local = it - p.first;
        let split = local % p.splits;
        let tile = (local / p.splits) % p.q_tiles;
        (ci, local, (local / p.splits / p.q_tiles, tile, split))
    };
    // Item `it`'s slot of the scratch; only the thread running the item's unit asks.
    let slot_of = |it: usize| {
        let (ci, local, _) = locate(it);
        let p = plans[ci];
        // SAFETY: item `it` owns its slot, inside the length asserted; one thread at a time.
        unsafe { std::slice::from_raw_parts_mut(sp.get().add(p.base + local * p.slot), p.slot) }
    };
    // Releases item `it`'s slot; the last split of its (head, tile) acquires all of them
    // and merges.
    let finish = |it: usize| {
        let (ci, local, (h, tile, split)) = locate(it);
        let p = plans[ci];
        let gi = p.group0 + local / p.splits;
        if done[gi].fetch_add(1, Ordering::AcqRel) + 1 == p.splits {
            let g0 = p.base + (local - split) * p.slot;
            let (_, kv, shape) = &ins[ci];
            // SAFETY: every split of this group has finished writing its slot (the
            // counter says so, with acquire ordering); no item writes them again. The
            // group's output rows are written by this merge alone.
            unsafe {
                let parts = std::slice::from_raw_parts(sp.get().add(g0), p.splits * p.slot);
                merge_group(
                    isa,
                    shape,
                    kv.geom.head_dim,
                    (h, tile, p.splits),
                    parts,
                    outs[ci].get(),
                );
            }
        }
    };
    pool.run(|_| {
        let mut kf = [0.0f32; MAX_BLOCK_TOKENS * MAX_HEAD_DIM];
        let mut vf = [0.0f32; MAX_BLOCK_TOKENS * MAX_HEAD_DIM];
        let mut sc = RowScratch::new();
        loop {
            let u = next.fetch_add(1, Ordering::Relaxed);
            if u >= units.len() {
                break;
            }
            let unit = &members[units[u].0 as usize..][..units[u].1 as usize];
            if let [it] = *unit {
                let (ci, _, hts) = locate(it as usize);
                let (q, kv, shape) = &ins[ci];
                run_item(
                    isa,
                    q,
                    kv,
                    shape,
                    hts,
                    slot_of(it as usize),
                    (&mut kf, &mut vf, &mut sc),
                );
            } else {
                run_shared(
                    isa,
                    unit,
                    &ins,
                    &locate,
                    &slot_of,
                    (&mut kf, &mut vf, &mut sc),
                );
            }
            for &it in unit {
                finish(it as usize);
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
    assert!(
        bt > 0 && SPLIT_KEYS.is_multiple_of(bt),
        "attention: blocks must divide a split"
    );
    assert_eq!(shape.n_heads % shape.n_kv_heads, 0);
    let n_keys = shape.pos0 + shape.n_q;
    assert!(
        kv.blocks.len() * bt >= n_keys,
        "attention: fewer blocks than keys"
    );
    let n = shape.n_q * shape.n_heads * hd;
    assert!(q.len() >= n && out_len >= n, "attention: buffers too short");
}

/// Query tokens `t0..t0 + nt` of tile `tile`.
fn tile_tokens(shape: &AttnShape, tile: usize) -> (usize, usize) {
    let t0 = tile * shape.tile();
    (t0, shape.tile().min(shape.n_q - t0))
}

/// Keys of block `b` that tile `tile` reads: up to its last query's position.
fn tile_keys(shape: &AttnShape, bt: usize, tile: usize, b: usize) -> usize {
    let (t0, nt) = tile_tokens(shape, tile);
    bt.min(shape.pos0 + t0 + nt - b * bt)
}

/// Every row's `[max, sum, acc]` of a work item's slot set to the empty softmax.
fn init_part(part: &mut [f32], rows: usize, hd: usize) {
    for p in part[..rows * (hd + 2)].chunks_exact_mut(hd + 2) {
        p[0] = f32::NEG_INFINITY;
        p[1] = 0.0;
        p[2..].iter_mut().for_each(|v| *v = 0.0);
    }
}

/// The keys `skip..end` of a block starting at key `j0` (of which `nk` are read) that
/// query token `t` of the call sees, if any: up to its own position, and under a window
/// not before its first key.
fn seen_keys(shape: &AttnShape, t: usize, j0: usize, nk: usize) -> Option<(usize, usize)> {
    let limit = shape.pos0 + t; // last key this query token may see
    if limit < j0 {
        return None;
    }
    let end = nk.min(limit + 1 - j0);
    let skip = shape.first_key(limit).saturating_sub(j0);
    (skip < end).then_some((skip, end))
}

/// A work item's stack scratch for [`block_rows`].
struct RowScratch {
    scores: [f32; MAX_BLOCK_TOKENS],
    ksm: [f32; 2 * MAX_HEAD_DIM],
    vsm: [f32; kvquant::V_SCALES],
    qs: [f32; MAX_HEAD_DIM],
}

impl RowScratch {
    fn new() -> Self {
        RowScratch {
            scores: [0.0; MAX_BLOCK_TOKENS],
            ksm: [0.0; 2 * MAX_HEAD_DIM],
            vsm: [0.0; kvquant::V_SCALES],
            qs: [0.0; MAX_HEAD_DIM],
        }
    }
}

/// One work item: rows = (query token in tile) × (query head in group); writes per row
/// `[max, sum, acc[head_dim]]` into `part`.
#[allow(clippy::too_many_arguments)]
fn run_item(
    isa: Isa,
    q: &[f32],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    (h, tile, split): (usize, usize, usize),
    part: &mut [f32],
    (kf, vf, sc): (&mut [f32], &mut [f32], &mut RowScratch),
) {
    let hd = kv.geom.head_dim;
    let bt = kv.geom.block_tokens;
    let (t0, nt) = tile_tokens(shape, tile);
    let (b0, b1) = split_blocks(shape, bt, tile, split);
    init_part(part, nt * shape.group(), hd);
    let keys_of = |b: usize| tile_keys(shape, bt, tile, b);
    // Few query rows (decode) would pay the transpose for three to seven rows a block:
    // measured slower than the row kernel, so only prompts take it.
    let kt = !splits_keys(shape) && kt_path(isa, hd, bt);
    // Blocks lie apart in memory, each too short for the hardware to see a stream: ask
    // for the first few at once, then keep that many ahead.
    for b in b0..b1.min(b0 + PREFETCH_BLOCKS) {
        head_rows(kv, b, h, keys_of(b)).prefetch();
    }
    for b in b0..b1 {
        let nk = keys_of(b);
        if b + PREFETCH_BLOCKS < b1 {
            let ahead = b + PREFETCH_BLOCKS;
            head_rows(kv, ahead, h, keys_of(ahead)).prefetch();
        }
        if kt && attend_block_kt(q, kv, shape, (b, h, t0, nt, nk), part, kf, vf) {
            continue;
        }
        let codes = load_block(isa, kv, b, h, nk, kf, vf, &mut sc.ksm, &mut sc.vsm);
        block_rows(
            isa,
            q,
            kv,
            shape,
            (b, h, t0, nt, nk),
            codes,
            (kf, vf),
            sc,
            part,
        );
    }
}

/// The rows of one tile (tokens `t0..t0 + nt`, KV head `h`'s query heads) through block
/// `b`, its first `nk` keys already converted into `kf`/`vf` (or left as codes, with
/// their scales in `sc`), each row through its visible keys alone.
#[allow(clippy::too_many_arguments)]
fn block_rows(
    isa: Isa,
    q: &[f32],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    (b, h, t0, nt, nk): (usize, usize, usize, usize, usize),
    codes: bool,
    (kf, vf): (&[f32], &[f32]),
    sc: &mut RowScratch,
    part: &mut [f32],
) {
    let hd = kv.geom.head_dim;
    let g = shape.group();
    let j0 = b * kv.geom.block_tokens;
    for ti in 0..nt {
        let Some((skip, end)) = seen_keys(shape, t0 + ti, j0, nk) else {
            continue;
        };
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
                for ((o, &x), &s) in sc.qs.iter_mut().zip(qr).zip(&sc.ksm[..hd]) {
                    *o = x * s;
                }
                let bias = simd::dot_f32(isa, qr, &sc.ksm[hd..2 * hd]);
                let per_row = 2 * hd / kvquant::V_GROUP;
                let vs = &sc.vsm[skip * per_row..end * per_row];
                let done = attend_fast(
                    isa,
                    &sc.qs[..hd],
                    bias,
                    kf,
                    vf,
                    Some(vs),
                    nv,
                    shape.scale,
                    p,
                );
                debug_assert!(done, "codes are only loaded for the fused kernel");
                continue;
            }
            if attend_fast(isa, qr, 0.0, kf, vf, None, nv, shape.scale, p) {
                continue;
            }
            let scores = &mut sc.scores;
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
