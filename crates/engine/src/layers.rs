//! The per-layer computation both forward passes share: the single-sequence
//! [`Session`](crate::forward::Session) and the batched [`Engine`](crate::batch::Engine)
//! differ only in where each token's keys and values go and which blocks its attention
//! reads; everything row-wise — norms, the matrix products over all of a micro-batch's
//! tokens, RoPE, the feed-forward block, the output head — is here, once.
//!
//! Every step works on rows (one token each) independently, so the rows of a micro-batch
//! may belong to any sequences; each row's sums are formed in the same order whatever
//! else is in the micro-batch, so a token's results do not depend on its neighbours.

use std::sync::atomic::{AtomicUsize, Ordering};

use kernels::matmul::{MatJob, matmul};
use kernels::ops::{self, Rope};
use kernels::pool::ThreadPool;
use kernels::quant::{BlockQ8, QK, WType, quantize_row_for};

use budget::{Bytes, OutOfBudget, Reservation};

use crate::config::{Activation, ModelConfig, RopeScaling};
use crate::memory::{Accounts, scratch_bytes};
use crate::model::{Layer, Model};
use crate::phases::{Phase, mark};
use kvcache::{KvBlock, KvCache, KvError, SeqId};

/// A forward pass's buffers with their account in the ledger: the fixed per-micro-batch
/// [`Scratch`], the logits rows and the attention workspace. The session and the batched
/// engine both hold one; the logits and the workspace grow only after the account does.
pub(crate) struct Workspace {
    pub(crate) s: Scratch,
    pub(crate) logits: Vec<f32>,
    /// The ledger's account for `s`, `logits` and `s.attn`.
    res: Reservation,
}

impl Workspace {
    /// Reserves the fixed scratch for `ubatch` rows, then allocates it: a budget too small
    /// fails here, with nothing held.
    pub(crate) fn new(
        model: &Model<'_>,
        ubatch: usize,
        accounts: &Accounts,
    ) -> Result<Self, OutOfBudget> {
        let c = &model.cfg;
        let res = accounts.reserve(accounts.scratch, scratch_bytes(c, ubatch))?;
        let s = Scratch::new(model, ubatch);
        debug_assert_eq!(
            s.fixed_bytes(),
            scratch_bytes(c, ubatch),
            "scratch formula drifted"
        );
        Ok(Workspace {
            s,
            logits: Vec::new(),
            res,
        })
    }

    /// Bytes reserved in the ledger for these buffers.
    pub(crate) fn reserved_bytes(&self) -> u64 {
        self.res.size().0
    }

    /// Grows the reservation so that it covers `logits_len` logits, an attention
    /// workspace of `attn_len` and `own_len` f16s of a step's own windowed rows
    /// ([`own_rows`]); allocates nothing.
    pub(crate) fn account(
        &mut self,
        logits_len: usize,
        attn_len: usize,
        own_len: usize,
    ) -> Result<(), OutOfBudget> {
        let want = self.s.fixed_bytes()
            + self.logits.capacity().max(logits_len) as u64 * 4
            + self.s.attn.capacity().max(attn_len) as u64 * 4
            + self.s.own.capacity().max(own_len) as u64 * 2;
        let have = self.res.size().0;
        if want > have {
            self.res.try_grow(Bytes(want - have))?;
        }
        Ok(())
    }

    /// Sizes the logits to `logits_len` and the attention workspace to at least
    /// `attn_len`, growing exactly, so the buffers hold no more than [`Workspace::account`]
    /// had the ledger grant.
    pub(crate) fn fit(&mut self, logits_len: usize, attn_len: usize, own_len: usize) {
        self.logits
            .reserve_exact(logits_len.saturating_sub(self.logits.len()));
        self.logits.resize(logits_len, 0.0);
        let attn = &mut self.s.attn;
        if attn.len() < attn_len {
            attn.reserve_exact(attn_len - attn.len());
            attn.resize(attn_len, 0.0);
        }
        let own = &mut self.s.own;
        own.reserve_exact(own_len.saturating_sub(own.len()));
    }
}

