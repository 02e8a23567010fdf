//! Every SIMD path gives the portable path's results (within float summation order).

use kernels::Isa;
use kernels::attention::{
    AttnCall, AttnShape, PagedKv, SPLIT_KEYS, attention_many_with, attention_with, scratch_len,
    scratch_len_many,
};
use kernels::kvquant::{self, BlockGeom, KvBlock, KvFormat};
use kernels::matmul::{MatJob, QMatrix, matmul_with};
use kernels::pool::ThreadPool;
use kernels::quant::{
    BlockQ8, WType, dequantize_row, layout, quantize_row_for, quantize_row_q8_with, reference,
};

/// A small deterministic generator (splitmix64) so tests need no RNG crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

fn encode(t: WType, x: &[f32]) -> Vec<u8> {
    match t {
        WType::Q4_0 => reference::quantize_q4_0(x),
        WType::Q4_1 => reference::quantize_q4_1(x),
        WType::Q8_0 => reference::quantize_q8_0(x),
        WType::Q5_0 => reference::quantize_q5_0(x),
        WType::Q5_1 => reference::quantize_q5_1(x),
        WType::Q2_K => reference::quantize_q2_k(x),
        WType::Q3_K => reference::quantize_q3_k(x),
        WType::Q4_K => reference::quantize_q4_k(x),
        WType::Q5_K => reference::quantize_q5_k(x),
        WType::Q6_K => reference::quantize_q6_k(x),
        WType::F16 => reference::to_f16_bytes(x),
        WType::BF16 => reference::to_bf16_bytes(x),
        _ => reference::to_f32_bytes(x),
    }
}

/// `w` × the `n_tokens` rows of `x` (quantized: `xq`) on `isa`.
fn product(
    isa: Isa,
    pool: &ThreadPool,
    w: QMatrix<'_>,
    (x, xq): (&[f32], &[BlockQ8]),
    n_tokens: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; n_tokens * w.rows()];
    matmul_with(isa, pool, &mut [MatJob::new(w, &mut out)], x, xq, n_tokens);
    out
}

#[test]
fn matmul_paths_agree_and_match_dequantized_reference() {
    let pool = ThreadPool::new(2).unwrap();
    let mut rng = Rng(7);
    for &t in &[
        WType::Q4_0,
        WType::Q4_1,
        WType::Q8_0,
        WType::Q5_0,
        WType::Q5_1,
        WType::Q2_K,
        WType::Q3_K,
        WType::Q4_K,
        WType::Q5_K,
        WType::Q6_K,
        WType::F16,
        WType::BF16,
        WType::F32,
    ] {
        // Odd row counts and token counts exercise every tile edge; k-quant rows are
        // whole 256-value super-blocks.
        let shapes: &[(usize, usize, usize)] = if t.block_elems() == 256 {
            &[(1, 256, 1), (7, 512, 3), (37, 256, 5), (130, 768, 67)]
        } else {
            &[(1, 32, 1), (7, 64, 3), (37, 96, 5), (130, 128, 67)]
        };
        for &(rows, cols, n_tokens) in shapes {
            let wf = rng.vec(rows * cols);
            let bytes = encode(t, &wf);
            let w = QMatrix::new(t, rows, cols, &bytes).unwrap();
            let x = rng.vec(n_tokens * cols);
            let mut xq = vec![BlockQ8::default(); n_tokens * cols / 32];
            for (xr, qr) in x.chunks(cols).zip(xq.chunks_mut(cols / 32)) {
                quantize_row_for(t, xr, qr);
            }
            // Reference: dequantized weights × (dequantized) activations in f64.
            let mut wd = vec![0.0f32; cols];
            let mut reference = vec![0.0f64; n_tokens * rows];
            for r in 0..rows {
                dequantize_row(t, w.row(r), &mut wd);
                for tok in 0..n_tokens {
                    let mut s = 0.0f64;
                    for k in 0..cols {
                        let a = if t.uses_q8_activations() {
                            let b = &xq[tok * cols / 32 + k / 32];
                            f64::from(b.qs[k % 32]) * f64::from(b.d)
                        } else {
                            f64::from(x[tok * cols + k])
                        };
                        s += f64::from(wd[k]) * a;
                    }
                    reference[tok * rows + r] = s;
                }
            }
            let mut results = Vec::new();
            let isas = Isa::available();
            for &isa in &isas {
                let out = product(isa, &pool, w, (&x, &xq), n_tokens);
                for (i, (o, r)) in out.iter().zip(&reference).enumerate() {
                    let tol = 1e-4 * (1.0 + r.abs()) * (cols as f64).sqrt();
                    assert!(
                        (f64::from(*o) - r).abs() < tol,
                        "{t:?} {isa:?} [{i}]: {o} vs {r}"
                    );
                }
                results.push(out);
            }
            for (o, isa) in results[1..].iter().zip(&isas[1..]) {
                for (a, b) in o.iter().zip(&results[0]) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{t:?}: {a} vs {b}");
                }
                // These kinds form exact integers and take the same float steps on every
                // path (row panels, AMX tiles over token rows packed by the product); so
                // do Q2_K and Q3_K on NEON.
                let neon_low = *isa == Isa::Neon && matches!(t, WType::Q2_K | WType::Q3_K);
                if neon_low
                    || matches!(
                        t,
                        WType::Q4_K
                            | WType::Q5_K
                            | WType::Q6_K
                            | WType::Q4_0
                            | WType::Q4_1
                            | WType::Q5_0
                            | WType::Q5_1
                            | WType::Q8_0
                    )
                {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(o), bits(&results[0]), "{t:?} {rows}×{cols}×{n_tokens}");
                }
            }
        }
    }
}

