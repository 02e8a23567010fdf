//! The AVX-512 builds against the AVX2 ones, and decode's row-by-row path against the
//! tiles: the same bits. The vector SiLU against libm's, within a few roundings.

use super::super::{OutPtr, RowsRef};
use super::*;
use crate::quant::{BlockQ8, QK, WType, quantize_row_for, reference};

/// Values in [-1, 1) from a xorshift sequence started at `seed`.
fn uniform(mut state: u64) -> impl FnMut() -> f32 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    }
}

/// Weights of `rows` × `cols` in each 8-bit-activation type, and `n_tokens` quantized
/// activation rows, from a fixed xorshift sequence.
fn case(rows: usize, cols: usize, n_tokens: usize) -> (Vec<(WType, Vec<u8>)>, Vec<BlockQ8>) {
    let mut next = uniform(0x2545_F491_4F6C_DD1D);
    let wf: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
    let x: Vec<f32> = (0..n_tokens * cols).map(|_| next()).collect();
    let mut xq = vec![BlockQ8::default(); n_tokens * cols / QK];
    // One scale per 256 values where the rows allow it: what the k-quants need, and
    // valid for every other type.
    for (xr, qr) in x.chunks(cols).zip(xq.chunks_mut(cols / QK)) {
        quantize_row_for(WType::Q4_K, xr, qr);
    }
    let mut weights = vec![
        (WType::Q4_0, reference::quantize_q4_0(&wf)),
        (WType::Q4_1, reference::quantize_q4_1(&wf)),
        (WType::Q8_0, reference::quantize_q8_0(&wf)),
        (WType::Q5_0, reference::quantize_q5_0(&wf)),
        (WType::Q5_1, reference::quantize_q5_1(&wf)),
    ];
    if cols.is_multiple_of(crate::quant::QK_K) {
        weights.extend([
            (WType::Q4_K, reference::quantize_q4_k(&wf)),
            (WType::Q5_K, reference::quantize_q5_k(&wf)),
            (WType::Q6_K, reference::quantize_q6_k(&wf)),
            (WType::Q3_K, reference::quantize_q3_k(&wf)),
        ]);
    }
    (weights, xq)
}

