//! Encoders: f32 rows to the weight block formats, the inverse of [`super::dequantize_row`].
//!
//! The block formats are ggml's, and so are the choices of scale, so that a file encoded
//! here reads like one from `llama-quantize` without an importance matrix:
//!
//! - `Q8_0`, `Q4_0`, `Q5_0`: one scale per 32 values from the value of largest magnitude
//!   (`Q8_0`: `amax / 127`, codes rounded half away from zero; `Q4_0`/`Q5_0`: that value
//!   divided by `-8`/`-16`, so it lands exactly on the lowest code, codes truncated after
//!   adding the offset and one half). `Q4_1`/`Q5_1`: the block's range over 15/31 steps
//!   from its minimum.
//! - `Q4_K`/`Q5_K`: per 32-value sub-block, a scale and a min fitted by weighted least
//!   squares over a sweep of candidate scales (weights `rms(sub-block) + |x|`); then the
//!   eight scales and mins are themselves quantized to 6 bits against the block's largest.
//! - `Q6_K`: per 16-value group, a symmetric scale chosen among 19 candidates around
//!   `-32 / (value of largest magnitude)` by the least-squares fit weighted by `x²`; the
//!   sixteen scales are then quantized to `i8` against the largest.
//! - `F16`, `BF16`: round to nearest, ties to even.
//!
//! Rounding to the nearest integer is ties-to-even (as ggml's `nearest_int`) except where
//! noted above; everything is f32 arithmetic in the same order as the reference method,
//! which makes `Q8_0` and `Q4_0` bit-identical to llama.cpp's output.

use half::f16;

use super::{QK, QK_K, WType, layout};

/// A type this module has no encoder for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "no encoder for {0:?} (encodable: f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k)"
)]
pub struct NoEncoder(pub WType);

/// Whether [`encode_row`] can write `wtype`.
pub fn can_encode(wtype: WType) -> bool {
    !matches!(wtype, WType::Q2_K | WType::Q3_K)
}

/// Encodes one row `x` as `wtype` into `out` (`wtype.row_bytes(x.len())` bytes).
///
/// # Panics
/// If `x.len()` is not a whole number of blocks or `out` is not exactly the row's bytes.
pub fn encode_row(wtype: WType, x: &[f32], out: &mut [u8]) -> Result<(), NoEncoder> {
    let bytes = wtype.row_bytes(x.len());
    assert_eq!(
        Some(out.len()),
        bytes,
        "encode_row: {wtype:?} row of {}",
        x.len()
    );
    let bb = wtype.block_bytes();
    match wtype {
        WType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        WType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        WType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&bf16_bits(*v).to_le_bytes());
            }
        }
        WType::Q8_0 => each_block(x, out, QK, bb, q8_0),
        WType::Q4_0 => each_block(x, out, QK, bb, q4_0),
        WType::Q4_1 => each_block(x, out, QK, bb, q4_1),
        WType::Q5_0 => each_block(x, out, QK, bb, q5_0),
        WType::Q5_1 => each_block(x, out, QK, bb, q5_1),
        WType::Q4_K => each_block(x, out, QK_K, bb, |x, o| q45_k(x, o, 15)),
        WType::Q5_K => each_block(x, out, QK_K, bb, |x, o| q45_k(x, o, 31)),
        WType::Q6_K => each_block(x, out, QK_K, bb, q6_k),
        WType::Q2_K | WType::Q3_K => return Err(NoEncoder(wtype)),
    }
    Ok(())
}

fn each_block(
    x: &[f32],
    out: &mut [u8],
    n: usize,
    bb: usize,
    mut f: impl FnMut(&[f32], &mut [u8]),
) {
    for (xb, ob) in x.chunks_exact(n).zip(out.chunks_exact_mut(bb)) {
        f(xb, ob);
    }
}

/// f32 to bf16 bits, rounding to nearest even; a NaN stays a (quiet) NaN.
pub fn bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if v.is_nan() {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7FFF + ((u >> 16) & 1))) >> 16) as u16
}