/// A prompt wide enough that its token rows outgrow L2 is cut into token groups (see
/// `matmul`): each token still gets the bits it gets in a product of a few tokens, on
/// every path (the tile kernels' partial last tile of a group included).
#[test]
fn a_product_cut_into_token_groups_gives_every_token_its_own_bits() {
    let pool = ThreadPool::new(3).unwrap();
    let mut rng = Rng(11);
    // 301 tokens × 4,864 values: 1.4 MiB of token rows, two groups of 150 and 151.
    let (rows, cols, n_tokens) = (37, 4864, 301);
    let x = rng.vec(n_tokens * cols);
    for t in [
        WType::Q4_K,
        WType::Q6_K,
        WType::Q5_0,
        WType::Q8_0,
        WType::F16,
    ] {
        let bytes = encode(t, &rng.vec(rows * cols));
        let w = QMatrix::new(t, rows, cols, &bytes).unwrap();
        let mut xq = vec![BlockQ8::default(); n_tokens * cols / 32];
        for (xr, qr) in x.chunks(cols).zip(xq.chunks_mut(cols / 32)) {
            quantize_row_for(t, xr, qr);
        }
        for isa in Isa::available() {
            let whole = product(isa, &pool, w, (&x, &xq), n_tokens);
            // Slices of 43 tokens: one group each, and a tile count of their own.
            for t0 in (0..n_tokens).step_by(43) {
                let t1 = (t0 + 43).min(n_tokens);
                let blocks = (t0 * cols / 32)..(t1 * cols / 32);
                let part = product(
                    isa,
                    &pool,
                    w,
                    (&x[t0 * cols..t1 * cols], &xq[blocks]),
                    t1 - t0,
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&part),
                    bits(&whole[t0 * rows..t1 * rows]),
                    "{t:?} {isa:?} tokens {t0}..{t1}"
                );
            }
        }
    }
}

#[test]
#[should_panic(expected = "one scale per 256 values")]
fn k_quant_weights_refuse_activations_with_a_scale_per_32_values() {
    let pool = ThreadPool::new(1).unwrap();
    let x = Rng(3).vec(256);
    let bytes = reference::quantize_q4_k(&x);
    let w = QMatrix::new(WType::Q4_K, 1, 256, &bytes).unwrap();
    let mut xq = vec![BlockQ8::default(); 8];
    kernels::quant::quantize_row_q8(&x, &mut xq);
    let mut out = vec![0.0f32; 1];
    kernels::matmul::matmul(&pool, &mut [MatJob::new(w, &mut out)], &x, &xq, 1);
}

