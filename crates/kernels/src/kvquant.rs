//! KV block formats: f16, and 8/4/2-bit codes with f16 scales (the KIVI layout), read in
//! place by [`crate::attention`].
//!
//! A block holds `block_tokens` tokens of all layers. Quantized blocks keep each
//! (layer, KV head)'s keys and values in self-contained *chunks*:
//!
//! ```text
//! block = [ layer 0: K chunk h0 | … | K chunk hH-1 | V chunk h0 | … | V chunk hH-1 ] [ layer 1 … ]
//! K chunk = [ ref f16 ][ min f16 × head_dim ][ scale code u8 × head_dim ][ codes: block_tokens rows ]
//! V chunk = [ ref f16 ][ min f16 × G·block_tokens ][ scale code u8 × G·block_tokens ][ codes rows ]
//! ```
//!
//! (`G = head_dim / 32` value groups per token, in token-major order.) Minima are f16;
//! scales are one byte each on a log scale below the chunk's largest (`ref`):
//! `scale = ref · 2^(−code/32)`, the nearest step (int8: the next larger, so its range
//! stays covered), and codes are computed against the stored scale and minimum. Against
//! f16 scales this saves a quarter of the header (int2: 56 → 50.25 bytes per token per
//! layer·head at head dim 64, int4: 88 → 82.25) for at most 1.1% (int8 2.2%) wider or
//! narrower steps — measured on synthetic keys: +0.4% RMS error at int4, +0.1% at int2.
//!
//! Keys are quantized **per channel** (one scale and minimum per channel over the block's
//! tokens: key outliers live in a few channels), values **per token** in groups of 32
//! channels — the finding of KIVI (Liu et al., 2024). Codes are asymmetric:
//! `x ≈ code · scale + min`, `code ∈ 0..2^bits`. A row of codes packs `8 / bits` values per
//! byte: byte `j` holds channel `j + k · head_dim · bits / 8` in bits `k · bits ..`, so
//! one SIMD load of bytes yields runs of consecutive channels for every `k`.
//!
//! Error bound of a round trip (checked by the tests), for each group with range
//! `r = max − min` in a chunk whose widest group has range `R`, and
//! `e = max(2^(1/32) · r, 2^(−255/32) · R) / (2^bits − 1) / 2 + 2⁻¹⁰ · (|min| + r) + 2⁻²⁴`
//! (half a stored step, plus the f16 rounding of the minimum): int8 keeps every value
//! within `e`; int2 picks scale and minimum by least squares, which may clip a lone
//! outlier, so its bound (and, to keep one test, int4's) is on the group's
//! root-mean-square error: `≤ e`.

use std::ops::Range;

use crate::Isa;
use crate::attention::{MAX_BLOCK_TOKENS, MAX_HEAD_DIM};

/// Channels per value group (values are quantized per token in groups of this many).
pub const V_GROUP: usize = 32;

/// Most (scale, min) values a V chunk holds: [`v_codes`]'s `sm` buffer size.
pub const V_SCALES: usize = 2 * MAX_BLOCK_TOKENS * MAX_HEAD_DIM / V_GROUP;

/// How a block's keys and values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KvFormat {
    /// IEEE half precision, `[layer][K heads | V heads][token][dim]`.
    F16,
    /// 8-bit codes (the warm tier).
    Q8,
    /// 4-bit codes (cold).
    Q4,
    /// 2-bit codes (cold).
    Q2,
}

impl KvFormat {
    /// All formats, most precise first.
    pub const ALL: [KvFormat; 4] = [KvFormat::F16, KvFormat::Q8, KvFormat::Q4, KvFormat::Q2];

    /// Bits per code (16 for f16).
    pub fn bits(self) -> usize {
        match self {
            KvFormat::F16 => 16,
            KvFormat::Q8 => 8,
            KvFormat::Q4 => 4,
            KvFormat::Q2 => 2,
        }
    }