/// Per-micro-batch buffers, allocated once (sized by [`crate::memory::scratch_bytes`]).
pub(crate) struct Scratch {
    pub(crate) x: Vec<f32>,
    pub(crate) xn: Vec<f32>,
    pub(crate) xq: Vec<BlockQ8>,
    pub(crate) q: Vec<f32>,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    pub(crate) att: Vec<f32>,
    pub(crate) gate: Vec<f32>,
    pub(crate) up: Vec<f32>,
    /// Attention workspace, grown (after its reservation) as calls need it.
    pub(crate) attn: Vec<f32>,
    /// A step's own rows of a sliding-window layer ([`own_rows`]), grown the same way.
    pub(crate) own: Vec<u16>,
    /// RoPE angles of each row's position.
    pub(crate) rope: Vec<Vec<(f32, f32)>>,
    /// The same from the local layers' table (empty rows without one).
    pub(crate) rope_local: Vec<Vec<(f32, f32)>>,
}

/// A model's RoPE tables: the global one (scaled as the metadata says, divided by
/// `rope_freqs` where the model has them) and, for a model with sliding-window layers,
/// the local layers' own (their base, unscaled, as llama.cpp runs Gemma 3's).
pub(crate) struct Ropes {
    pub(crate) global: Rope,
    pub(crate) local: Option<Rope>,
}

impl Ropes {
    pub(crate) fn new(m: &Model<'_>) -> Self {
        let c = &m.cfg;
        let freq_scale = match c.hooks.rope_scaling {
            RopeScaling::None => 1.0,
            RopeScaling::Linear { factor } => 1.0 / factor,
        };
        let global = Rope::new(c.head_dim, c.rope_base, c.rope_style)
            .scaled(freq_scale, m.rope_freqs.as_deref());
        let local = c
            .hooks
            .sliding_window
            .map(|_| Rope::new(c.head_dim, c.hooks.rope_base_local, c.rope_style));
        Ropes { global, local }
    }
}

impl Scratch {
    pub(crate) fn new(m: &Model<'_>, n: usize) -> Self {
        let c = &m.cfg;
        let (d, qd, kvd) = (c.d_model, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let widest = d.max(qd).max(c.d_ff);
        Scratch {
            x: vec![0.0; n * d],
            xn: vec![0.0; n * d],
            xq: vec![BlockQ8::default(); n * widest / QK],
            q: vec![0.0; n * qd],
            k: vec![0.0; n * kvd],
            v: vec![0.0; n * kvd],
            att: vec![0.0; n * qd],
            gate: vec![0.0; n * c.d_ff],
            up: vec![0.0; n * c.d_ff],
            attn: Vec::new(),
            own: Vec::new(),
            rope: (0..n).map(|_| Vec::with_capacity(c.head_dim / 2)).collect(),
            rope_local: (0..n)
                .map(|_| match c.hooks.sliding_window {
                    Some(_) => Vec::with_capacity(c.head_dim / 2),
                    None => Vec::new(),
                })
                .collect(),
        }
    }

    /// Bytes of the fixed buffers (the attention workspace is accounted as it grows).
    pub(crate) fn fixed_bytes(&self) -> u64 {
        let f = |n: usize| n as u64 * 4;
        f(self.x.len() + self.xn.len() + self.q.len() + self.k.len() + self.v.len())
            + f(self.att.len() + self.gate.len() + self.up.len())
            + self.xq.len() as u64 * std::mem::size_of::<BlockQ8>() as u64
            + kernels::matmul::token_rows_bytes(self.xq.len() * kernels::quant::QK)
            + self
                .rope
                .iter()
                .chain(&self.rope_local)
                .map(|r| r.capacity() as u64 * 8)
                .sum::<u64>()
    }
}

/// Shares a mutable buffer between pool threads that write disjoint rows.
pub(crate) struct Rows<T>(*mut T, usize);
// SAFETY: `row` hands out row `t` only; callers give each row to one thread.
unsafe impl<T: Send> Sync for Rows<T> {}
impl<T> Rows<T> {
    pub(crate) fn new(v: &mut [T], width: usize) -> Self {
        Rows(v.as_mut_ptr(), width)
    }
    /// # Safety
    /// Row `t` must lie inside the buffer and be used by one thread at a time.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn row(&self, t: usize) -> &mut [T] {
        // SAFETY: forwarded contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(t * self.1), self.1) }
    }
}

