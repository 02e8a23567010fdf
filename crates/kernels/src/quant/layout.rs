//! The bit layouts of the 5-bit and k-quant blocks, decoded to small integer codes.
//!
//! Every quantized value of these formats is `scale · code + offset`, with one scale and
//! offset per group of 16 values (k-quants) or per block of 32 (`Q5_0`, `Q5_1`). Decoding
//! the layout into codes once, here, gives the dequantizer and the portable matrix product
//! one shared reading of the format; the SIMD paths are tested against it.
//!
//! Super-blocks hold `QK_K = 256` values; all offsets below are into one super-block.
//!
//! ```text
//! Q2_K  84 B: scales[16] qs[64] d dmin     sub-block s (32 values, 0..8): n = s/4, j = s%4
//!       code = (qs[32n + l] >> 2j) & 3;   group g = 2s + l/16: scale d·(scales[g] & 15),
//!       offset -dmin·(scales[g] >> 4)
//! Q3_K 110 B: hmask[32] qs[64] scales[12] d
//!       code = ((qs[32n + l] >> 2j) & 3) - (hmask[l] bit s ? 0 : 4);  scale d·(sc6[g] - 32)
//! Q4_K 144 B: d dmin scales[12] qs[128]    sub-block s: byte qs[32(s/2) + l], low nibble
//!       for even s, high for odd; scale d·sc6[s], offset -dmin·min6[s]
//! Q5_K 176 B: d dmin scales[12] qh[32] qs[128]   as Q4_K, plus bit s of qh[l] as bit 4
//! Q6_K 210 B: ql[128] qh[64] scales[16] (i8) d   n = s/4, i = s%4:
//!       code = (nibble i/2 of ql[64n + 32(i%2) + l] | ((qh[32n + l] >> 2i) & 3) << 4) - 32
//!       scale d·scales[g]
//! Q5_0  22 B: d qh[4] qs[16]       code = nibble | (bit i of qh) << 4, value d·(code - 16)
//! Q5_1  24 B: d m qh[4] qs[16]     value d·code + m
//! ```
//!
//! The 6-bit scales and mins of Q4_K/Q5_K (`sc6`, `min6`, 8 of each in 12 bytes): for
//! `s < 4`, `sc6 = b[s] & 63` and `min6 = b[s + 4] & 63`; for `s ≥ 4`, the low four bits
//! are the nibbles of `b[s + 4]` and the high two bits the top bits of `b[s - 4]` (scale)
//! and `b[s]` (min). Q3_K's sixteen 6-bit scales: the low nibbles of bytes 0..8 are groups
//! 0..8, their high nibbles groups 8..16, and byte `8 + j` holds the high two bits of
//! groups `j, j + 4, j + 8, j + 12` in bits 0, 2, 4, 6.

use super::{QK_K, WType, read_f16};

/// The 6-bit scale and min of sub-block `s` (0..8) of a Q4_K/Q5_K scales array.
#[inline]
pub fn scale_min_k4(b: &[u8], s: usize) -> (u8, u8) {
    if s < 4 {
        (b[s] & 63, b[s + 4] & 63)
    } else {
        (
            (b[s + 4] & 0x0F) | ((b[s - 4] >> 6) << 4),
            (b[s + 4] >> 4) | ((b[s] >> 6) << 4),
        )
    }
}

/// Q3_K's sixteen 6-bit scales (unbiased: 0..64, the format subtracts 32).
#[inline]
pub fn scales_q3k(b: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for j in 0..4 {
        let hi = b[8 + j];
        out[j] = (b[j] & 0x0F) | ((hi & 3) << 4);
        out[j + 4] = (b[j + 4] & 0x0F) | (((hi >> 2) & 3) << 4);
        out[j + 8] = (b[j] >> 4) | (((hi >> 4) & 3) << 4);
        out[j + 12] = (b[j + 4] >> 4) | (((hi >> 6) & 3) << 4);
    }
    out
}

/// One k-quant super-block as codes: value `i` is `scale[i / 16] · code[i] + offset[i / 16]`.
pub struct KCodes {
    pub code: [i8; QK_K],
    pub scale: [f32; 16],
    pub offset: [f32; 16],
}