/// The bits of the `n_tokens` × `rows` outputs `run` writes through the pointer it is
/// given for the matrix it is given.
fn bits_of(
    (wtype, bytes): &(WType, Vec<u8>),
    rows: usize,
    cols: usize,
    n_tokens: usize,
    run: impl FnOnce(RowsRef<'_>, OutPtr),
) -> Vec<u32> {
    let w = RowsRef {
        wtype: *wtype,
        data: bytes,
        row_bytes: bytes.len() / rows,
        cols,
    };
    let mut out = vec![0.0f32; n_tokens * rows];
    run(
        w,
        OutPtr {
            ptr: out.as_mut_ptr(),
            ld: rows,
        },
    );
    assert!(out.iter().any(|&v| v != 0.0), "{wtype:?}: nothing computed");
    out.iter().map(|x| x.to_bits()).collect()
}

/// The bits of `n_tokens` × `rows` outputs of one build.
///
/// # Safety
/// AVX2/FMA/F16C must be present, and the CPU must allow `build`.
unsafe fn product(
    build: Build,
    w: &(WType, Vec<u8>),
    rows: usize,
    cols: usize,
    acts: &[BlockQ8],
    n_tokens: usize,
) -> Vec<u32> {
    bits_of(w, rows, cols, n_tokens, |rr, ptr| {
        // SAFETY: forwarded feature contract; the output holds n_tokens × rows and
        // nothing else writes it.
        unsafe { gemm_q8_on(build, rr, 0..rows, acts, None, n_tokens, ptr) }
    })
}

#[test]
fn one_token_row_by_row_gives_the_bits_of_the_two_token_tile() {
    if crate::Isa::detect() != crate::Isa::Avx2 {
        eprintln!("skipped: this CPU has no AVX2/FMA/F16C");
        return;
    }
    let (rows, cols) = (9, 512);
    let (weights, xq) = case(rows, cols, 2);
    let builds = Build::available();
    for w in &weights {
        for &build in &builds {
            // SAFETY: AVX2/FMA/F16C checked above, the rest by `Build::available`.
            let (one, two) = unsafe {
                (
                    product(build, w, rows, cols, &xq[..cols / QK], 1),
                    product(build, w, rows, cols, &xq, 2),
                )
            };
            assert_eq!(one, two[..rows], "{:?} {build:?}", w.0);
        }
    }
}

#[test]
fn the_avx512_build_of_the_attention_kernel_gives_the_avx2_build_bit_for_bit() {
    if crate::Isa::detect() != crate::Isa::Avx2 || !has_avx512() {
        eprintln!("skipped: this CPU has no AVX-512F/VL/BW/VNNI");
        return;
    }
    let mut next = uniform(0x9E37_79B9_7F4A_7C15);
    fn run<const HD8: usize>(
        wide: bool,
        q: &[f32],
        kv: (&[f32], &[f32]),
        vsm: Option<&[f32]>,
        nv: usize,
    ) -> Vec<u32> {
        // Two blocks in a row, so the second rescales what the first accumulated.
        let mut part = vec![0.0f32; HD8 * 8 + 2];
        part[0] = f32::NEG_INFINITY;
        for _ in 0..2 {
            // SAFETY: features checked by the caller; q has HD8·8 values, kv nv rows
            // each, part HD8·8 + 2, nv ≤ 32, vsm two values per (row, group).
            unsafe {
                if wide {
                    attend_block_wide::<HD8>(q, 0.25, kv.0, kv.1, vsm, nv, 0.125, &mut part)
                } else {
                    attend_block::<HD8>(q, 0.25, kv.0, kv.1, vsm, nv, 0.125, &mut part)
                }
            }
        }
        part.iter().map(|x| x.to_bits()).collect()
    }
    for hd in [64, 128] {
        let nv = 13;
        let q: Vec<f32> = (0..hd).map(|_| next()).collect();
        let kf: Vec<f32> = (0..nv * hd).map(|_| next()).collect();
        let vf: Vec<f32> = (0..nv * hd).map(|_| next()).collect();
        let sm: Vec<f32> = (0..2 * nv * hd / 32).map(|_| next()).collect();
        for vsm in [None, Some(&sm[..])] {
            let (narrow, wide) = if hd == 64 {
                (
                    run::<8>(false, &q, (&kf, &vf), vsm, nv),
                    run::<8>(true, &q, (&kf, &vf), vsm, nv),
                )
            } else {
                (
                    run::<16>(false, &q, (&kf, &vf), vsm, nv),
                    run::<16>(true, &q, (&kf, &vf), vsm, nv),
                )
            };
            assert_eq!(narrow, wide, "hd {hd}, codes {}", vsm.is_some());
            let finite = narrow.iter().all(|&b| f32::from_bits(b).is_finite());
            assert!(
                finite && narrow[2..].iter().any(|&b| b != 0),
                "nothing computed"
            );
        }
    }
}

#[test]
fn the_avx512_build_of_the_prefill_kernel_gives_the_avx2_build_bit_for_bit() {
    if crate::Isa::detect() != crate::Isa::Avx2 || !has_avx512() {
        eprintln!("skipped: this CPU has no AVX-512F/VL/BW/VNNI");
        return;
    }
    // Odd row and token counts reach every tile edge (4 × 2, 4 × 1, 1 × 1), and a
    // single token the row-by-row decode path.
    for (rows, cols, n_tokens) in [(37, 128, 67), (37, 128, 1), (37, 512, 67), (37, 256, 1)] {
        let (weights, xq) = case(rows, cols, n_tokens);
        for w in &weights {
            // SAFETY: AVX2/FMA/F16C and AVX-512F/VL/BW/VNNI checked above.
            let (narrow, wide) = unsafe {
                (
                    product(Build::Avx2, w, rows, cols, &xq, n_tokens),
                    product(Build::Avx512, w, rows, cols, &xq, n_tokens),
                )
            };
            assert_eq!(narrow, wide, "{:?}", w.0);
        }
    }
}

#[test]
fn every_token_of_a_many_token_product_gives_the_bits_of_that_token_alone() {
    if crate::Isa::detect() != crate::Isa::Avx2 {
        eprintln!("skipped: this CPU has no AVX2/FMA/F16C");
        return;
    }
    // 11 tokens: two 4-token tiles, a 2-token one and a single one; 9 rows: two 4-row
    // tiles and a lone row. A batched decode step relies on this: each sequence's token
    // gets the logits it would get decoded alone.
    let (rows, cols, n) = (9, 256, 11);
    let (weights, xq) = case(rows, cols, n);
    let nb = cols / QK;
    let builds = Build::available();
    for w in &weights {
        for &build in &builds {
            // SAFETY: AVX2/FMA/F16C checked above, the rest by `Build::available`.
            let all = unsafe { product(build, w, rows, cols, &xq, n) };
            for t in 0..n {
                // SAFETY: as above.
                let one = unsafe { product(build, w, rows, cols, &xq[t * nb..(t + 1) * nb], 1) };
                assert_eq!(
                    one,
                    all[t * rows..(t + 1) * rows],
                    "{:?} {build:?} token {t}",
                    w.0
                );
            }
        }
    }
}

/// The portable loop's bits for `n_tokens` × `rows` outputs.
fn portable_bits(
    w: &(WType, Vec<u8>),
    rows: usize,
    cols: usize,
    acts: &[BlockQ8],
    n_tokens: usize,
) -> Vec<u32> {
    bits_of(w, rows, cols, n_tokens, |rr, ptr| {
        // SAFETY: the output holds n_tokens × rows and nothing else writes it.
        unsafe { super::super::portable::gemm_q8(rr, 0..rows, acts, n_tokens, ptr) }
    })
}

#[test]
fn the_row_panel_kernels_give_the_portable_bits() {
    if crate::Isa::detect() != crate::Isa::Avx2 {
        eprintln!("skipped: this CPU has no AVX2/FMA/F16C");
        return;
    }
    // Row counts off the 8-row panel (13, 21, 5, 11) and token counts off every tile
    // width (8, 4, 2, 1), plus one token alone; 1280 columns take the 32-value kinds
    // past one 32-block panel, and 67, 75 and 131 tokens past one token block (64
    // tokens for the 32-value kinds, 128 for the k-quants; a second block reuses the
    // panel buffers): the portable loop's integer (super-)block sums
    // and float steps, bit for bit, on every build; a lone token (alone or the 65th)
    // takes the panel-free one-token tile.
    let builds = Build::available();
    for (rows, cols, n_tokens) in [
        (13, 512, 23),
        (21, 256, 1),
        (5, 768, 7),
        (8, 256, 16),
        (11, 1280, 75),
        (3, 1280, 1),
        (5, 256, 65),
        (11, 256, 67),
        (5, 256, 131),
        (37, 512, 17),
        (40, 768, 150),
        (16, 256, 300),
    ] {
        let (weights, xq) = case(rows, cols, n_tokens);
        for w in weights.iter().filter(|w| w.0 != WType::Q3_K) {
            let want = portable_bits(w, rows, cols, &xq, n_tokens);
            for &build in &builds {
                // SAFETY: AVX2/FMA/F16C checked above, the rest by `Build::available`.
                let got = unsafe { product(build, w, rows, cols, &xq, n_tokens) };
                assert_eq!(got, want, "{:?} {build:?} {rows}×{cols}×{n_tokens}", w.0);
            }
        }
    }
}

#[test]
fn q8_0_codes_at_the_ends_of_the_byte_range_give_the_portable_bits() {
    if crate::Isa::detect() != crate::Isa::Avx2 {
        eprintln!("skipped: this CPU has no AVX2/FMA/F16C");
        return;
    }
    // Codes -128 and 127 against activations ±127: the largest products either way of
    // computing a signed dot product (sign moved onto the activations, or 128 added).
    // 19 tokens take the AMX tiles where the CPU has them (a signed tile product).
    for (rows, cols, n_tokens) in [(9, 64, 3), (19, 96, 19)] {
        q8_0_extremes(rows, cols, n_tokens);
    }
}

fn q8_0_extremes(rows: usize, cols: usize, n_tokens: usize) {
    let block = |i: usize| {
        let mut b = vec![0x00, 0x3C]; // d = 1.0 in f16
        b.extend((0..32).map(|j| {
            if (i + j).is_multiple_of(3) {
                0x7F
            } else {
                0x80
            }
        }));
        b
    };
    let bytes: Vec<u8> = (0..rows * cols / QK).flat_map(block).collect();
    let mut next = uniform(0x5DEE_CE66_D1CE_4E5B);
    let x: Vec<f32> = (0..n_tokens * cols)
        .map(|_| if next() < 0.0 { -1.0 } else { 1.0 })
        .collect();
    let mut xq = vec![BlockQ8::default(); n_tokens * cols / QK];
    for (xr, qr) in x.chunks(cols).zip(xq.chunks_mut(cols / QK)) {
        quantize_row_for(WType::Q8_0, xr, qr);
    }
    let w = (WType::Q8_0, bytes);
    let want = portable_bits(&w, rows, cols, &xq, n_tokens);
    let builds = Build::available();
    for &build in &builds {
        // SAFETY: AVX2/FMA/F16C checked above, the rest by `Build::available`.
        let got = unsafe { product(build, &w, rows, cols, &xq, n_tokens) };
        assert_eq!(got, want, "{build:?}");
    }
}

#[test]
fn silu_through_the_vector_exponential_stays_within_a_few_roundings_of_libm() {
    if !std::arch::is_x86_feature_detected!("avx2") || !std::arch::is_x86_feature_detected!("fma") {
        return;
    }
    let mut next = uniform(5);
    // Every tail length, and values from deep in the negative range (where e^-x is clamped
    // and silu is a signed zero or nearly) to far positive.
    for n in 0..41 {
        let gate: Vec<f32> = (0..n)
            .map(|i| match i % 5 {
                0 => -100.0 + 0.5 * i as f32,
                1 => 90.0 - i as f32,
                _ => 12.0 * next(),
            })
            .collect();
        let up: Vec<f32> = (0..n).map(|_| 2.0 * next()).collect();
        let (mut want, mut got) = (gate.clone(), gate.clone());
        crate::simd::portable::silu_mul(&mut want, &up);
        // SAFETY: AVX2 and FMA detected above.
        unsafe { super::silu_mul(&mut got, &up) };
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let tol = 1e-6 * w.abs() + 1e-30;
            assert!((w - g).abs() <= tol, "n {n} i {i}: {g} vs libm's {w}");
        }
    }
}