/// Runs `f(t)` for `t in 0..n`, on the pool when there is enough work to share.
pub(crate) fn par_rows(pool: &ThreadPool, n: usize, f: impl Fn(usize) + Sync) {
    if n < 4 {
        (0..n).for_each(f);
        return;
    }
    // Rows are claimed a few at a time (about four claims a thread): every claim is an
    // atomic add on one shared line, and a prompt's 512 rows claimed one by one by 16
    // threads queue on it.
    let step = (n / (4 * pool.n_threads())).max(1);
    let next = AtomicUsize::new(0);
    pool.run(|_| {
        loop {
            let t0 = next.fetch_add(step, Ordering::Relaxed);
            if t0 >= n {
                break;
            }
            (t0..(t0 + step).min(n)).for_each(&f);
        }
    });
}

/// Row `t` of `xn` = `rms_norm(x[src(t)]) · w`, and its 8-bit quantization into `xq`, for
/// `n` rows of width `d`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_quant(
    pool: &ThreadPool,
    x: &[f32],
    src: impl Fn(usize) -> usize + Sync,
    xn: &mut [f32],
    xq: &mut [BlockQ8],
    w: &[f32],
    eps: f32,
    (d, n): (usize, usize),
    wtype: WType,
) {
    let (xr, qr) = (Rows::new(xn, d), Rows::new(xq, d / QK));
    par_rows(pool, n, |t| {
        // SAFETY: each t is handled by one thread; rows lie inside the buffers.
        let (o, q) = unsafe { (xr.row(t), qr.row(t)) };
        let s = src(t);
        ops::rms_norm(&x[s * d..(s + 1) * d], w, eps, o);
        quantize_row_for(wtype, o, q);
    });
}

/// For each of `n` rows of width `d`: `x += y` (the residual add), then `y =
/// rms_norm(x) · w` and its 8-bit quantization into `xq`: [`add_rows`] and [`norm_quant`]
/// in one pass, with the same steps per row.
fn add_norm_quant(
    pool: &ThreadPool,
    (x, y, xq): (&mut [f32], &mut [f32], &mut [BlockQ8]),
    w: &[f32],
    eps: f32,
    (d, n): (usize, usize),
    wtype: WType,
) {
    let (xr, yr, qr) = (Rows::new(x, d), Rows::new(y, d), Rows::new(xq, d / QK));
    par_rows(pool, n, |t| {
        // SAFETY: each t is handled by one thread; rows lie inside the buffers.
        let (x, y, q) = unsafe { (xr.row(t), yr.row(t), qr.row(t)) };
        ops::add_assign(x, y);
        ops::rms_norm(x, w, eps, y);
        quantize_row_for(wtype, y, q);
    });
}

/// The weight type whose activation blocks one quantization of the input serves for
/// several matrices: a k-quant's (one scale per 256 values) when any of them is one,
/// since Q4_K, Q5_K and Q6_K need that and every other type reads it too, else 32-value
/// blocks. ggml would quantize a mixed set's input once per kind; no supported model
/// mixes them (a k-quant needs rows of whole 256-value super-blocks, which the
/// 32-value types are left for).
fn acts_for(ws: &[WType]) -> WType {
    ws.iter()
        .copied()
        .find(|w| w.is_k_quant())
        .unwrap_or(WType::Q8_0)
}

/// Quantizes `n` rows of width `w` of `x` into `xq` for a product with `wtype` weights.
pub(crate) fn quant_rows(
    pool: &ThreadPool,
    x: &[f32],
    xq: &mut [BlockQ8],
    (w, n): (usize, usize),
    wtype: WType,
) {
    let qr = Rows::new(xq, w / QK);
    par_rows(pool, n, |t| {
        // SAFETY: each t is handled by one thread; rows lie inside the buffer.
        quantize_row_for(wtype, &x[t * w..(t + 1) * w], unsafe { qr.row(t) });
    });
}

/// Row `t` of `s.x` = token `token(t)`'s embedding (scaled where the model scales it),
/// and `s.rope[t]` (`s.rope_local[t]`) = the angles of position `pos(t)`, for `n` rows.
pub(crate) fn embed(
    m: &Model<'_>,
    ropes: &Ropes,
    s: &mut Scratch,
    n: usize,
    mut at: impl FnMut(usize) -> (u32, usize),
) {
    let d = m.cfg.d_model;
    for t in 0..n {
        let (tok, pos) = at(t);
        let row = &mut s.x[t * d..(t + 1) * d];
        kernels::quant::dequantize_row(m.tok_embd.wtype(), m.tok_embd.row(tok as usize), row);
        if let Some(scale) = m.cfg.hooks.embed_scale {
            row.iter_mut().for_each(|v| *v *= scale);
        }
        ropes.global.angles(pos, &mut s.rope[t]);
        if let Some(local) = &ropes.local {
            local.angles(pos, &mut s.rope_local[t]);
        }
    }
    mark(Phase::Embed);
}