impl Default for KCodes {
    fn default() -> Self {
        KCodes {
            code: [0; QK_K],
            scale: [0.0; 16],
            offset: [0.0; 16],
        }
    }
}

/// The sixteen 16-value groups' scales and offsets of a Q2_K or Q3_K super-block (a
/// value is `scale · code + offset`; Q3_K has no offsets).
///
/// # Panics
/// If `wtype` is neither, or `blk` is short.
pub fn group_scales(wtype: WType, blk: &[u8]) -> ([f32; 16], [f32; 16]) {
    let (mut scale, mut offset) = ([0.0f32; 16], [0.0f32; 16]);
    match wtype {
        WType::Q2_K => {
            let sc = &blk[..16];
            let (d, dmin) = (read_f16(blk, 80), read_f16(blk, 82));
            for g in 0..16 {
                scale[g] = d * f32::from(sc[g] & 0x0F);
                offset[g] = -dmin * f32::from(sc[g] >> 4);
            }
        }
        WType::Q3_K => {
            let sc = scales_q3k(&blk[96..108]);
            let d = read_f16(blk, 108);
            for g in 0..16 {
                scale[g] = d * f32::from(i16::from(sc[g]) - 32);
            }
        }
        _ => panic!("{wtype:?} has no 16-value group scales"),
    }
    (scale, offset)
}

/// Decodes the super-block `blk` (`wtype.block_bytes()` bytes) of a k-quant type.
///
/// # Panics
/// If `wtype` is not a k-quant or `blk` is short.
pub fn decode_k(wtype: WType, blk: &[u8], out: &mut KCodes) {
    match wtype {
        WType::Q2_K => {
            let qs = &blk[16..80];
            for s in 0..8 {
                let (n, j) = (s / 4, s % 4);
                for l in 0..32 {
                    out.code[32 * s + l] = ((qs[32 * n + l] >> (2 * j)) & 3) as i8;
                }
            }
            (out.scale, out.offset) = group_scales(wtype, blk);
        }
        WType::Q3_K => {
            let (hm, qs) = (&blk[..32], &blk[32..96]);
            for s in 0..8 {
                let (n, j) = (s / 4, s % 4);
                for l in 0..32 {
                    let low = ((qs[32 * n + l] >> (2 * j)) & 3) as i8;
                    let high = (hm[l] >> s) & 1;
                    out.code[32 * s + l] = low - if high == 1 { 0 } else { 4 };
                }
            }
            (out.scale, out.offset) = group_scales(wtype, blk);
        }
        WType::Q4_K | WType::Q5_K => {
            let (d, dmin) = (read_f16(blk, 0), read_f16(blk, 2));
            let sc = &blk[4..16];
            let (qh, qs) = if wtype == WType::Q5_K {
                (Some(&blk[16..48]), &blk[48..176])
            } else {
                (None, &blk[16..144])
            };
            for s in 0..8 {
                let q = &qs[32 * (s / 2)..32 * (s / 2) + 32];
                for l in 0..32 {
                    let mut c = if s % 2 == 0 { q[l] & 0x0F } else { q[l] >> 4 };
                    if let Some(qh) = qh {
                        c |= ((qh[l] >> s) & 1) << 4;
                    }
                    out.code[32 * s + l] = c as i8;
                }
                let (scale, min) = scale_min_k4(sc, s);
                for g in [2 * s, 2 * s + 1] {
                    out.scale[g] = d * f32::from(scale);
                    out.offset[g] = -dmin * f32::from(min);
                }
            }
        }
        WType::Q6_K => {
            let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
            let d = read_f16(blk, 208);
            for s in 0..8 {
                let (n, i) = (s / 4, s % 4);
                let lo = &ql[64 * n + 32 * (i % 2)..][..32];
                for l in 0..32 {
                    let nib = if i < 2 { lo[l] & 0x0F } else { lo[l] >> 4 };
                    let high = (qh[32 * n + l] >> (2 * i)) & 3;
                    out.code[32 * s + l] = (nib | (high << 4)) as i8 - 32;
                }
            }
            for g in 0..16 {
                out.scale[g] = d * f32::from(sc[g] as i8);
                out.offset[g] = 0.0;
            }
        }
        _ => panic!("decode_k: {wtype:?} is not a k-quant"),
    }
}