/// Q4_K, Q5_K and Q6_K products against an f64 product of the same integer codes,
/// scales and activations: the integer super-block sums leave three float roundings per super-block
/// (the sum's conversion, `d · da`, the multiply-add) and the additions across
/// super-blocks, so the error stays within a few units of the last place of the terms'
/// magnitudes. The largest error seen is printed (`--nocapture`).
#[test]
fn k_quant_products_stay_within_a_few_roundings_of_f64() {
    let pool = ThreadPool::new(2).unwrap();
    let mut rng = Rng(11);
    let (rows, cols, n_tokens) = (24, 2048, 3);
    for t in [WType::Q4_K, WType::Q5_K, WType::Q6_K] {
        let bytes = encode(t, &rng.vec(rows * cols));
        let w = QMatrix::new(t, rows, cols, &bytes).unwrap();
        let x = rng.vec(n_tokens * cols);
        let mut xq = vec![BlockQ8::default(); n_tokens * cols / 32];
        for (xr, qr) in x.chunks(cols).zip(xq.chunks_mut(cols / 32)) {
            quantize_row_for(t, xr, qr);
        }
        // Each weight exactly, as its two terms: d · sc · code and -dmin · min.
        let bb = t.block_bytes();
        let group = if t == WType::Q6_K { 16 } else { 32 };
        let mut terms = vec![(0.0f64, 0.0f64); rows * cols];
        let mut k = layout::KCodes::default();
        for r in 0..rows {
            for (sb, blk) in w.row(r).chunks_exact(bb).enumerate() {
                layout::decode_k(t, blk, &mut k);
                let ks = layout::k_scales(t, blk);
                for i in 0..256 {
                    let g = i / group;
                    terms[r * cols + sb * 256 + i] = (
                        f64::from(ks.d) * f64::from(ks.sc[g]) * f64::from(k.code[i]),
                        -f64::from(ks.dmin) * f64::from(ks.min[i / 32 % 8]),
                    );
                }
            }
        }
        let mut worst = 0.0f64;
        for isa in Isa::available() {
            let out = product(isa, &pool, w, (&x, &xq), n_tokens);
            for r in 0..rows {
                for tok in 0..n_tokens {
                    let (mut s, mut mag) = (0.0f64, 0.0f64);
                    for k in 0..cols {
                        let b = &xq[tok * cols / 32 + k / 32];
                        let a = f64::from(b.qs[k % 32]) * f64::from(b.d);
                        let (c, m) = terms[r * cols + k];
                        s += (c + m) * a;
                        mag += (c.abs() + m.abs()) * a.abs();
                    }
                    let err = (f64::from(out[tok * rows + r]) - s).abs() / mag;
                    worst = worst.max(err);
                }
            }
        }
        println!("{t:?}: largest |error| / Σ|w·a| = {worst:.2e}");
        assert!(worst < 8.0 * f64::from(f32::EPSILON), "{t:?}: {worst:e}");
    }
}

fn naive_attention(
    q: &[f32],
    k: &[Vec<f32>],
    v: &[Vec<f32>],
    shape: &AttnShape,
    hd: usize,
) -> Vec<f32> {
    // k[h][j*hd..], v[h][j*hd..] per KV head.
    let g = shape.n_heads / shape.n_kv_heads;
    let mut out = vec![0.0f32; shape.n_q * shape.n_heads * hd];
    for t in 0..shape.n_q {
        for head in 0..shape.n_heads {
            let h = head / g;
            let qr = &q[(t * shape.n_heads + head) * hd..][..hd];
            let n = shape.pos0 + t + 1;
            let first = shape.window.map_or(0, |w| n.saturating_sub(w));
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    if j < first {
                        return f64::NEG_INFINITY;
                    }
                    let kr = &k[h][j * hd..][..hd];
                    qr.iter()
                        .zip(kr)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum::<f64>()
                        * f64::from(shape.scale)
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                let acc: f64 = (0..n).map(|j| e[j] * f64::from(v[h][j * hd + d])).sum();
                out[(t * shape.n_heads + head) * hd + d] = (acc / z) as f32;
            }
        }
    }
    out
}