/// The attention block up to attention itself, for `n` rows of layer `il`: `s.q`, `s.k`,
/// `s.v` = the normed input's projections (plus biases), queries and keys normed per head
/// where the model does, then rotated by the layer's RoPE table. With `normed`, `s.xn`
/// and `s.xq` already hold the normed input (the previous layer's [`finish_layer`] made
/// them).
#[allow(clippy::too_many_arguments)]
pub(crate) fn project_qkv(
    pool: &ThreadPool,
    c: &ModelConfig,
    l: &Layer<'_>,
    il: usize,
    ropes: &Ropes,
    s: &mut Scratch,
    n: usize,
    normed: bool,
) {
    let (d, hd) = (c.d_model, c.head_dim);
    let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
    if !normed {
        norm_quant(
            pool,
            &s.x,
            |t| t,
            &mut s.xn,
            &mut s.xq,
            &l.attn_norm,
            c.rms_eps,
            (d, n),
            qkv_acts(l),
        );
    }
    mark(Phase::Norm);
    matmul(
        pool,
        &mut [
            MatJob::new(l.wq, &mut s.q[..n * qd]),
            MatJob::new(l.wk, &mut s.k[..n * kvd]),
            MatJob::new(l.wv, &mut s.v[..n * kvd]),
        ],
        &s.xn[..n * d],
        &s.xq[..n * d / QK],
        n,
    );
    mark(Phase::Qkv);
    let (rope, cs) = match (&ropes.local, c.layer_window(il)) {
        (Some(local), Some(_)) => (local, &s.rope_local),
        _ => (&ropes.global, &s.rope),
    };
    let (qr, kr, vr) = (
        Rows::new(&mut s.q, qd),
        Rows::new(&mut s.k, kvd),
        Rows::new(&mut s.v, kvd),
    );
    let eps = c.rms_eps;
    par_rows(pool, n, |t| {
        // SAFETY: each t is handled by one thread; rows lie inside the buffers.
        let (q, k) = unsafe { (qr.row(t), kr.row(t)) };
        if let Some([bq, bk, bv]) = &l.bias_qkv {
            ops::add_assign(q, bq);
            ops::add_assign(k, bk);
            // SAFETY: as above.
            ops::add_assign(unsafe { vr.row(t) }, bv);
        }
        if let Some([qn, kn]) = &l.qk_norm {
            q.chunks_exact_mut(hd)
                .for_each(|h| ops::rms_norm_in_place(h, qn, eps));
            k.chunks_exact_mut(hd)
                .for_each(|h| ops::rms_norm_in_place(h, kn, eps));
        }
        rope.apply(q, hd, &cs[t]);
        rope.apply(k, hd, &cs[t]);
    });
    mark(Phase::Rope);
}

/// The activation type the Q, K and V projections of `l` read.
fn qkv_acts(l: &Layer<'_>) -> WType {
    acts_for(&[l.wq.wtype(), l.wk.wtype(), l.wv.wtype()])
}