/// The integer scales of one Q4_K, Q5_K or Q6_K super-block, as the integer super-block
/// product takes them: value `i` is `d · sc[g] · c[i] - dmin · min[g]`, where for Q4_K and
/// Q5_K `g = i / 32`, `c` is the code (0..16 or 0..32) and `sc`, `min` are the 6-bit
/// fields (0..64); for Q6_K `g = i / 16`, `c` is the code minus 32, `sc` the signed
/// scale, and there is no min (`dmin` is 0). These are [`decode_k`]'s `scale` and `offset`
/// before the multiplication by `d` and `dmin`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KScales {
    pub d: f32,
    pub dmin: f32,
    /// Q4_K/Q5_K: entries 0..8 (one per 32 values); Q6_K: all 16 (one per 16 values).
    pub sc: [i8; 16],
    /// Q4_K/Q5_K: one per 32 values; Q6_K: zeros.
    pub min: [u8; 8],
}

/// The integer scales of the Q4_K, Q5_K or Q6_K super-block `blk`.
///
/// # Panics
/// If `wtype` is none of those three or `blk` is short.
pub fn k_scales(wtype: WType, blk: &[u8]) -> KScales {
    let mut k = KScales::default();
    match wtype {
        WType::Q4_K | WType::Q5_K => {
            k.d = read_f16(blk, 0);
            k.dmin = read_f16(blk, 2);
            for s in 0..8 {
                let (sc, min) = scale_min_k4(&blk[4..16], s);
                k.sc[s] = sc as i8;
                k.min[s] = min;
            }
        }
        WType::Q6_K => {
            k.d = read_f16(blk, 208);
            for (o, &b) in k.sc.iter_mut().zip(&blk[192..208]) {
                *o = b as i8;
            }
        }
        _ => panic!("k_scales: {wtype:?} has no integer super-block scales"),
    }
    k
}

/// Decodes one `Q5_0`/`Q5_1` block: the 32 codes (0..32), the scale and the offset.
///
/// # Panics
/// If `wtype` is neither or `blk` is short.
pub fn decode_q5(wtype: WType, blk: &[u8]) -> ([u8; 32], f32, f32) {
    let d = read_f16(blk, 0);
    let (m, rest) = match wtype {
        WType::Q5_0 => (-16.0 * d, &blk[2..22]),
        WType::Q5_1 => (read_f16(blk, 2), &blk[4..24]),
        _ => panic!("decode_q5: {wtype:?} is not a 5-bit type"),
    };
    let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let qs = &rest[4..20];
    let mut code = [0u8; 32];
    for j in 0..16 {
        code[j] = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        code[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    (code, d, m)
}

/// Decodes one block of a 32-value kind (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`): its
/// codes in value order, the scale `d` and the offset `m` (`-8d` for `Q4_0`, `-16d` for
/// `Q5_0`, the stored minimum for `Q4_1`/`Q5_1`, 0 for `Q8_0`, whose codes are signed),
/// so that value `i` is `d · code[i] + m`.
///
/// # Panics
/// If `wtype` is none of these or `blk` is short.
pub fn decode_block32(wtype: WType, blk: &[u8]) -> ([i32; 32], f32, f32) {
    let d = read_f16(blk, 0);
    let mut code = [0i32; 32];
    let m = match wtype {
        WType::Q4_0 | WType::Q4_1 => {
            let (m, qs) = if wtype == WType::Q4_1 {
                (read_f16(blk, 2), &blk[4..20])
            } else {
                (-8.0 * d, &blk[2..18])
            };
            for j in 0..16 {
                code[j] = i32::from(qs[j] & 0x0F);
                code[j + 16] = i32::from(qs[j] >> 4);
            }
            m
        }
        WType::Q5_0 | WType::Q5_1 => {
            let (c, _, m) = decode_q5(wtype, blk);
            for (o, c) in code.iter_mut().zip(c) {
                *o = i32::from(c);
            }
            m
        }
        WType::Q8_0 => {
            for (o, &q) in code.iter_mut().zip(&blk[2..34]) {
                *o = i32::from(q as i8);
            }
            0.0
        }
        _ => panic!("decode_block32: {wtype:?} is not a 32-value block kind"),
    };
    (code, d, m)
}
