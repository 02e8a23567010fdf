//! Reference quantizers, used by tests and by tools that write small models.
//!
//! They aim at simple and correct, not at the least error: each block's range is mapped
//! onto its codes with scales rounded up (so no value falls outside the codes), and every
//! value rounded to its nearest code. Input lengths must be whole blocks (32 values, or
//! 256 for the k-quants); the output is the block bytes in GGUF layout.

use super::{QK, QK_K, f16};

fn f16_bytes(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_bits().to_le_bytes()
}

fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// `x / s` rounded to the nearest integer and clamped to `lo..=hi`; 0 when `s` is 0.
fn code(x: f32, s: f32, lo: i32, hi: i32) -> i32 {
    if s == 0.0 {
        return 0;
    }
    ((x / s).round() as i32).clamp(lo, hi)
}

/// Integer multiples of `d` covering `v` (`⌈v / d⌉`, clamped to `0..=hi`).
fn steps_up(v: f32, d: f32, hi: i32) -> i32 {
    if d == 0.0 {
        return 0;
    }
    ((v / d).ceil() as i32).clamp(0, hi)
}

/// Per group of `n` values: the group's minimum (at most 0, negated, so ≥ 0) and its
/// range above that minimum.
fn min_range(x: &[f32], n: usize) -> Vec<(f32, f32)> {
    x.chunks_exact(n)
        .map(|c| {
            let mn = c.iter().copied().fold(0.0f32, f32::min);
            let mx = c.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            (-mn, mx - mn)
        })
        .collect()
}

/// Scale-and-min super-block codes shared by Q2_K, Q4_K and Q5_K: groups of `n` values,
/// `levels` codes, `bits`-bit scale and min. Returns (d, dmin, scales, mins, codes).
fn scale_min_codes(
    x: &[f32],
    n: usize,
    levels: i32,
    smax: i32,
) -> (f32, f32, Vec<u8>, Vec<u8>, Vec<u8>) {
    let g = min_range(x, n);
    let dmin = f16_round(g.iter().map(|v| v.0).fold(0.0, f32::max) / smax as f32);
    let mins: Vec<i32> = g.iter().map(|v| steps_up(v.0, dmin, smax)).collect();
    // The scale must cover the group's top once its (rounded-up) minimum is added.
    let need: Vec<f32> = x
        .chunks_exact(n)
        .zip(&mins)
        .map(|(c, &m)| {
            let top = c.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            (top + dmin * m as f32).max(0.0) / levels as f32
        })
        .collect();
    // One more step than the largest so the rounded-up scale fits in `smax`.
    let d = f16_round(need.iter().copied().fold(0.0, f32::max) / smax as f32);
    let d = if need.iter().any(|&s| steps_up(s, d, i32::MAX) > smax) {
        f16_round(d * (1.0 + 1.0 / smax as f32))
    } else {
        d
    };
    let scales: Vec<i32> = need.iter().map(|&s| steps_up(s, d, smax)).collect();
    let mut codes = Vec::with_capacity(x.len());
    for ((c, &s), &m) in x.chunks_exact(n).zip(&scales).zip(&mins) {
        let (s, m) = (d * s as f32, dmin * m as f32);
        codes.extend(c.iter().map(|&v| code(v + m, s, 0, levels) as u8));
    }
    let u8s = |v: Vec<i32>| v.into_iter().map(|x| x as u8).collect();
    (d, dmin, u8s(scales), u8s(mins), codes)
}

/// Packs eight 6-bit scales and mins the way Q4_K and Q5_K store them (12 bytes).
fn pack_scale_min_k4(sc: &[u8], mn: &[u8]) -> [u8; 12] {
    let mut b = [0u8; 12];
    for s in 0..8 {
        if s < 4 {
            b[s] |= sc[s] & 63;
            b[s + 4] |= mn[s] & 63;
        } else {
            b[s + 4] = (sc[s] & 0x0F) | ((mn[s] & 0x0F) << 4);
            b[s - 4] |= (sc[s] >> 4) << 6;
            b[s] |= (mn[s] >> 4) << 6;
        }
    }
    b
}