fn put_f16(out: &mut [u8], off: usize, v: f32) {
    out[off..off + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// ggml's `nearest_int`: round half to even.
#[inline]
fn nearest(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// The value of largest magnitude (the first one, on ties) and that magnitude.
fn signed_max(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

fn q8_0(x: &[f32], out: &mut [u8]) {
    let amax = signed_max(x).1;
    let d = amax / 127.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    for (o, &v) in out[2..34].iter_mut().zip(x) {
        *o = ((v * id).round() as i8) as u8;
    }
}

fn q4_0(x: &[f32], out: &mut [u8]) {
    let d = signed_max(x).0 / -8.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    for j in 0..16 {
        let lo = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let hi = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        out[2 + j] = lo | (hi << 4);
    }
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    (min, max)
}

fn q4_1(x: &[f32], out: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    put_f16(out, 2, min);
    for j in 0..16 {
        let lo = (((x[j] - min) * id + 0.5) as u8).min(15);
        let hi = (((x[j + 16] - min) * id + 0.5) as u8).min(15);
        out[4 + j] = lo | (hi << 4);
    }
}

/// Packs 32 five-bit codes as `qh: u32` (bit 4 of each) then 16 nibble-pair bytes.
fn pack_q5(code: &[u8; 32], out: &mut [u8]) {
    let mut qh = 0u32;
    for j in 0..16 {
        out[4 + j] = (code[j] & 0x0F) | ((code[j + 16] & 0x0F) << 4);
        qh |= u32::from(code[j] >> 4) << j;
        qh |= u32::from(code[j + 16] >> 4) << (j + 16);
    }
    out[..4].copy_from_slice(&qh.to_le_bytes());
}

fn q5_0(x: &[f32], out: &mut [u8]) {
    let d = signed_max(x).0 / -16.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    let mut code = [0u8; 32];
    for (c, &v) in code.iter_mut().zip(x) {
        *c = ((v * id + 16.5) as i8).min(31) as u8;
    }
    pack_q5(&code, &mut out[2..22]);
}

fn q5_1(x: &[f32], out: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    put_f16(out, 2, min);
    let mut code = [0u8; 32];
    for (c, &v) in code.iter_mut().zip(x) {
        *c = (((v - min) * id + 0.5) as u8).min(31);
    }
    pack_q5(&code, &mut out[4..24]);
}

/// The sweep of candidate scales for an asymmetric sub-block.
struct Sweep {
    /// Codes run `0..=nmax`.
    nmax: i32,
    /// Candidate `i` (0..=steps) divides the range into `nmax + first + step · i` steps.
    first: f32,
    step: f32,
    steps: i32,
}

/// Fits `x ≈ scale · code - min` with `code` in `0..=nmax` (`min ≥ 0`), minimising the
/// `w`-weighted squared error over the sweep's candidate scales; writes the codes to `l`
/// and returns `(scale, min)`.
fn fit_scale_min(x: &[f32], w: &[f32], sweep: &Sweep, l: &mut [u8]) -> (f32, f32) {
    let n = x.len();
    let mut lo = x[0];
    let mut hi = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        lo = lo.min(x[i]);
        hi = hi.max(x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if lo > 0.0 {
        lo = 0.0;
    }
    if hi == lo {
        l.fill(0);
        return (0.0, -lo);
    }
    let nmax = sweep.nmax;
    let code = |iscale: f32, v: f32, lo: f32| nearest(iscale * (v - lo)).clamp(0, nmax);
    let mut iscale = nmax as f32 / (hi - lo);
    let mut scale = 1.0 / iscale;
    let mut best = 0.0f32;
    for i in 0..n {
        let c = code(iscale, x[i], lo);
        l[i] = c as u8;
        let diff = scale * c as f32 + lo - x[i];
        best += w[i] * diff * diff;
    }
    let mut trial = [0u8; QK];
    for k in 0..=sweep.steps {
        iscale = (sweep.first + sweep.step * k as f32 + nmax as f32) / (hi - lo);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let c = code(iscale, x[i], lo);
            trial[i] = c as u8;
            let (c, wi) = (c as f32, w[i]);
            sum_l += wi * c;
            sum_l2 += wi * c * c;
            sum_xl += wi * c * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det <= 0.0 {
            continue;
        }
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if this_min > 0.0 {
            this_min = 0.0;
            this_scale = sum_xl / sum_l2;
        }
        let mut err = 0.0f32;
        for i in 0..n {
            let diff = this_scale * f32::from(trial[i]) + this_min - x[i];
            err += w[i] * diff * diff;
        }
        if err < best {
            l[..n].copy_from_slice(&trial[..n]);
            best = err;
            scale = this_scale;
            lo = this_min;
        }
    }
    (scale, -lo)
}

/// Q4_K (`nmax` 15) and Q5_K (`nmax` 31): 8 sub-blocks of 32 with 6-bit scales and mins.
fn q45_k(x: &[f32], out: &mut [u8], nmax: i32) {
    let sweep = if nmax == 15 {
        Sweep {
            nmax,
            first: -1.0,
            step: 0.1,
            steps: 20,
        }
    } else {
        Sweep {
            nmax,
            first: -0.5,
            step: 0.1,
            steps: 15,
        }
    };
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut w = [0.0f32; QK];
    for s in 0..8 {
        let xs = &x[32 * s..32 * s + 32];
        let av = (xs.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
        for (wi, v) in w.iter_mut().zip(xs) {
            *wi = av + v.abs();
        }
        (scales[s], mins[s]) = fit_scale_min(xs, &w, &sweep, &mut l[32 * s..32 * s + 32]);
    }
    let max_scale = scales.iter().copied().fold(0.0f32, f32::max);
    let max_min = mins.iter().copied().fold(0.0f32, f32::max);
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut out[4..16];
    sc.fill(0);
    for s in 0..8 {
        let ls = nearest(inv_scale * scales[s]).min(63) as u8;
        let lm = nearest(inv_min * mins[s]).min(63) as u8;
        if s < 4 {
            sc[s] = ls;
            sc[s + 4] = lm;
        } else {
            sc[s + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            sc[s - 4] |= (ls >> 4) << 6;
            sc[s] |= (lm >> 4) << 6;
        }
    }
    put_f16(out, 0, max_scale / 63.0);
    put_f16(out, 2, max_min / 63.0);
    let (d, dmin) = (f16_round(max_scale / 63.0), f16_round(max_min / 63.0));
    for s in 0..8 {
        let (sc6, m6) = layout::scale_min_k4(&out[4..16], s);
        let ds = d * f32::from(sc6);
        if ds == 0.0 {
            continue;
        }
        let dm = dmin * f32::from(m6);
        for i in 32 * s..32 * s + 32 {
            l[i] = nearest((x[i] + dm) / ds).clamp(0, nmax) as u8;
        }
    }
    if nmax == 15 {
        let qs = &mut out[16..144];
        for (n, q) in qs.chunks_exact_mut(32).enumerate() {
            for j in 0..32 {
                q[j] = l[64 * n + j] | (l[64 * n + j + 32] << 4);
            }
        }
    } else {
        let (qh, qs) = out[16..176].split_at_mut(32);
        qh.fill(0);
        for (n, q) in qs.chunks_exact_mut(32).enumerate() {
            for j in 0..32 {
                let (a, b) = (l[64 * n + j], l[64 * n + j + 32]);
                qh[j] |= ((a >> 4) << (2 * n)) | ((b >> 4) << (2 * n + 1));
                q[j] = (a & 0x0F) | ((b & 0x0F) << 4);
            }
        }
    }
}

/// Fits `x ≈ scale · code` with `code` in `-nmax..nmax`, choosing among candidate scales
/// around `-nmax / (value of largest magnitude)` by the `x²`-weighted least-squares fit;
/// writes `code + nmax` to `l` and returns the scale.
fn fit_symmetric(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < 1e-15 {
        l.fill(0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sum_lx, mut sum_l2) = (0.0f32, 0.0f32);
        for &v in x {
            let c = code(iscale, v) as f32;
            let w = v * v;
            sum_lx += w * v * c;
            sum_l2 += w * c * c;
        }
        (sum_lx, sum_l2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (li, &v) in l.iter_mut().zip(x) {
        *li = (code(iscale, v) + nmax) as u8;
    }
    let (sum_lx, sum_l2) = sums(iscale);
    let mut scale = if sum_l2 != 0.0 { sum_lx / sum_l2 } else { 0.0 };
    let mut best = scale * sum_lx;
    for k in -9..=9 {
        if k == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * k as f32) / max;
        let (sum_lx, sum_l2) = sums(iscale);
        if sum_l2 > 0.0 && sum_lx * sum_lx > best * sum_l2 {
            for (li, &v) in l.iter_mut().zip(x) {
                *li = (code(iscale, v) + nmax) as u8;
            }
            scale = sum_lx / sum_l2;
            best = scale * sum_lx;
        }
    }
    scale
}

/// Q6_K: 16 groups of 16 six-bit codes with `i8` scales.
fn q6_k(x: &[f32], out: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs) = (0.0f32, 0.0f32);
    for g in 0..16 {
        scales[g] = fit_symmetric(&x[16 * g..16 * g + 16], 32, &mut l[16 * g..16 * g + 16]);
        if scales[g].abs() > max_abs {
            max_abs = scales[g].abs();
            max_scale = scales[g];
        }
    }
    out.fill(0);
    if max_abs < 1e-15 {
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(out, 208, 1.0 / iscale);
    let d = f16_round(1.0 / iscale);
    for g in 0..16 {
        let q = nearest(iscale * scales[g]).min(127) as i8;
        out[192 + g] = q as u8;
        let dg = d * f32::from(q);
        if dg == 0.0 {
            continue;
        }
        for i in 16 * g..16 * g + 16 {
            l[i] = (nearest(x[i] / dg).clamp(-32, 31) + 32) as u8;
        }
    }
    let (ql, qh) = out[..192].split_at_mut(128);
    for n in 0..2 {
        let (ql, qh, l) = (
            &mut ql[64 * n..64 * n + 64],
            &mut qh[32 * n..32 * n + 32],
            &l[128 * n..],
        );
        for j in 0..32 {
            let (a, b, c, e) = (l[j], l[j + 32], l[j + 64], l[j + 96]);
            ql[j] = (a & 0x0F) | ((c & 0x0F) << 4);
            ql[j + 32] = (b & 0x0F) | ((e & 0x0F) << 4);
            qh[j] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize_row;

    /// Gaussian values (Box–Muller over a fixed xorshift stream), with a few outliers.
    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|i| {
                let g = (-2.0 * next().ln()).sqrt() * (std::f64::consts::TAU * next()).cos();
                let g = if i % 97 == 5 { g * 6.0 } else { g };
                (g * 0.02) as f32
            })
            .collect()
    }

    /// RMS error of decode(encode(x)) relative to the RMS of `x`, in f64.
    fn relative_rms(wtype: WType, x: &[f32]) -> f64 {
        let mut bytes = vec![0u8; wtype.row_bytes(x.len()).unwrap()];
        encode_row(wtype, x, &mut bytes).unwrap();
        let mut y = vec![0.0f32; x.len()];
        dequantize_row(wtype, &bytes, &mut y);
        let err: f64 = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        let sig: f64 = x.iter().map(|&a| f64::from(a).powi(2)).sum();
        (err / sig).sqrt()
    }

    // Bounds: the RMS error of a uniform quantizer is step/√12; on Gaussian blocks the step
    // is about (block range) / (levels − 1). Measured values sit well inside these; a
    // layout slip (a swapped nibble, a wrong scale bit) costs orders of magnitude more.
    const BOUNDS: [(WType, f64); 10] = [
        (WType::F16, 1e-3),
        (WType::BF16, 4e-3),
        (WType::Q8_0, 0.01),
        (WType::Q6_K, 0.035),
        (WType::Q5_0, 0.08),
        (WType::Q5_1, 0.07),
        (WType::Q5_K, 0.07),
        (WType::Q4_0, 0.15),
        (WType::Q4_1, 0.14),
        (WType::Q4_K, 0.12),
    ];

    #[test]
    fn round_trip_error_is_within_each_types_bound() {
        let x = gaussian(QK_K * 64, 7);
        for (t, bound) in BOUNDS {
            let e = relative_rms(t, &x);
            eprintln!("{t:?}: relative RMS error {e:.5}");
            assert!(e < bound, "{t:?}: relative RMS error {e:.4} over {bound}");
            assert!(
                e > 0.0 || t == WType::F32,
                "{t:?}: no error at all is suspicious"
            );
        }
        assert_eq!(relative_rms(WType::F32, &x), 0.0);
    }

    #[test]
    fn more_bits_lose_less() {
        let x = gaussian(QK_K * 32, 11);
        let e = |t| relative_rms(t, &x);
        assert!(e(WType::Q8_0) < e(WType::Q6_K));
        assert!(e(WType::Q6_K) < e(WType::Q5_K));
        assert!(e(WType::Q5_K) < e(WType::Q4_K));
        assert!(e(WType::Q5_1) < e(WType::Q4_1));
        // The fitted k-quant scales beat the plain min/max grid at the same bits.
        assert!(e(WType::Q4_K) < e(WType::Q4_1));
    }

    #[test]
    fn exact_grid_values_survive_unchanged() {
        // Values already on a 16-level grid with a power-of-two step decode exactly.
        let x: Vec<f32> = (0..64).map(|i| ((i % 16) as f32 - 8.0) * 0.25).collect();
        for t in [WType::Q4_0, WType::Q4_1, WType::Q6_K] {
            let xs = if t.block_elems() == QK_K {
                x.repeat(4)
            } else {
                x.clone()
            };
            assert!(relative_rms(t, &xs) < 1e-6, "{t:?}");
        }
    }

    #[test]
    fn zero_and_constant_blocks_decode_to_themselves() {
        for t in [
            WType::Q8_0,
            WType::Q4_0,
            WType::Q4_1,
            WType::Q5_0,
            WType::Q5_1,
            WType::Q4_K,
            WType::Q5_K,
            WType::Q6_K,
        ] {
            let zeros = vec![0.0f32; QK_K];
            assert_eq!(relative_rms_abs(t, &zeros), 0.0, "{t:?} zeros");
        }
        for t in [WType::Q4_1, WType::Q5_1, WType::Q4_K, WType::Q5_K] {
            let c = vec![0.5f32; QK_K];
            assert!(relative_rms(t, &c) < 2e-3, "{t:?} constant");
        }
    }

    fn relative_rms_abs(wtype: WType, x: &[f32]) -> f64 {
        let mut bytes = vec![0u8; wtype.row_bytes(x.len()).unwrap()];
        encode_row(wtype, x, &mut bytes).unwrap();
        let mut y = vec![1.0f32; x.len()];
        dequantize_row(wtype, &bytes, &mut y);
        x.iter()
            .zip(&y)
            .map(|(&a, &b)| f64::from((a - b).abs()))
            .sum()
    }

    #[test]
    fn q8_0_and_q4_0_blocks_match_the_reference_method_by_hand() {
        // One block with known largest value: Q8_0 d = 1.27/127 = 0.01, Q4_0 d = -2/-8.
        let mut x = [0.0f32; 32];
        x[0] = 1.27;
        x[1] = -0.005; // a tie: rounds away from zero to -1 in Q8_0
        x[2] = 0.5;
        let mut b = [0u8; 34];
        encode_row(WType::Q8_0, &x, &mut b).unwrap();
        assert_eq!(
            half::f16::from_le_bytes([b[0], b[1]]),
            half::f16::from_f32(0.01)
        );
        assert_eq!([b[2] as i8, b[3] as i8, b[4] as i8], [127, -1, 50]);
        let mut x = [0.0f32; 32];
        x[3] = -2.0;
        x[4] = 1.0;
        let mut b = [0u8; 18];
        encode_row(WType::Q4_0, &x, &mut b).unwrap();
        assert_eq!(half::f16::from_le_bytes([b[0], b[1]]).to_f32(), 0.25);
        // code = trunc(x / d + 8.5), clamped to 15: -2 → 0, 1 → 12, 0 → 8.
        assert_eq!(b[2 + 3] & 0x0F, 0);
        assert_eq!(b[2 + 4] & 0x0F, 12);
        assert_eq!(b[2] & 0x0F, 8);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3F80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3F82);
        assert!(f32::from_bits(u32::from(bf16_bits(f32::NAN)) << 16).is_nan());
    }

    #[test]
    fn q2_k_and_q3_k_have_no_encoder() {
        assert!(!can_encode(WType::Q3_K));
        let mut out = vec![0u8; 110];
        assert_eq!(
            encode_row(WType::Q3_K, &[0.0; QK_K], &mut out),
            Err(NoEncoder(WType::Q3_K))
        );
    }
}