    /// Short name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F16 => "f16",
            KvFormat::Q8 => "int8",
            KvFormat::Q4 => "int4",
            KvFormat::Q2 => "int2",
        }
    }

    /// Parses [`KvFormat::name`] (also `q8`, `q4`, `q2`).
    pub fn parse(s: &str) -> Option<KvFormat> {
        Some(match s {
            "f16" => KvFormat::F16,
            "int8" | "q8" => KvFormat::Q8,
            "int4" | "q4" => KvFormat::Q4,
            "int2" | "q2" => KvFormat::Q2,
            _ => return None,
        })
    }

    /// Can blocks of `geom` use this format? Quantized formats need the head dimension
    /// to be a multiple of [`V_GROUP`].
    pub fn supports(self, geom: &BlockGeom) -> bool {
        self == KvFormat::F16 || geom.head_dim.is_multiple_of(V_GROUP)
    }
}

/// Shape of a KV block: fixed for a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockGeom {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_tokens: usize,
}

impl BlockGeom {
    /// f16 elements of one head's keys (or values) in an f16 block.
    pub fn head_stride(&self) -> usize {
        self.block_tokens * self.head_dim
    }
    /// f16 offset of `layer`'s keys for KV head 0 in an f16 block.
    pub fn f16_k_base(&self, layer: usize) -> usize {
        layer * 2 * self.n_kv_heads * self.head_stride()
    }
    /// f16 offset of `layer`'s values for KV head 0 in an f16 block.
    pub fn f16_v_base(&self, layer: usize) -> usize {
        self.f16_k_base(layer) + self.n_kv_heads * self.head_stride()
    }
    /// Bytes of one row of codes (one token of one head).
    pub fn code_row_bytes(&self, f: KvFormat) -> usize {
        self.head_dim * f.bits() / 8
    }
    /// Bytes of a K chunk (one layer, one KV head) in quantized format `f`.
    pub fn k_chunk_bytes(&self, f: KvFormat) -> usize {
        2 + 3 * self.head_dim + self.block_tokens * self.code_row_bytes(f)
    }
    /// Bytes of a V chunk in quantized format `f`.
    pub fn v_chunk_bytes(&self, f: KvFormat) -> usize {
        2 + self.block_tokens * (3 * (self.head_dim / V_GROUP) + self.code_row_bytes(f))
    }
    /// Byte offset of (`layer`, KV head `h`)'s K chunk in a quantized block.
    pub fn q_k_offset(&self, f: KvFormat, layer: usize, h: usize) -> usize {
        layer * self.n_kv_heads * (self.k_chunk_bytes(f) + self.v_chunk_bytes(f))
            + h * self.k_chunk_bytes(f)
    }
    /// Byte offset of (`layer`, KV head `h`)'s V chunk in a quantized block.
    pub fn q_v_offset(&self, f: KvFormat, layer: usize, h: usize) -> usize {
        layer * self.n_kv_heads * (self.k_chunk_bytes(f) + self.v_chunk_bytes(f))
            + self.n_kv_heads * self.k_chunk_bytes(f)
            + h * self.v_chunk_bytes(f)
    }
    /// Bytes of a whole block in format `f`.
    pub fn block_bytes(&self, f: KvFormat) -> usize {
        match f {
            KvFormat::F16 => self.n_layers * 2 * self.n_kv_heads * self.head_stride() * 2,
            _ => self.n_layers * self.n_kv_heads * (self.k_chunk_bytes(f) + self.v_chunk_bytes(f)),
        }
    }
}

