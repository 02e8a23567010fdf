//! One block through a work item's rows: where a KV head's keys and values lie in it,
//! reading (and converting or dequantizing) them, and which kernel takes the rows.

use super::*;

/// Whether f16 blocks of this shape take the transposed-key kernel
/// (`avx2::attend_kt`): 16-token blocks, heads 64 or 128 wide, on AVX-512. Gemma 3's
/// 256-wide heads keep `attend_group`: through this kernel its teacher-forced
/// log-probabilities moved from 0.24 to 0.47 at most from llama.cpp's (engine.md).
pub(super) fn kt_path(isa: Isa, hd: usize, bt: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        use simd::avx2::attend_kt::{KT_KEYS, available};
        return bt == KT_KEYS && (hd == 64 || hd == 128) && available();
    }
    let _ = (isa, hd, bt);
    false
}

/// Block `b` of KV head `h` for every row of the tile (tokens `t0..t0 + nt`, their `g`
/// heads each) that sees one of its `nk` keys, through the transposed-key kernel, if the
/// block is f16 (`false`: not handled, nothing done). Rows go through in fours; a row's
/// steps do not depend on which rows share its four.
#[allow(clippy::too_many_arguments)]
pub(super) fn attend_block_kt(
    q: &[f32],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    (b, h, t0, nt, nk): (usize, usize, usize, usize, usize),
    part: &mut [f32],
    kf: &mut [f32],
    vf: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use simd::avx2::attend_kt::{KtRow, ROWS, attend_kt, kt_block};
        let HeadRows::F16 { k, v } = head_rows(kv, b, h, nk) else {
            return false;
        };
        let (hd, g) = (kv.geom.head_dim, shape.group());
        let j0 = b * kv.geom.block_tokens;
        // The block is converted when the first four rows are ready (not at all if no row
        // sees it); rows then go through four at a time, in tile order.
        let mut converted = false;
        let mut run = |rows: &[KtRow]| {
            // SAFETY: kt_path checked AVX2/F16C, AVX-512, 64- or 128-wide heads, 16-key
            // blocks; k, v hold nk rows, kf, vf 16 of MAX_HEAD_DIM; rows' queries and parts
            // are in bounds (check_call, run_item's slot), distinct; masks non-empty, < nk.
            unsafe {
                if !converted {
                    kt_block(k, v, nk, hd, kf, vf);
                    converted = true;
                }
                let (kf, vf) = (&*kf, &*vf);
                match rows.len() {
                    4 => attend_kt::<4>(q, rows, kf, vf, hd, shape.scale, part),
                    3 => attend_kt::<3>(q, rows, kf, vf, hd, shape.scale, part),
                    2 => attend_kt::<2>(q, rows, kf, vf, hd, shape.scale, part),
                    _ => attend_kt::<1>(q, rows, kf, vf, hd, shape.scale, part),
                }
            }
        };
        let mut four = [KtRow::default(); ROWS];
        let mut n = 0;
        for ti in 0..nt {
            let Some((skip, end)) = seen_keys(shape, t0 + ti, j0, nk) else {
                continue;
            };
            let mask = (((1u32 << end) - 1) & !((1u32 << skip) - 1)) as u16;
            for gi in 0..g {
                four[n] = KtRow {
                    q: ((t0 + ti) * shape.n_heads + h * g + gi) * hd,
                    part: (ti * g + gi) * (hd + 2),
                    mask,
                };
                n += 1;
                if n == ROWS {
                    run(&four);
                    n = 0;
                }
            }
        }
        if n > 0 {
            run(&four[..n]);
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (q, kv, shape, b, h, t0, nt, nk, part, kf, vf);
        false
    }
}

/// Block `b` of KV head `h` for `rows` (query, part) that each see all of its keys —
/// decode calls over a prefix they share — through the transposed-key kernel with the row
/// kernel's arithmetic (`avx2::attend_kt_exact`): the bits [`block_rows`] gives each row,
/// four rows a pass over the keys. `false` (nothing done) where it does not run: no
/// AVX-512, other head or block sizes, a block that is not f16.
pub(super) fn attend_block_exact(
    isa: Isa,
    kv: &PagedKv<'_>,
    (b, h): (usize, usize),
    rows: &[(*const f32, *mut f32)],
    scale: f32,
    (kf, vf): (&mut [f32], &mut [f32]),
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use simd::avx2::attend_kt::{KT_KEYS, kt_block};
        let (hd, bt) = (kv.geom.head_dim, kv.geom.block_tokens);
        if !kt_path(isa, hd, bt) {
            return false;
        }
        let HeadRows::F16 { k, v } = head_rows(kv, b, h, bt) else {
            return false;
        };
        // SAFETY: kt_path checked AVX2/F16C, AVX-512, 64- or 128-wide heads and 16-key
        // blocks; k, v hold 16 rows, kf, vf 16 of MAX_HEAD_DIM; every row's query holds
        // hd values and its part hd + 2 that no other row of the call uses.
        unsafe {
            kt_block(k, v, KT_KEYS, hd, kf, vf);
            for four in rows.chunks(4) {
                match four.len() {
                    4 => exact::<4>(four, hd, (kf, vf), scale),
                    3 => exact::<3>(four, hd, (kf, vf), scale),
                    2 => exact::<2>(four, hd, (kf, vf), scale),
                    _ => exact::<1>(four, hd, (kf, vf), scale),
                }
            }
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, kv, b, h, rows, scale, kf, vf);
        false
    }
}

/// `RN` rows through the block `attend_block_exact` converted.
///
/// # Safety
/// As `avx2::attend_kt_exact`, for heads of `hd` (64 or 128).
#[cfg(target_arch = "x86_64")]
unsafe fn exact<const RN: usize>(
    rows: &[(*const f32, *mut f32)],
    hd: usize,
    (kt, vf): (&[f32], &[f32]),
    scale: f32,
) {
    use simd::avx2::attend_kt::attend_kt_exact;
    let q = std::array::from_fn(|r| rows[r].0);
    let p = std::array::from_fn(|r| rows[r].1);
    // SAFETY: forwarded contract.
    unsafe {
        if hd == 64 {
            attend_kt_exact::<RN, 8>(q, p, kt, vf, scale);
        } else {
            attend_kt_exact::<RN, 16>(q, p, kt, vf, scale);
        }
    }
}

/// Where KV head `h`'s part of block `b` lies: its first `nk` keys and values as f16
/// rows, or its key and value code chunks (quantized).
pub(super) enum HeadRows<'a> {
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

pub(super) fn head_rows<'a>(kv: &PagedKv<'a>, b: usize, h: usize, nk: usize) -> HeadRows<'a> {
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
    pub(super) fn prefetch(&self) {
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
pub(super) fn load_block(
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
pub(super) fn attend_grouped(
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
pub(super) fn attend_fast(
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