/// The rest of a layer after attention wrote `s.att`, for `n` rows: the output
/// projection and residual, then the feed-forward block and its residual, into `s.x`
/// (each block's output normed before its residual add where the model does). With the
/// `next` layer, its attention norm is taken in the same pass as the last residual add,
/// into `s.xn` and `s.xq` (its [`project_qkv`] is then called `normed`).
pub(crate) fn finish_layer(
    pool: &ThreadPool,
    c: &ModelConfig,
    (l, next): (&Layer<'_>, Option<&Layer<'_>>),
    s: &mut Scratch,
    n: usize,
) {
    let (d, qd, ff) = (c.d_model, c.n_heads * c.head_dim, c.d_ff);
    quant_rows(pool, &s.att, &mut s.xq, (qd, n), l.wo.wtype());
    mark(Phase::Norm);
    matmul(
        pool,
        &mut [MatJob::new(l.wo, &mut s.xn[..n * d])],
        &s.att,
        &s.xq,
        n,
    );
    mark(Phase::Wo);
    post_norm(pool, l.post_norms.as_ref().map(|p| &p[0][..]), c, s, n);
    // The residual add and the feed-forward block's norm, one pass over the rows.
    add_norm_quant(
        pool,
        (&mut s.x, &mut s.xn, &mut s.xq),
        &l.ffn_norm,
        c.rms_eps,
        (d, n),
        acts_for(&[l.gate.wtype(), l.up.wtype()]),
    );
    mark(Phase::Norm);
    matmul(
        pool,
        &mut [
            MatJob::new(l.gate, &mut s.gate[..n * ff]),
            MatJob::new(l.up, &mut s.up[..n * ff]),
        ],
        &s.xn[..n * d],
        &s.xq[..n * d / QK],
        n,
    );
    mark(Phase::FfnUp);
    {
        let (gr, xq) = (Rows::new(&mut s.gate, ff), Rows::new(&mut s.xq, ff / QK));
        let up = &s.up;
        let act = c.hooks.activation;
        let down = l.down.wtype();
        par_rows(pool, n, |t| {
            // SAFETY: each t is handled by one thread; rows lie inside the buffers.
            let (g, q) = unsafe { (gr.row(t), xq.row(t)) };
            let u = &up[t * ff..(t + 1) * ff];
            match act {
                Activation::Silu => ops::silu_mul(g, u),
                Activation::GeluTanh => ops::gelu_mul(g, u),
            }
            quantize_row_for(down, g, q);
        });
    }
    mark(Phase::Norm);
    matmul(
        pool,
        &mut [MatJob::new(l.down, &mut s.xn[..n * d])],
        &s.gate,
        &s.xq,
        n,
    );
    mark(Phase::FfnDown);
    post_norm(pool, l.post_norms.as_ref().map(|p| &p[1][..]), c, s, n);
    match next {
        Some(nl) => add_norm_quant(
            pool,
            (&mut s.x, &mut s.xn, &mut s.xq),
            &nl.attn_norm,
            c.rms_eps,
            (d, n),
            qkv_acts(nl),
        ),
        None => add_rows(pool, &mut s.x, &s.xn, (d, n)),
    }
    mark(Phase::Norm);
}

/// Rows at which a residual add is worth a pool dispatch (a prompt's micro-batch; a
/// decode step's rows add faster than threads wake).
const PAR_ADD_ROWS: usize = 64;

/// `x += y` over the first `n` rows of width `d` (the residual adds).
fn add_rows(pool: &ThreadPool, x: &mut [f32], y: &[f32], (d, n): (usize, usize)) {
    if n < PAR_ADD_ROWS {
        ops::add_assign(&mut x[..n * d], &y[..n * d]);
        return;
    }
    let xr = Rows::new(x, d);
    par_rows(pool, n, |t| {
        // SAFETY: each t is handled by one thread; rows lie inside the buffer.
        ops::add_assign(unsafe { xr.row(t) }, &y[t * d..(t + 1) * d]);
    });
}

/// RMSNorm of the first `n` rows of `s.xn` in place with weights `w`, if any.
fn post_norm(pool: &ThreadPool, w: Option<&[f32]>, c: &ModelConfig, s: &mut Scratch, n: usize) {
    let Some(w) = w else { return };
    let d = c.d_model;
    let xr = Rows::new(&mut s.xn, d);
    par_rows(pool, n, |t| {
        // SAFETY: each t is handled by one thread; rows lie inside the buffer.
        ops::rms_norm_in_place(unsafe { xr.row(t) }, w, c.rms_eps);
    });
}

/// Logits for `n_out` rows: output row `j` is `s.x` row `src(j)` through the final norm
/// and the output head, written to `out[j * vocab..]`. Only the rows asked for are
/// computed: the head is the largest matrix of a small model (49,152 × 576 in SmolLM2).
pub(crate) fn output_logits(
    pool: &ThreadPool,
    m: &Model<'_>,
    s: &mut Scratch,
    src: impl Fn(usize) -> usize + Sync,
    n_out: usize,
    out: &mut [f32],
) {
    let c = &m.cfg;
    let d = c.d_model;
    norm_quant(
        pool,
        &s.x,
        src,
        &mut s.xn,
        &mut s.xq,
        &m.output_norm,
        c.rms_eps,
        (d, n_out),
        m.output.wtype(),
    );
    matmul(
        pool,
        &mut [MatJob::new(m.output, &mut out[..n_out * c.vocab])],
        &s.xn[..n_out * d],
        &s.xq[..n_out * d / QK],
        n_out,
    );
    if let Some(cap) = c.hooks.final_softcap {
        ops::softcap(&mut out[..n_out * c.vocab], cap);
    }
    mark(Phase::Head);
}

