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
//! there are few query tokens (decode), the keys are split across threads and the partial
//! results merged by their maxima and sums.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Isa;
use crate::kvquant::{self, BlockGeom, KvBlock};
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
    /// Position of the first query token; query `i` sees keys `0..=pos0 + i`.
    pub pos0: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Usually `1 / sqrt(head_dim)`.
    pub scale: f32,
}

impl AttnShape {
    fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

/// f32 scratch the caller must provide for [`attention`], in elements.
pub fn scratch_len(shape: &AttnShape, head_dim: usize, n_threads: usize) -> usize {
    let (items, _, _) = plan(shape, head_dim, 16, n_threads);
    items * shape.group() * Q_TILE.min(shape.n_q.max(1)) * (head_dim + 2)
}

/// Returns (work items, key splits per (head, tile), query tiles).
fn plan(shape: &AttnShape, _hd: usize, bt: usize, n_threads: usize) -> (usize, usize, usize) {
    let q_tiles = shape.n_q.div_ceil(Q_TILE);
    let base = shape.n_kv_heads * q_tiles;
    let n_blocks = (shape.pos0 + shape.n_q).div_ceil(bt).max(1);
    let splits = if base >= 4 * n_threads {
        1
    } else {
        (4 * n_threads).div_ceil(base).min(n_blocks)
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
    attention_mass_with(isa, pool, q, kv, shape, scratch, out, None);
}

/// [`attention`], also adding to `mass[b]` the attention mass block `b` received: the
/// softmax probability its keys got, summed over every query token and query head of
/// this call (so the masses of one call sum to `n_q · n_heads`). Costs two `exp` per
/// (query row, block) and a small buffer; for policies that keep what is attended to.
///
/// # Panics
/// As [`attention`]; and if `mass` is shorter than the blocks the keys need.
#[allow(clippy::too_many_arguments)]
pub fn attention_mass(
    pool: &ThreadPool,
    q: &[f32],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scratch: &mut [f32],
    out: &mut [f32],
    mass: &mut [f32],
) {
    attention_mass_with(Isa::detect(), pool, q, kv, shape, scratch, out, Some(mass));
}

/// [`attention_mass`] on a chosen instruction set, the mass optional.
#[allow(clippy::too_many_arguments)]
pub fn attention_mass_with(
    isa: Isa,
    pool: &ThreadPool,
    q: &[f32],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scratch: &mut [f32],
    out: &mut [f32],
    mut mass: Option<&mut [f32]>,
) {
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
    assert!(q.len() >= shape.n_q * shape.n_heads * hd && out.len() >= q.len());
    let (items, splits, q_tiles) = plan(shape, hd, bt, pool.n_threads());
    let tq = Q_TILE.min(shape.n_q.max(1));
    let slot = g * tq * (hd + 2);
    assert!(
        scratch.len() >= items * slot,
        "attention: scratch too short"
    );
    let sp = SyncPtr(scratch.as_mut_ptr());
    let next = AtomicUsize::new(0);
    // Attention mass: a split-free item knows its rows' final maxima and sums and adds
    // its blocks' masses to a per-thread total; split items leave each block's sum,
    // relative to the item's own maximum, for the merge below to scale.
    let n_blocks = n_keys.div_ceil(bt);
    let rows = g * tq;
    let want_mass = mass.is_some();
    if let Some(m) = &mass {
        assert!(
            m.len() >= n_blocks,
            "attention: mass shorter than the blocks"
        );
    }
    let mut rel = vec![
        0.0f32;
        if want_mass && splits > 1 {
            items * rows * n_blocks
        } else {
            0
        }
    ];
    let rp = SyncPtr(rel.as_mut_ptr());
    let totals = std::sync::Mutex::new(vec![0.0f32; if want_mass { n_blocks } else { 0 }]);
    pool.run(|_| {
        let mut kf = [0.0f32; MAX_BLOCK_TOKENS * MAX_HEAD_DIM];
        let mut vf = [0.0f32; MAX_BLOCK_TOKENS * MAX_HEAD_DIM];
        let mut rec = want_mass.then(|| MassRec {
            sums: Vec::new(),
            total: vec![0.0f32; n_blocks],
        });
        loop {
            let it = next.fetch_add(1, Ordering::Relaxed);
            if it >= items {
                break;
            }
            let split = it % splits;
            let tile = (it / splits) % q_tiles;
            let h = it / splits / q_tiles;
            // SAFETY: item `it` owns scratch[it*slot .. (it+1)*slot].
            let part = unsafe { std::slice::from_raw_parts_mut(sp.get().add(it * slot), slot) };
            let (b0, b1) = run_item(
                isa,
                q,
                kv,
                shape,
                (h, tile, split, splits),
                part,
                &mut kf,
                &mut vf,
                rec.as_mut(),
            );
            if let Some(r) = rec.as_mut() {
                let n_rows = r.sums.len() / (2 * (b1 - b0)).max(1);
                for row in 0..n_rows {
                    let (m_fin, l_fin) = (part[row * (hd + 2)], part[row * (hd + 2) + 1]);
                    if l_fin <= 0.0 {
                        continue;
                    }
                    for b in b0..b1 {
                        let i = 2 * (row * (b1 - b0) + b - b0);
                        let (m_b, s_b) = (r.sums[i], r.sums[i + 1]);
                        if s_b <= 0.0 {
                            continue;
                        }
                        let w = s_b * (m_b - m_fin).exp();
                        if splits == 1 {
                            r.total[b] += w / l_fin;
                        } else {
                            // SAFETY: item `it` owns rel[it·rows·n_blocks ..][.. rows·n_blocks].
                            unsafe { *rp.get().add((it * rows + row) * n_blocks + b) = w };
                        }
                    }
                }
            }
        }
        if let Some(r) = rec {
            let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
            for (a, b) in t.iter_mut().zip(&r.total) {
                *a += b;
            }
        }
    });
    if let Some(m) = mass.as_deref_mut() {
        for (a, b) in m
            .iter_mut()
            .zip(totals.into_inner().unwrap_or_else(|e| e.into_inner()))
        {
            *a += b;
        }
    }
    // Merge the splits of each (head, tile) into the output.
    let mut acc = vec![0.0f32; hd];
    for h in 0..shape.n_kv_heads {
        for tile in 0..q_tiles {
            let t0 = tile * Q_TILE;
            for ti in 0..tq.min(shape.n_q - t0) {
                for gi in 0..g {
                    let row = ti * g + gi;
                    let mut m = f32::NEG_INFINITY;
                    for s in 0..splits {
                        let p = &scratch[((h * q_tiles + tile) * splits + s) * slot..];
                        m = m.max(p[row * (hd + 2)]);
                    }
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    let mut l = 0.0f32;
                    for s in 0..splits {
                        let p =
                            &scratch[((h * q_tiles + tile) * splits + s) * slot + row * (hd + 2)..];
                        if p[1] == 0.0 {
                            continue;
                        }
                        let c = (p[0] - m).exp();
                        l += p[1] * c;
                        simd::axpy(isa, c, &p[2..2 + hd], &mut acc);
                    }
                    let head = h * g + gi;
                    let o = &mut out[((t0 + ti) * shape.n_heads + head) * hd..][..hd];
                    let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
                    if let (Some(ms), true) = (mass.as_deref_mut(), splits > 1) {
                        for sp_i in 0..splits {
                            let it = (h * q_tiles + tile) * splits + sp_i;
                            let p = &scratch[it * slot + row * (hd + 2)..];
                            if p[1] == 0.0 {
                                continue;
                            }
                            let c = (p[0] - m).exp() * inv;
                            let ws = &rel[(it * rows + row) * n_blocks..][..n_blocks];
                            for (a, &w) in ms.iter_mut().zip(ws) {
                                *a += w * c;
                            }
                        }
                    }
                    for (ov, av) in o.iter_mut().zip(&acc) {
                        *ov = av * inv;
                    }
                }
            }
        }
    }
}

/// Per-thread record of attention mass: each (row, block) of the current item's
/// running maximum and the block's sum at that maximum, and the thread's total per block.
struct MassRec {
    sums: Vec<f32>,
    total: Vec<f32>,
}

/// One work item: rows = (query token in tile) × (query head in group); writes per row
/// `[max, sum, acc[head_dim]]` into `part`. Returns the blocks it covered; with `rec`,
/// records each (row, block)'s `(max after the block, the block's sum at that max)`.
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
    mut rec: Option<&mut MassRec>,
) -> (usize, usize) {
    let hd = kv.geom.head_dim;
    let bt = kv.geom.block_tokens;
    let g = shape.group();
    let t0 = tile * Q_TILE;
    let nt = Q_TILE.min(shape.n_q - t0);
    let rows = nt * g;
    // Keys this tile can see at most, then this split's share of their blocks.
    let last_key = shape.pos0 + t0 + nt - 1;
    let n_blocks = last_key / bt + 1;
    let per = n_blocks.div_ceil(splits);
    let (b0, b1) = (
        (split * per).min(n_blocks),
        ((split + 1) * per).min(n_blocks),
    );
    for r in 0..rows {
        let p = &mut part[r * (hd + 2)..(r + 1) * (hd + 2)];
        p[0] = f32::NEG_INFINITY;
        p[1] = 0.0;
        p[2..].iter_mut().for_each(|v| *v = 0.0);
    }
    if let Some(r) = rec.as_deref_mut() {
        r.sums.clear();
        r.sums.resize(2 * rows * (b1 - b0), 0.0);
    }
    let mut scores = [0.0f32; MAX_BLOCK_TOKENS];
    let mut ksm = [0.0f32; 2 * MAX_HEAD_DIM];
    let mut vsm = [0.0f32; kvquant::V_SCALES];
    let mut qs = [0.0f32; MAX_HEAD_DIM];
    for b in b0..b1 {
        let j0 = b * bt;
        let nk = bt.min(last_key + 1 - j0);
        let codes = load_block(isa, kv, b, h, nk, kf, vf, &mut ksm, &mut vsm);
        for ti in 0..nt {
            let limit = shape.pos0 + t0 + ti; // last key this query token may see
            if limit < j0 {
                continue;
            }
            let nv = nk.min(limit + 1 - j0);
            for gi in 0..g {
                let head = h * g + gi;
                let qr = &q[((t0 + ti) * shape.n_heads + head) * hd..][..hd];
                let row = ti * g + gi;
                let p = &mut part[row * (hd + 2)..][..hd + 2];
                if let Some(r) = rec.as_deref_mut() {
                    // Before: remembered here, turned into the block's sum below.
                    let i = 2 * (row * (b1 - b0) + b - b0);
                    r.sums[i] = p[0];
                    r.sums[i + 1] = p[1];
                }
                attend_one(
                    isa,
                    qr,
                    p,
                    codes,
                    kf,
                    vf,
                    &ksm,
                    &vsm,
                    &mut qs,
                    &mut scores,
                    nv,
                    hd,
                    shape.scale,
                );
                if let Some(r) = rec.as_deref_mut() {
                    let i = 2 * (row * (b1 - b0) + b - b0);
                    let (m0, l0) = (r.sums[i], r.sums[i + 1]);
                    let c = if l0 > 0.0 && m0 != p[0] {
                        (m0 - p[0]).exp()
                    } else {
                        1.0
                    };
                    r.sums[i] = p[0];
                    r.sums[i + 1] = (p[1] - l0 * c).max(0.0);
                }
            }
        }
    }
    (b0, b1)
}

/// One query row against one loaded block (see [`load_block`]): updates the row's
/// running `[max, sum, acc]` in `p`.
#[allow(clippy::too_many_arguments)]
fn attend_one(
    isa: Isa,
    qr: &[f32],
    p: &mut [f32],
    codes: bool,
    kf: &[f32],
    vf: &[f32],
    ksm: &[f32],
    vsm: &[f32],
    qs: &mut [f32],
    scores: &mut [f32],
    nv: usize,
    hd: usize,
    scale: f32,
) {
    if codes {
        // Key scales folded into the query: q·(c·s + m) = (q⊙s)·c + q·m.
        for ((o, &x), &sc) in qs.iter_mut().zip(qr).zip(&ksm[..hd]) {
            *o = x * sc;
        }
        let bias = simd::dot_f32(isa, qr, &ksm[hd..2 * hd]);
        let vs = &vsm[..2 * nv * hd / kvquant::V_GROUP];
        let done = attend_fast(isa, &qs[..hd], bias, kf, vf, Some(vs), nv, scale, p);
        debug_assert!(done, "codes are only loaded for the fused kernel");
        return;
    }
    if attend_fast(isa, qr, 0.0, kf, vf, None, nv, scale, p) {
        return;
    }
    let mut bmax = f32::NEG_INFINITY;
    for j in 0..nv {
        let s = simd::dot_f32(isa, qr, &kf[j * hd..(j + 1) * hd]) * scale;
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
    let hd = g.head_dim;
    match kv.blocks[b] {
        KvBlock::F16(blk) => {
            let koff = g.f16_k_base(kv.layer) + h * g.head_stride();
            let voff = g.f16_v_base(kv.layer) + h * g.head_stride();
            simd::f16_to_f32(isa, &blk[koff..koff + nk * hd], &mut kf[..nk * hd]);
            simd::f16_to_f32(isa, &blk[voff..voff + nk * hd], &mut vf[..nk * hd]);
            false
        }
        KvBlock::Quant(f, blk) => {
            let ko = g.q_k_offset(f, kv.layer, h);
            let vo = g.q_v_offset(f, kv.layer, h);
            let (kc, vc) = (
                &blk[ko..ko + g.k_chunk_bytes(f)],
                &blk[vo..vo + g.v_chunk_bytes(f)],
            );
            if fused(isa, hd) {
                kvquant::k_codes(isa, f, g, kc, nk, kf, ksm);
                kvquant::v_codes(isa, f, g, vc, nk, vf, vsm);
                true
            } else {
                kvquant::dequantize_k(isa, f, g, kc, nk, kf);
                kvquant::dequantize_v(isa, f, g, vc, nk, vf);
                false
            }
        }
    }
}

/// Whether [`attend_fast`] handles rows of `hd` on `isa`.
fn fused(isa: Isa, hd: usize) -> bool {
    cfg!(target_arch = "x86_64") && isa == Isa::Avx2 && (hd == 64 || hd == 128)
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
        // SAFETY: AVX2 detected; lengths: q and p sized by head_dim, kf/vf hold nv rows,
        // vsm (with codes) two values per (row, group of 32).
        unsafe {
            match q.len() {
                64 => simd::avx2::attend_block::<8>(q, bias, kf, vf, vsm, nv, scale, p),
                _ => simd::avx2::attend_block::<16>(q, bias, kf, vf, vsm, nv, scale, p),
            }
        }
        return true;
    }
    let _ = (isa, q, bias, kf, vf, vsm, nv, scale, p);
    false
}