#[test]
fn the_exact_transposed_key_kernel_gives_each_row_the_row_kernels_bits() {
    if crate::Isa::detect() != crate::Isa::Avx2 || !has_avx512() {
        eprintln!("skipped: this CPU has no AVX-512F/VL/BW/VNNI");
        return;
    }
    use super::attend_kt::{attend_kt_exact, kt_block};
    let mut next = uniform(0xD1B5_4A32_D192_ED03);
    fn rows<const RN: usize, const HD8: usize>(
        q: &[f32],
        blocks: &[(Vec<u16>, Vec<u16>)],
        scale: f32,
    ) -> (Vec<u32>, Vec<u32>) {
        let hd = 8 * HD8;
        let fresh = || {
            let mut p = vec![0.0f32; RN * (hd + 2)];
            p.chunks_mut(hd + 2).for_each(|r| r[0] = f32::NEG_INFINITY);
            p
        };
        let (mut alone, mut together) = (fresh(), fresh());
        let (mut kt, mut vt) = (vec![0.0f32; 16 * hd], vec![0.0f32; 16 * hd]);
        let (mut kf, mut vf) = (vec![0.0f32; 16 * hd], vec![0.0f32; 16 * hd]);
        for (k, v) in blocks {
            // SAFETY: AVX-512 and AVX2/FMA/F16C checked by the caller; 16 keys of hd
            // values each, hd 64 or 128; q holds RN rows, the parts RN rows of hd + 2.
            unsafe {
                super::f16_to_f32(k, &mut kf);
                super::f16_to_f32(v, &mut vf);
                for r in 0..RN {
                    let p = &mut alone[r * (hd + 2)..(r + 1) * (hd + 2)];
                    attend_block_wide::<HD8>(&q[r * hd..], 0.0, &kf, &vf, None, 16, scale, p);
                }
                kt_block(k, v, 16, hd, &mut kt, &mut vt);
                let qs = std::array::from_fn(|r| q.as_ptr().add(r * hd));
                let ps = std::array::from_fn(|r| together.as_mut_ptr().add(r * (hd + 2)));
                attend_kt_exact::<RN, HD8>(qs, ps, &kt, &vt, scale);
            }
        }
        let bits = |p: &[f32]| p.iter().map(|x| x.to_bits()).collect();
        (bits(&alone), bits(&together))
    }
    for hd in [64usize, 128] {
        // Queries with a spread of scores; three blocks, so later ones rescale.
        let q: Vec<f32> = (0..4 * hd).map(|_| 3.0 * next()).collect();
        let blocks: Vec<(Vec<u16>, Vec<u16>)> = (0..3)
            .map(|_| {
                let mut half = |n: usize| -> Vec<u16> {
                    let f: Vec<f32> = (0..n).map(|_| next()).collect();
                    let mut h = vec![0u16; n];
                    crate::ops::f32_to_f16(&f, &mut h);
                    h
                };
                (half(16 * hd), half(16 * hd))
            })
            .collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let pairs = match hd {
            64 => [
                rows::<1, 8>(&q, &blocks, scale),
                rows::<2, 8>(&q, &blocks, scale),
                rows::<3, 8>(&q, &blocks, scale),
                rows::<4, 8>(&q, &blocks, scale),
            ],
            _ => [
                rows::<1, 16>(&q, &blocks, scale),
                rows::<2, 16>(&q, &blocks, scale),
                rows::<3, 16>(&q, &blocks, scale),
                rows::<4, 16>(&q, &blocks, scale),
            ],
        };
        for (rn, (alone, together)) in pairs.iter().enumerate() {
            assert_eq!(alone, together, "hd {hd}, {} rows", rn + 1);
            assert!(alone.iter().all(|&b| f32::from_bits(b).is_finite()));
        }
    }
}