/// One block as attention sees it.
#[derive(Clone, Copy, Debug)]
pub enum KvBlock<'a> {
    F16(&'a [u16]),
    Quant(KvFormat, &'a [u8]),
    /// One layer's part of an f16 block (keys of every KV head, then values), whatever
    /// layer the call attends over: a step's own rows of a sliding-window layer, read
    /// from scratch while the cache's rows they replace are still being read.
    F16Layer(&'a [u16]),
}

fn f16(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
}

fn put_f16(b: &mut [u8], i: usize, v: f32) -> f32 {
    let h = half::f16::from_f32(v);
    b[2 * i..2 * i + 2].copy_from_slice(&h.to_bits().to_le_bytes());
    h.to_f32()
}

/// `2^(−code/16)` for every scale code.
static SCALE_STEPS: std::sync::LazyLock<[f32; 256]> =
    std::sync::LazyLock::new(|| std::array::from_fn(|e| (-(e as f32) / 32.0).exp2()));

/// The chunk reference for scales `s` (their largest, as f16 rounded up), written at
/// `b[0..2]`; returns it as f32.
fn put_ref(b: &mut [u8], s: &[f32]) -> f32 {
    let max = s
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f32, f32::max);
    let mut h = half::f16::from_f32(max);
    if h.to_f32() < max {
        h = half::f16::from_bits(h.to_bits() + 1);
    }
    b[..2].copy_from_slice(&h.to_bits().to_le_bytes());
    h.to_f32()
}

/// The stored scale for `s` below `reference` with `levels + 1` codes: its code and value.
/// The nearest step, unless it is smaller than `s` by so much that the group's top would
/// be clipped by more than half a step (`levels · (s − stored) > stored / 2`, int8); then
/// the next larger one.
fn scale_code(s: f32, reference: f32, levels: f32) -> (u8, f32) {
    if s.is_nan() || s <= 0.0 || reference <= 0.0 {
        return (255, reference * SCALE_STEPS[255]);
    }
    let mut e = (-32.0 * (s / reference).log2()).round().clamp(0.0, 255.0) as usize;
    while e > 0 && levels * (s - reference * SCALE_STEPS[e]) > reference * SCALE_STEPS[e] / 2.0 {
        e -= 1;
    }
    (e as u8, reference * SCALE_STEPS[e])
}

/// The largest code with `bits` bits, as f32.
fn levels(bits: usize) -> f32 {
    ((1u32 << bits) - 1) as f32
}

/// Writes a chunk header — `[ref f16][min f16 × n][scale code u8 × n]` for the `n`
/// groups' fitted scales `sc` and minima `mn` — and replaces both with the values as
/// stored, which the codes must be computed against.
fn store_params(head: &mut [u8], sc: &mut [f32], mn: &mut [f32], bits: usize) {
    let n = sc.len();
    let reference = put_ref(head, sc);
    let (mins, scodes) = head[2..2 + 3 * n].split_at_mut(2 * n);
    for i in 0..n {
        (scodes[i], sc[i]) = scale_code(sc[i], reference, levels(bits));
        mn[i] = put_f16(mins, i, mn[i]);
    }
}

/// (scale, min) for values in `lo..=hi` with `bits`-bit codes (min–max).
fn params(lo: f32, hi: f32, bits: usize) -> (f32, f32) {
    ((hi - lo) / levels(bits), lo)
}

fn round_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Most values one group holds (keys: a block's tokens; values: [`V_GROUP`]).
const MAX_GROUP: usize = if MAX_BLOCK_TOKENS > V_GROUP {
    MAX_BLOCK_TOKENS
} else {
    V_GROUP
};

/// (scale, min) for the group `x`: min–max for 8 and 4 bits; for 2 bits the best (least
/// squared error) of min–max and a few least-squares refits of scale and min to the codes
/// (a Lloyd-style iteration, as k-quants do): with 4 levels, clipping a lone outlier often
/// lowers the error of the other values more than it costs. (Measured: it cut int2's mean
/// KL by a fifth; int4 gained nothing and its quantize rate fell tenfold, so it keeps
/// min–max.) Each round is one pass — codes of the current fit, its error, and the sums
/// of the next — and the rounds stop once the codes no longer change (the refit would
/// repeat itself).
fn fit(x: &[f32], bits: usize) -> (f32, f32) {
    let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut s, mut m) = params(lo, hi, bits);
    if bits > 2 || s == 0.0 || !s.is_finite() || x.len() > MAX_GROUP {
        return (s, m);
    }
    let top = levels(bits);
    let n = x.len() as f32;
    let mut prev = [u8::MAX; MAX_GROUP];
    let mut best = (f32::INFINITY, s, m);
    for round in 0..5 {
        // As stored (f16 for this estimate).
        let (sr, mr) = (round_f16(s), round_f16(m));
        let inv = inverse(sr);
        let (mut err, mut sc, mut sx, mut scc, mut scx) = (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
        let mut same = true;
        for (&v, p) in x.iter().zip(prev.iter_mut()) {
            let q = code(v, inv, mr, top);
            let c = f32::from(q);
            let e = v - (c * sr + mr);
            err += e * e;
            sc += c;
            sx += v;
            scc += c * c;
            scx += c * v;
            same &= *p == q;
            *p = q;
        }
        if err < best.0 {
            best = (err, s, m);
        }
        if same && round > 0 {
            break;
        }
        let var = n * scc - sc * sc;
        if var <= 0.0 {
            break;
        }
        s = (n * scx - sc * sx) / var;
        m = (sx - s * sc) / n;
        if !(s > 0.0 && s.is_finite()) {
            break;
        }
    }
    (best.1, best.2)
}

/// `1 / scale`, or 0 for a scale that codes nothing (zero or not finite: every code 0).
fn inverse(scale: f32) -> f32 {
    if scale > 0.0 && scale.is_finite() {
        1.0 / scale
    } else {
        0.0
    }
}

/// The code of `x` (`inv` from [`inverse`], `top` from [`levels`]): nearest, clamped.
/// Rounds by adding ½ and truncating a non-negative value, which compiles to plain
/// arithmetic (`f32::round` is a libm call on baseline x86-64: a fifth of the quantize
/// time) and agrees with it except at exact ties, which go up as `round` does.
fn code(x: f32, inv: f32, min: f32, top: f32) -> u8 {
    (((x - min) * inv).clamp(0.0, top) + 0.5) as u8
}

/// Packs `vals` (one code per channel) into a row of `hd · bits / 8` bytes.
fn pack_row(vals: &[u8], bits: usize, row: &mut [u8]) {
    let per = 8 / bits;
    let span = vals.len() / per;
    for (j, byte) in row.iter_mut().enumerate() {
        let mut b = 0u8;
        for k in 0..per {
            b |= vals[j + k * span] << (k * bits);
        }
        *byte = b;
    }
}

/// Codes of `row` as f32, in channel order (portable).
fn unpack_row(row: &[u8], bits: usize, hd: usize, out: &mut [f32]) {
    let per = 8 / bits;
    let span = hd / per;
    let mask = ((1u32 << bits) - 1) as u8;
    for (j, &byte) in row.iter().enumerate() {
        for k in 0..per {
            out[j + k * span] = ((byte >> (k * bits)) & mask) as f32;
        }
    }
}

/// Quantizes one head's keys: `src` is `nt` f32 rows of `hd` (nt ≤ block_tokens; missing
/// rows count as absent, not zero), written into a K chunk `dst` of `geom`.
pub fn quantize_k(f: KvFormat, geom: &BlockGeom, src: &[f32], nt: usize, dst: &mut [u8]) {
    let hd = geom.head_dim;
    let bits = f.bits();
    let (head, codes) = dst.split_at_mut(2 + 3 * hd);
    let mut vals = vec![0u8; hd];
    let mut sc = vec![0.0f32; hd];
    let mut mn = vec![0.0f32; hd];
    let mut col = Vec::with_capacity(nt);
    for d in 0..hd {
        col.clear();
        col.extend((0..nt).map(|t| src[t * hd + d]));
        (sc[d], mn[d]) = if nt == 0 { (0.0, 0.0) } else { fit(&col, bits) };
    }
    store_params(head, &mut sc, &mut mn, bits);
    let rb = geom.code_row_bytes(f);
    let top = levels(bits);
    let inv: Vec<f32> = sc.iter().map(|&s| inverse(s)).collect();
    for t in 0..geom.block_tokens {
        if t < nt {
            let row = &src[t * hd..(t + 1) * hd];
            for (((v, &x), &i), &m) in vals.iter_mut().zip(row).zip(&inv).zip(&mn) {
                *v = code(x, i, m, top);
            }
        } else {
            vals.iter_mut().for_each(|v| *v = 0);
        }
        pack_row(&vals, bits, &mut codes[t * rb..(t + 1) * rb]);
    }
}

/// Quantizes one head's values (`nt` rows of `hd`) into a V chunk `dst`.
pub fn quantize_v(f: KvFormat, geom: &BlockGeom, src: &[f32], nt: usize, dst: &mut [u8]) {
    let hd = geom.head_dim;
    let bits = f.bits();
    let ng = hd / V_GROUP;
    let n = ng * geom.block_tokens;
    let (head, codes) = dst.split_at_mut(2 + 3 * n);
    let rb = geom.code_row_bytes(f);
    let mut sc = vec![0.0f32; n];
    let mut mn = vec![0.0f32; n];
    for t in 0..nt {
        for g in 0..ng {
            (sc[t * ng + g], mn[t * ng + g]) = fit(&src[t * hd + g * V_GROUP..][..V_GROUP], bits);
        }
    }
    store_params(head, &mut sc, &mut mn, bits);
    let mut vals = vec![0u8; hd];
    let top = levels(bits);
    for t in 0..geom.block_tokens {
        for g in 0..ng {
            let (i, m) = (inverse(sc[t * ng + g]), mn[t * ng + g]);
            let out = &mut vals[g * V_GROUP..(g + 1) * V_GROUP];
            if t < nt {
                let row = &src[t * hd + g * V_GROUP..][..V_GROUP];
                for (v, &x) in out.iter_mut().zip(row) {
                    *v = code(x, i, m, top);
                }
            } else {
                out.iter_mut().for_each(|v| *v = 0);
            }
        }
        pack_row(&vals, bits, &mut codes[t * rb..(t + 1) * rb]);
    }
}

/// f16 values (little-endian bytes `b`) into `out`, in bulk where `b` is u16-aligned.
fn halves(isa: Isa, b: &[u8], out: &mut [f32]) {
    // SAFETY: every bit pattern is a valid u16.
    let (pre, mid, _) = unsafe { b.align_to::<u16>() };
    if cfg!(target_endian = "little") && pre.is_empty() && mid.len() >= out.len() {
        crate::simd::f16_to_f32(isa, &mid[..out.len()], out);
    } else {
        for (i, o) in out.iter_mut().enumerate() {
            *o = f16(b, i);
        }
    }
}

/// The codes of a K chunk's first `nt` keys as f32 (`nt × hd`), and its per-channel
/// scales and minima (`sm[..hd]`, `sm[hd..2·hd]`): key `t`, channel `d` is
/// `codes[t·hd + d] · sm[d] + sm[hd + d]`.
pub fn k_codes(
    isa: Isa,
    f: KvFormat,
    geom: &BlockGeom,
    chunk: &[u8],
    nt: usize,
    codes: &mut [f32],
    sm: &mut [f32],
) {
    let hd = geom.head_dim;
    let reference = f16(chunk, 0);
    halves(isa, &chunk[2..2 + 2 * hd], &mut sm[hd..2 * hd]);
    for (s, &e) in sm[..hd].iter_mut().zip(&chunk[2 + 2 * hd..2 + 3 * hd]) {
        *s = reference * SCALE_STEPS[usize::from(e)];
    }
    unpack_rows(isa, &chunk[2 + 3 * hd..], f.bits(), hd, nt, codes);
}

/// The codes of a V chunk's first `nt` values as f32 (`nt × hd`), and each (token, group
/// of [`V_GROUP`] channels)'s scale and minimum at `sm[2(t·G + g)]`, `sm[2(t·G + g) + 1]`
/// (`G = hd / V_GROUP`).
pub fn v_codes(
    isa: Isa,
    f: KvFormat,
    geom: &BlockGeom,
    chunk: &[u8],
    nt: usize,
    codes: &mut [f32],
    sm: &mut [f32],
) {
    let hd = geom.head_dim;
    let n = hd / V_GROUP * geom.block_tokens;
    let k = hd / V_GROUP * nt;
    let reference = f16(chunk, 0);
    let mut mins = [0.0f32; V_SCALES / 2];
    halves(isa, &chunk[2..2 + 2 * k], &mut mins[..k]);
    let scodes = &chunk[2 + 2 * n..2 + 3 * n];
    for i in 0..k {
        sm[2 * i] = reference * SCALE_STEPS[usize::from(scodes[i])];
        sm[2 * i + 1] = mins[i];
    }
    unpack_rows(isa, &chunk[2 + 3 * n..], f.bits(), hd, nt, codes);
}

/// Dequantizes the first `nt` keys of a K chunk into `out` (`nt × hd` f32).
pub fn dequantize_k(
    isa: Isa,
    f: KvFormat,
    geom: &BlockGeom,
    chunk: &[u8],
    nt: usize,
    out: &mut [f32],
) {
    let hd = geom.head_dim;
    let mut sm = [0.0f32; 2 * MAX_HEAD_DIM];
    k_codes(isa, f, geom, chunk, nt, out, &mut sm);
    for o in out[..nt * hd].chunks_exact_mut(hd) {
        scale_rows(isa, o, &sm[..hd], &sm[hd..2 * hd]);
    }
}

/// Dequantizes the first `nt` values of a V chunk into `out` (`nt × hd` f32).
pub fn dequantize_v(
    isa: Isa,
    f: KvFormat,
    geom: &BlockGeom,
    chunk: &[u8],
    nt: usize,
    out: &mut [f32],
) {
    let hd = geom.head_dim;
    let ng = hd / V_GROUP;
    let mut sm = [0.0f32; V_SCALES];
    v_codes(isa, f, geom, chunk, nt, out, &mut sm);
    for (t, o) in out[..nt * hd].chunks_exact_mut(hd).enumerate() {
        for (g, grp) in o.chunks_exact_mut(V_GROUP).enumerate() {
            scale_group(isa, grp, sm[2 * (t * ng + g)], sm[2 * (t * ng + g) + 1]);
        }
    }
}

/// Codes of `nt` packed rows as f32 rows of `hd`.
fn unpack_rows(isa: Isa, rows: &[u8], bits: usize, hd: usize, nt: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && hd.is_multiple_of(32) {
        // SAFETY: AVX2 detected; `rows` holds nt rows of hd·bits/8 bytes, `out` nt·hd values.
        unsafe { crate::simd::avx2::unpack_rows(rows, bits, hd, nt, out) };
        return;
    }
    let _ = isa;
    let rb = hd * bits / 8;
    for t in 0..nt {
        unpack_row(
            &rows[t * rb..(t + 1) * rb],
            bits,
            hd,
            &mut out[t * hd..(t + 1) * hd],
        );
    }
}

fn scale_rows(isa: Isa, o: &mut [f32], sc: &[f32], mn: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: AVX2+FMA detected; the three slices have equal lengths.
        unsafe { crate::simd::avx2::fma_rows(o, sc, mn) };
        return;
    }
    let _ = isa;
    for ((x, s), m) in o.iter_mut().zip(sc).zip(mn) {
        *x = *x * s + m;
    }
}

fn scale_group(isa: Isa, o: &mut [f32], s: f32, m: f32) {
    let _ = isa;
    // Plain multiply-add (vectorizes); `mul_add` without FMA codegen is a libm call.
    for x in o.iter_mut() {
        *x = *x * s + m;
    }
}

/// The two chunks of (`layer`, KV head `h`) in a block of format `f`: for keys, then
/// values, their f16 offset in the f16 layout, their byte range in the quantized one,
/// and whether they hold values.
fn sides(geom: &BlockGeom, f: KvFormat, l: usize, h: usize) -> [(usize, Range<usize>, bool); 2] {
    let hs = geom.head_stride();
    let (ko, vo) = (geom.q_k_offset(f, l, h), geom.q_v_offset(f, l, h));
    [
        (
            geom.f16_k_base(l) + h * hs,
            ko..ko + geom.k_chunk_bytes(f),
            false,
        ),
        (
            geom.f16_v_base(l) + h * hs,
            vo..vo + geom.v_chunk_bytes(f),
            true,
        ),
    ]
}

/// Encodes a whole f16 block (`geom`'s f16 layout) into format `f` (`nt` tokens present).
pub fn encode_block(f: KvFormat, geom: &BlockGeom, src: &[u16], nt: usize, dst: &mut [u8]) {
    assert!(f != KvFormat::F16 && f.supports(geom));
    assert_eq!(dst.len(), geom.block_bytes(f));
    let hs = geom.head_stride();
    let mut tmp = vec![0.0f32; hs];
    let isa = Isa::detect();
    for l in 0..geom.n_layers {
        for h in 0..geom.n_kv_heads {
            for (off, bytes, values) in sides(geom, f, l, h) {
                crate::simd::f16_to_f32(isa, &src[off..off + hs], &mut tmp);
                let quantize = if values { quantize_v } else { quantize_k };
                quantize(f, geom, &tmp, nt, &mut dst[bytes]);
            }
        }
    }
}

/// Decodes a quantized block back into the f16 layout (promotion; precision lost by the
/// quantization stays lost).
pub fn decode_block(f: KvFormat, geom: &BlockGeom, src: &[u8], dst: &mut [u16]) {
    assert!(f != KvFormat::F16);
    let hs = geom.head_stride();
    let mut tmp = vec![0.0f32; hs];
    let isa = Isa::detect();
    for l in 0..geom.n_layers {
        for h in 0..geom.n_kv_heads {
            for (off, bytes, values) in sides(geom, f, l, h) {
                let dequantize = if values { dequantize_v } else { dequantize_k };
                dequantize(isa, f, geom, &src[bytes], geom.block_tokens, &mut tmp);
                crate::simd::f32_to_f16(isa, &tmp, &mut dst[off..off + hs]);
            }
        }
    }
}

/// Re-encodes any block in the quantized format `to` (through f16 when `from` is itself
/// quantized). Promotion to f16 is [`decode_block`].
pub fn transcode(geom: &BlockGeom, from: KvBlock<'_>, to: KvFormat, nt: usize) -> Vec<u8> {
    let decoded: Vec<u16>;
    let src: &[u16] = match from {
        KvBlock::F16(s) => s,
        KvBlock::F16Layer(_) => panic!("a one-layer scratch view is not a stored block"),
        KvBlock::Quant(f, b) => {
            let mut d = vec![0u16; geom.block_bytes(KvFormat::F16) / 2];
            decode_block(f, geom, b, &mut d);
            decoded = d;
            &decoded
        }
    };
    let mut out = vec![0u8; geom.block_bytes(to)];
    encode_block(to, geom, src, nt, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The module doc's bound for a group spanning `lo..=hi` in a chunk whose widest
    /// group spans `widest`.
    fn bound(lo: f32, hi: f32, widest: f32, bits: usize) -> f32 {
        let r = hi - lo;
        let step = (r * (1.0f32 / 32.0).exp2()).max(widest * (-255.0f32 / 32.0).exp2());
        step / ((1u32 << bits) - 1) as f32 / 2.0 + (lo.abs() + r) / 1024.0 + 1e-7
    }

    fn range(src: &[f32], idx: &[usize]) -> (f32, f32) {
        let lo = idx.iter().map(|&i| src[i]).fold(f32::INFINITY, f32::min);
        let hi = idx
            .iter()
            .map(|&i| src[i])
            .fold(f32::NEG_INFINITY, f32::max);
        (lo, hi)
    }

    /// The module doc's bound on each group (`idx` into `src`/`got`).
    fn check(f: KvFormat, src: &[f32], got: &[f32], groups: &[Vec<usize>], what: &str) {
        let widest = groups
            .iter()
            .map(|idx| {
                let (lo, hi) = range(src, idx);
                hi - lo
            })
            .fold(0.0f32, f32::max);
        for idx in groups {
            check_group(f, src, got, idx, widest, what);
        }
    }

    fn check_group(f: KvFormat, src: &[f32], got: &[f32], idx: &[usize], widest: f32, what: &str) {
        let (lo, hi) = range(src, idx);
        let b = bound(lo, hi, widest, f.bits());
        let errs: Vec<f32> = idx.iter().map(|&i| (got[i] - src[i]).abs()).collect();
        if f == KvFormat::Q8 {
            let m = errs.iter().copied().fold(0.0, f32::max);
            assert!(m <= b, "{f:?} {what}: max err {m} > {b}");
        } else {
            let rms = (errs.iter().map(|e| e * e).sum::<f32>() / errs.len() as f32).sqrt();
            assert!(rms <= b, "{f:?} {what}: rms err {rms} > {b}");
        }
    }

    #[test]
    fn round_trips_within_the_stated_bound_on_every_isa() {
        let geom = BlockGeom {
            n_layers: 1,
            n_kv_heads: 1,
            head_dim: 64,
            block_tokens: 16,
        };
        let mut seed = 7u64;
        // Keys with per-channel offsets and an outlier channel, as real keys have.
        let src: Vec<f32> = (0..16 * 64)
            .map(|i| {
                let d = i % 64;
                lcg(&mut seed) * (1.0 + d as f32 / 8.0) + if d == 5 { 40.0 } else { d as f32 * 0.1 }
            })
            .collect();
        for f in [KvFormat::Q8, KvFormat::Q4, KvFormat::Q2] {
            for nt in [16, 9] {
                let mut kc = vec![0u8; geom.k_chunk_bytes(f)];
                let mut vc = vec![0u8; geom.v_chunk_bytes(f)];
                quantize_k(f, &geom, &src, nt, &mut kc);
                quantize_v(f, &geom, &src, nt, &mut vc);
                for isa in [Isa::Portable, Isa::detect()] {
                    let mut k = vec![0.0; 16 * 64];
                    let mut v = vec![0.0; 16 * 64];
                    dequantize_k(isa, f, &geom, &kc, nt, &mut k);
                    dequantize_v(isa, f, &geom, &vc, nt, &mut v);
                    let kg: Vec<Vec<usize>> = (0..64)
                        .map(|d| (0..nt).map(|t| t * 64 + d).collect())
                        .collect();
                    check(f, &src, &k, &kg, "K");
                    let vg: Vec<Vec<usize>> = (0..nt * 2)
                        .map(|i| (i * 32..i * 32 + 32).collect())
                        .collect();
                    check(f, &src, &v, &vg, "V");
                }
            }
        }
    }

    #[test]
    fn sizes_follow_the_layout() {
        let g = BlockGeom {
            n_layers: 30,
            n_kv_heads: 3,
            head_dim: 64,
            block_tokens: 16,
        };
        assert_eq!(g.block_bytes(KvFormat::F16), 16 * 23040);
        // Per (layer, head) chunk pair: K (ref + f16 min and u8 scale per channel + codes)
        // and V (ref + f16 min and u8 scale per token and group + codes).
        for (f, codes) in [(KvFormat::Q8, 64), (KvFormat::Q4, 32), (KvFormat::Q2, 16)] {
            let k = 2 + 3 * 64 + 16 * codes;
            let v = 2 + 16 * (3 * 2 + codes);
            assert_eq!(g.block_bytes(f), 30 * 3 * (k + v), "{f:?}");
        }
        assert_eq!(
            g.q_v_offset(KvFormat::Q4, 29, 2) + g.v_chunk_bytes(KvFormat::Q4),
            g.block_bytes(KvFormat::Q4)
        );
    }

    #[test]
    fn constant_groups_are_exact() {
        let geom = BlockGeom {
            n_layers: 1,
            n_kv_heads: 1,
            head_dim: 32,
            block_tokens: 16,
        };
        let src = vec![0.75f32; 16 * 32];
        for f in [KvFormat::Q8, KvFormat::Q4, KvFormat::Q2] {
            let mut kc = vec![0u8; geom.k_chunk_bytes(f)];
            quantize_k(f, &geom, &src, 16, &mut kc);
            let mut k = vec![0.0; 16 * 32];
            dequantize_k(Isa::detect(), f, &geom, &kc, 16, &mut k);
            assert!(k.iter().all(|&x| x == 0.75), "{f:?}");
        }
    }
}