/// Whether a step of `n` tokens of one sequence reads its own rows of a layer with
/// `window` from scratch ([`own_rows`]) and writes them after the layer's attention: a
/// sliding-window layer's step of several tokens. A single token reads the cache (its
/// row is written first and replaces none it reads).
pub(crate) fn reads_own_rows(window: Option<usize>, n: usize) -> bool {
    window.is_some() && n > 1
}

/// f16s of one one-layer block ([`own_rows`]) for `kvd` key values a token.
fn own_block_len(kvd: usize) -> usize {
    2 * kvd * crate::forward::BLOCK_TOKENS
}

/// f16s of the one-layer blocks that hold a step's own rows of a sliding-window layer
/// for `n` query tokens from `pos0` ([`own_rows`]); 0 where none are read.
pub(crate) fn own_rows_len(cfg: &ModelConfig, pos0: usize, n: usize) -> usize {
    if !reads_own_rows(cfg.hooks.sliding_window, n) {
        return 0;
    }
    let bt = crate::forward::BLOCK_TOKENS;
    let blocks = (pos0 + n - 1) / bt - pos0 / bt + 1;
    blocks * own_block_len(cfg.n_kv_heads * cfg.head_dim)
}

/// The views of one-layer blocks that [`own_rows`] appended (`own`), for `kvd` key
/// values a token.
pub(crate) fn own_views(own: &[u16], kvd: usize) -> impl Iterator<Item = KvBlock<'_>> {
    own.chunks_exact(own_block_len(kvd)).map(KvBlock::F16Layer)
}

/// Appends to `out` one-layer f16 blocks ([`kernels::kvquant::KvBlock::F16Layer`]) of
/// `layer` for positions from the start of the block `pos0` falls in to `pos0 + n`:
/// the cache's rows before `pos0`, then the step's own (`k`, `v`: `n` rows of f32).
/// Attention of a sliding-window layer reads a step of several tokens from here, so the
/// cache's rows that the step's own replace (`kvcache`'s ring) are written only after.
pub(crate) fn own_rows(
    kv: &KvCache,
    seq: SeqId,
    layer: usize,
    pos0: usize,
    (k, v): (&[f32], &[f32]),
    out: &mut Vec<u16>,
) -> Result<(), KvError> {
    let l = kv.layout();
    let (bt, hd, kvh) = (l.block_tokens(), l.head_dim(), l.n_kv_heads());
    let (kvd, hs) = (kvh * hd, bt * hd);
    let n = k.len() / kvd;
    let j0 = pos0 / bt;
    let blocks = (pos0 + n - 1) / bt - j0 + 1;
    let lb = own_block_len(kvd);
    let start = out.len();
    out.resize(start + blocks * lb, 0);
    let put = |out: &mut [u16], p: usize, kr: &[u16], vr: &[u16]| {
        let (base, t) = (start + (p / bt - j0) * lb, p % bt);
        for h in 0..kvh {
            let (ko, vo) = (base + h * hs + t * hd, base + (kvh + h) * hs + t * hd);
            out[ko..ko + hd].copy_from_slice(&kr[h * hd..(h + 1) * hd]);
            out[vo..vo + hd].copy_from_slice(&vr[h * hd..(h + 1) * hd]);
        }
    };
    let (mut kr, mut vr) = (vec![0u16; kvd], vec![0u16; kvd]);
    for p in j0 * bt..pos0 {
        kv.read(seq, layer, p, &mut kr, &mut vr)?;
        put(out, p, &kr, &vr);
    }
    for i in 0..n {
        ops::f32_to_f16(&k[i * kvd..(i + 1) * kvd], &mut kr);
        ops::f32_to_f16(&v[i * kvd..(i + 1) * kvd], &mut vr);
        put(out, pos0 + i, &kr, &vr);
    }
    Ok(())
}