/// Quantizes `x` to Q4_K bytes (144 per 256 values).
pub fn quantize_q4_k(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK_K * 144);
    for c in x.chunks_exact(QK_K) {
        let (d, dmin, sc, mn, q) = scale_min_codes(c, 32, 15, 63);
        out.extend_from_slice(&f16_bytes(d));
        out.extend_from_slice(&f16_bytes(dmin));
        out.extend_from_slice(&pack_scale_min_k4(&sc, &mn));
        for g in 0..4 {
            out.extend((0..32).map(|l| q[64 * g + l] | (q[64 * g + 32 + l] << 4)));
        }
    }
    out
}

/// Quantizes `x` to Q5_K bytes (176 per 256 values).
pub fn quantize_q5_k(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK_K * 176);
    for c in x.chunks_exact(QK_K) {
        let (d, dmin, sc, mn, q) = scale_min_codes(c, 32, 31, 63);
        out.extend_from_slice(&f16_bytes(d));
        out.extend_from_slice(&f16_bytes(dmin));
        out.extend_from_slice(&pack_scale_min_k4(&sc, &mn));
        out.extend((0..32).map(|l| (0..8).fold(0u8, |h, s| h | ((q[32 * s + l] >> 4) << s))));
        for g in 0..4 {
            out.extend(
                (0..32).map(|l| (q[64 * g + l] & 0x0F) | ((q[64 * g + 32 + l] & 0x0F) << 4)),
            );
        }
    }
    out
}

/// Quantizes `x` to Q2_K bytes (84 per 256 values).
pub fn quantize_q2_k(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK_K * 84);
    for c in x.chunks_exact(QK_K) {
        let (d, dmin, sc, mn, q) = scale_min_codes(c, 16, 3, 15);
        out.extend((0..16).map(|g| sc[g] | (mn[g] << 4)));
        for n in 0..2 {
            out.extend(
                (0..32).map(|l| (0..4).fold(0u8, |b, j| b | (q[128 * n + 32 * j + l] << (2 * j)))),
            );
        }
        out.extend_from_slice(&f16_bytes(d));
        out.extend_from_slice(&f16_bytes(dmin));
    }
    out
}

/// Symmetric super-block codes shared by Q3_K and Q6_K: groups of 16, codes in
/// `-half..half`, scales in `1..=smax`. Returns (d, scales, codes + half).
fn symmetric_codes(x: &[f32], half: i32, smax: i32) -> (f32, Vec<i32>, Vec<u8>) {
    // The positive side has one code fewer, so it sets the step.
    let need: Vec<f32> = x
        .chunks_exact(16)
        .map(|c| c.iter().fold(0.0f32, |m, v| m.max(v.abs())) / (half - 1) as f32)
        .collect();
    let d = f16_round(need.iter().copied().fold(0.0, f32::max) / smax as f32);
    let d = if need.iter().any(|&s| steps_up(s, d, i32::MAX) > smax) {
        f16_round(d * (1.0 + 1.0 / smax as f32))
    } else {
        d
    };
    let scales: Vec<i32> = need.iter().map(|&s| steps_up(s, d, smax)).collect();
    let mut codes = Vec::with_capacity(x.len());
    for (c, &s) in x.chunks_exact(16).zip(&scales) {
        let s = d * s as f32;
        codes.extend(
            c.iter()
                .map(|&v| (code(v, s, -half, half - 1) + half) as u8),
        );
    }
    (d, scales, codes)
}

/// Quantizes `x` to Q6_K bytes (210 per 256 values).
pub fn quantize_q6_k(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK_K * 210);
    for c in x.chunks_exact(QK_K) {
        let (d, sc, q) = symmetric_codes(c, 32, 127);
        // Sub-block s = 4n + i: low nibbles in ql[64n + 32(i % 2) + l] (low half for
        // i < 2), top two bits in qh[32n + l] at bit 2i.
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for s in 0..8 {
            let (n, i) = (s / 4, s % 4);
            for l in 0..32 {
                let v = q[32 * s + l];
                ql[64 * n + 32 * (i % 2) + l] |= (v & 0x0F) << (4 * (i / 2));
                qh[32 * n + l] |= (v >> 4) << (2 * i);
            }
        }
        out.extend_from_slice(&ql);
        out.extend_from_slice(&qh);
        out.extend(sc.iter().map(|&s| s as i8 as u8));
        out.extend_from_slice(&f16_bytes(d));
    }
    out
}