#[test]
fn paged_attention_matches_naive_on_every_path() {
    let pool = ThreadPool::new(2).unwrap();
    let mut rng = Rng(11);
    // 64-wide heads take the fused kernel; 256-wide ones the grouped kernel, with groups
    // of four heads (one whole tile) and five (a tile and a lone row).
    for ((hd, bt, n_kv, n_heads), (pos0, n_q)) in [
        (64usize, 16usize, 3usize, 9usize),
        (256, 16, 1, 4),
        (256, 32, 2, 10),
    ]
    .iter()
    .flat_map(|s| {
        [
            (0usize, 1usize),
            (0, 7),
            (5, 1),
            (40, 9),
            (300, 1),
            (33, 64),
        ]
        .map(|c| (*s, c))
    }) {
        let n_keys = pos0 + n_q;
        let n_blocks = n_keys.div_ceil(bt);
        // Block layout: [K head0..head2][V head0..head2], each bt × hd.
        let stride = bt * hd;
        let block_len = 2 * n_kv * stride;
        let k: Vec<Vec<f32>> = (0..n_kv).map(|_| rng.vec(n_blocks * bt * hd)).collect();
        let v: Vec<Vec<f32>> = (0..n_kv).map(|_| rng.vec(n_blocks * bt * hd)).collect();
        // Round through f16 so the reference sees what the cache holds.
        let rt = |x: &Vec<f32>| -> Vec<f32> {
            x.iter().map(|a| half::f16::from_f32(*a).to_f32()).collect()
        };
        let (k, v): (Vec<_>, Vec<_>) = (k.iter().map(rt).collect(), v.iter().map(rt).collect());
        let mut blocks = vec![vec![0u16; block_len]; n_blocks];
        for (b, blk) in blocks.iter_mut().enumerate() {
            for h in 0..n_kv {
                for i in 0..stride {
                    blk[h * stride + i] = half::f16::from_f32(k[h][b * stride + i]).to_bits();
                    blk[(n_kv + h) * stride + i] =
                        half::f16::from_f32(v[h][b * stride + i]).to_bits();
                }
            }
        }
        let geom = BlockGeom {
            n_layers: 1,
            n_kv_heads: n_kv,
            head_dim: hd,
            block_tokens: bt,
        };
        let q = rng.vec(n_q * n_heads * hd);
        // Sliding windows inside a block, across block edges, and wider than the keys.
        for (fmt, window) in KvFormat::ALL
            .into_iter()
            .flat_map(|f| [None, Some(1), Some(7), Some(20), Some(1000)].map(|w| (f, w)))
        {
            let shape = AttnShape {
                n_q,
                pos0,
                n_heads,
                n_kv_heads: n_kv,
                scale: 0.125 * 4.0,
                window,
            };
            // Quantized blocks: the reference attends over what the portable path decodes.
            let (qblocks, k_ref, v_ref) = if fmt == KvFormat::F16 {
                (Vec::new(), k.clone(), v.clone())
            } else {
                let mut qb = Vec::new();
                let (mut kr, mut vr) = (k.clone(), v.clone());
                for (b, blk) in blocks.iter().enumerate() {
                    let nt = bt.min(n_keys - b * bt);
                    let mut out = vec![0u8; geom.block_bytes(fmt)];
                    kvquant::encode_block(fmt, &geom, blk, nt, &mut out);
                    for h in 0..n_kv {
                        let ko = geom.q_k_offset(fmt, 0, h);
                        let vo = geom.q_v_offset(fmt, 0, h);
                        kvquant::dequantize_k(
                            Isa::Portable,
                            fmt,
                            &geom,
                            &out[ko..],
                            nt,
                            &mut kr[h][b * stride..],
                        );
                        kvquant::dequantize_v(
                            Isa::Portable,
                            fmt,
                            &geom,
                            &out[vo..],
                            nt,
                            &mut vr[h][b * stride..],
                        );
                    }
                    qb.push(out);
                }
                (qb, kr, vr)
            };
            let views: Vec<KvBlock<'_>> = if fmt == KvFormat::F16 {
                blocks.iter().map(|b| KvBlock::F16(b)).collect()
            } else {
                qblocks.iter().map(|b| KvBlock::Quant(fmt, b)).collect()
            };
            let kv = PagedKv {
                blocks: &views,
                geom,
                layer: 0,
            };
            let want = naive_attention(&q, &k_ref, &v_ref, &shape, hd);
            for isa in Isa::available() {
                let mut scratch = vec![0.0f32; scratch_len(&shape, hd)];
                let mut out = vec![0.0f32; q.len()];
                attention_with(isa, &pool, &q, &kv, &shape, &mut scratch, &mut out);
                for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() < 2e-5 * (1.0 + b.abs()),
                        "{fmt:?} {isa:?} pos0={pos0} n_q={n_q} {window:?} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn attention_over_many_sequences_in_one_dispatch_equals_one_call_each_bit_for_bit() {
    let pool = ThreadPool::new(2).unwrap();
    let mut rng = Rng(23);
    let (hd, bt, n_kv, n_heads) = (64usize, 16usize, 3usize, 9usize);
    let geom = BlockGeom {
        n_layers: 2,
        n_kv_heads: n_kv,
        head_dim: hd,
        block_tokens: bt,
    };
    let block_len = 2 * 2 * n_kv * bt * hd;
    // (pos0, n_q, format) per sequence: decode at several depths, a prefill chunk, and
    // quantized blocks beside f16 ones.
    let seqs = [
        (0usize, 1usize, KvFormat::F16),
        (5, 1, KvFormat::Q8),
        (40, 9, KvFormat::F16),
        (300, 1, KvFormat::Q4),
        (17, 1, KvFormat::F16),
        (33, 64, KvFormat::Q2),
    ];
    let f16: Vec<Vec<Vec<u16>>> = seqs
        .iter()
        .map(|&(pos0, n_q, _)| {
            (0..(pos0 + n_q).div_ceil(bt))
                .map(|_| {
                    (0..block_len)
                        .map(|_| half::f16::from_f32(rng.f32()).to_bits())
                        .collect()
                })
                .collect()
        })
        .collect();
    let quant: Vec<Vec<Vec<u8>>> = seqs
        .iter()
        .zip(&f16)
        .map(|(&(_, _, fmt), blocks)| {
            blocks
                .iter()
                .map(|b| {
                    let mut out = vec![0u8; geom.block_bytes(fmt)];
                    if fmt != KvFormat::F16 {
                        kvquant::encode_block(fmt, &geom, b, bt, &mut out);
                    }
                    out
                })
                .collect()
        })
        .collect();
    let views: Vec<Vec<KvBlock<'_>>> = seqs
        .iter()
        .enumerate()
        .map(|(i, &(_, _, fmt))| {
            if fmt == KvFormat::F16 {
                f16[i].iter().map(|b| KvBlock::F16(b)).collect()
            } else {
                quant[i].iter().map(|b| KvBlock::Quant(fmt, b)).collect()
            }
        })
        .collect();
    let calls: Vec<(usize, usize)> = seqs.iter().map(|&(pos0, n_q, _)| (pos0, n_q)).collect();
    many_equals_alone(&pool, &views, geom, n_heads, &calls, &mut rng);
}

/// Calls of `(pos0, n_q)` over these views, with random queries, in every layer: each
/// call of `attention_many` on every ISA equals the same call alone, bit for bit (and is
/// finite and non-zero).
fn many_equals_alone(
    pool: &ThreadPool,
    views: &[Vec<KvBlock<'_>>],
    geom: BlockGeom,
    n_heads: usize,
    calls: &[(usize, usize)],
    rng: &mut Rng,
) {
    let shapes: Vec<AttnShape> = calls
        .iter()
        .map(|&(pos0, n_q)| AttnShape {
            n_q,
            pos0,
            n_heads,
            n_kv_heads: geom.n_kv_heads,
            scale: 0.125,
            window: None,
        })
        .collect();
    let qs: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| rng.vec(s.n_q * n_heads * geom.head_dim))
        .collect();
    for layer in 0..geom.n_layers {
        many_equals_alone_in(pool, views, geom, layer, &shapes, &qs);
    }
}

/// [`many_equals_alone`] for one layer's calls and queries.
fn many_equals_alone_in(
    pool: &ThreadPool,
    views: &[Vec<KvBlock<'_>>],
    geom: BlockGeom,
    layer: usize,
    shapes: &[AttnShape],
    qs: &[Vec<f32>],
) {
    let hd = geom.head_dim;
    let kv = |i: usize| PagedKv {
        blocks: &views[i],
        geom,
        layer,
    };
    for isa in Isa::available() {
        let mut outs: Vec<Vec<f32>> = qs.iter().map(|q| vec![0.0; q.len()]).collect();
        let mut scratch = vec![0.0f32; scratch_len_many(shapes, hd)];
        let mut calls: Vec<AttnCall<'_>> = outs
            .iter_mut()
            .enumerate()
            .map(|(i, out)| AttnCall {
                q: &qs[i],
                kv: kv(i),
                shape: shapes[i],
                out,
            })
            .collect();
        attention_many_with(isa, pool, &mut calls, &mut scratch);
        for (i, got) in outs.iter().enumerate() {
            let mut one = vec![0.0f32; got.len()];
            let mut scratch = vec![0.0f32; scratch_len(&shapes[i], hd)];
            attention_with(
                isa,
                pool,
                &qs[i],
                &kv(i),
                &shapes[i],
                &mut scratch,
                &mut one,
            );
            assert!(
                got.iter()
                    .zip(&one)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa:?} layer {layer} sequence {i}: batched differs from alone"
            );
            assert!(got.iter().all(|x| x.is_finite() && *x != 0.0));
        }
    }
}

/// Decode calls over a prefix of shared f16 blocks (as sequences attached to one prompt's
/// blocks are), at several depths, one leaving the prefix early, one with blocks of its
/// own and one of three query tokens: those that share whole splits are read once for
/// all (the kernel's own test checks which), and each still gets its bits alone.
#[test]
fn decode_calls_sharing_prefix_blocks_get_the_bits_they_get_alone() {
    let pool = ThreadPool::new(3).unwrap();
    let mut rng = Rng(41);
    let (hd, bt, n_kv, n_heads) = (64usize, 16usize, 3usize, 9usize);
    let geom = BlockGeom {
        n_layers: 2,
        n_kv_heads: n_kv,
        head_dim: hd,
        block_tokens: bt,
    };
    let mut block = || -> Vec<u16> {
        (0..2 * 2 * n_kv * bt * hd)
            .map(|_| half::f16::from_f32(rng.f32()).to_bits())
            .collect()
    };
    // Blocks per split; the shared prefix is three splits long.
    let wb = SPLIT_KEYS / bt;
    let shared: Vec<Vec<u16>> = (0..3 * wb).map(|_| block()).collect();
    let own: Vec<Vec<u16>> = (0..12).map(|_| block()).collect();
    // (shared blocks, own blocks, keys, query tokens)
    let seqs = [
        (3 * wb, 2usize, 3 * wb * bt + 20, 1usize),
        (3 * wb, 2, 3 * wb * bt + 20, 1),
        (2 * wb + 2, 1, (2 * wb + 2) * bt + 3, 1),
        (wb + 2, 3, (wb + 2) * bt + 40, 1),
        (0, 8, 8 * bt - 1, 1),
        (3 * wb, 1, 3 * wb * bt + 2, 3),
        (wb - 1, 0, (wb - 1) * bt, 1),
    ];
    let views: Vec<Vec<KvBlock<'_>>> = seqs
        .iter()
        .enumerate()
        .map(|(i, &(ns, no, _, _))| {
            let mut v: Vec<KvBlock<'_>> = shared[..ns].iter().map(|b| KvBlock::F16(b)).collect();
            v.extend(own[i..i + no].iter().map(|b| KvBlock::F16(b)));
            v
        })
        .collect();
    let calls: Vec<(usize, usize)> = seqs
        .iter()
        .map(|&(_, _, keys, n_q)| (keys - n_q, n_q))
        .collect();
    many_equals_alone(&pool, &views, geom, n_heads, &calls, &mut rng);
}

#[test]
fn activation_quantization_gives_the_portable_bits_on_every_isa() {
    let mut rng = Rng(31);
    // Random rows, a block of zeros, values on the rounding boundaries (k + 0.5 steps),
    // negative zeros and a lone large value.
    let mut x = rng.vec(32 * 40);
    x.extend([0.0f32; 32]);
    x.extend((0..32).map(|i| (i as f32 - 16.0 + 0.5) / 127.0 * 16.0));
    x.extend((0..32).map(|i| if i % 2 == 0 { -0.0 } else { 1e-30 }));
    x.extend((0..32).map(|i| if i == 7 { -1e6 } else { i as f32 }));
    let n = x.len() / 32;
    let mut want = vec![BlockQ8::default(); n];
    quantize_row_q8_with(Isa::Portable, &x, &mut want);
    for isa in Isa::available() {
        let mut got = vec![BlockQ8::default(); n];
        quantize_row_q8_with(isa, &x, &mut got);
        for (b, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                (g.d.to_bits(), g.s.to_bits(), g.qs),
                (w.d.to_bits(), w.s.to_bits(), w.qs),
                "{isa:?} block {b}"
            );
        }
    }
}