/// Quantizes `x` to Q3_K bytes (110 per 256 values).
pub fn quantize_q3_k(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK_K * 110);
    for c in x.chunks_exact(QK_K) {
        let (d, sc, q) = symmetric_codes(c, 4, 31);
        let mut hm = [0u8; 32];
        let mut qs = [0u8; 64];
        for s in 0..8 {
            let (n, j) = (s / 4, s % 4);
            for l in 0..32 {
                let v = q[32 * s + l];
                qs[32 * n + l] |= (v & 3) << (2 * j);
                hm[l] |= (v >> 2) << s;
            }
        }
        // Biased 6-bit scales, packed: low nibbles of groups 0..8 then their high
        // nibbles for groups 8..16, and the top two bits of groups j, j+4, j+8, j+12 in
        // byte 8 + j.
        let s6: Vec<u8> = sc.iter().map(|&s| (s + 32) as u8).collect();
        let mut b = [0u8; 12];
        for j in 0..4 {
            b[j] = (s6[j] & 0x0F) | ((s6[j + 8] & 0x0F) << 4);
            b[j + 4] = (s6[j + 4] & 0x0F) | ((s6[j + 12] & 0x0F) << 4);
            b[8 + j] = (s6[j] >> 4)
                | ((s6[j + 4] >> 4) << 2)
                | ((s6[j + 8] >> 4) << 4)
                | ((s6[j + 12] >> 4) << 6);
        }
        out.extend_from_slice(&hm);
        out.extend_from_slice(&qs);
        out.extend_from_slice(&b);
        out.extend_from_slice(&f16_bytes(d));
    }
    out
}

/// Quantizes `x` to Q5_0 bytes (22 per 32 values).
pub fn quantize_q5_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK * 22);
    for c in x.chunks_exact(QK) {
        // The largest magnitude maps to code 0 (value -16 d) on its own side.
        let max = c
            .iter()
            .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = f16_round(max / -16.0);
        let q: Vec<u8> = c
            .iter()
            .map(|&v| (code(v, d, -16, 15) + 16) as u8)
            .collect();
        out.extend_from_slice(&f16_bytes(d));
        push_q5(&mut out, &q);
    }
    out
}

/// Quantizes `x` to Q5_1 bytes (24 per 32 values).
pub fn quantize_q5_1(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK * 24);
    for c in x.chunks_exact(QK) {
        let min = f16_round(c.iter().copied().fold(f32::INFINITY, f32::min));
        let max = c.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = f16_round((max - min) / 31.0);
        let q: Vec<u8> = c.iter().map(|&v| code(v - min, d, 0, 31) as u8).collect();
        out.extend_from_slice(&f16_bytes(d));
        out.extend_from_slice(&f16_bytes(min));
        push_q5(&mut out, &q);
    }
    out
}

/// Appends 32 five-bit codes as `qh` (bit i = bit 4 of code i) and nibbles (byte j holds
/// codes j and j + 16).
fn push_q5(out: &mut Vec<u8>, q: &[u8]) {
    let qh = (0..32).fold(0u32, |h, i| h | (u32::from(q[i] >> 4) << i));
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend((0..16).map(|j| (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4)));
}

/// Converts `x` to BF16 bytes, rounding to nearest even (NaN stays NaN).
pub fn to_bf16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|v| {
            let b = v.to_bits();
            let h = if v.is_nan() {
                (b >> 16) as u16 | 0x40
            } else {
                ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
            };
            h.to_le_bytes()
        })
        .collect()
}

/// Quantizes `x` to Q8_0 bytes.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK * 34);
    for c in x.chunks_exact(QK) {
        let amax = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(c.iter().map(|v| ((v * id).round() as i8) as u8));
    }
    out
}

/// Quantizes `x` to Q4_0 bytes.
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK * 18);
    for c in x.chunks_exact(QK) {
        let max = c
            .iter()
            .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
        out.extend((0..16).map(|j| q(c[j]) | (q(c[j + 16]) << 4)));
    }
    out
}

/// Quantizes `x` to Q4_1 bytes.
pub fn quantize_q4_1(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK * 20);
    for c in x.chunks_exact(QK) {
        let min = c.iter().copied().fold(f32::INFINITY, f32::min);
        let max = c.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        out.extend_from_slice(&f16::from_f32(min).to_bits().to_le_bytes());
        let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        out.extend((0..16).map(|j| q(c[j]) | (q(c[j + 16]) << 4)));
    }
    out
}

/// Converts `x` to F16 bytes.
pub fn to_f16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
        .collect()
}

/// Converts `x` to F32 bytes.
pub fn to_f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}
