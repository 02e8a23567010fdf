//! Measures the block codecs: compression ratio and compress/decompress GB/s.
//!
//! ```text
//! cargo run --release -p kvdisk --features zstd --example codec_bench          # synthetic cold KV
//! cargo run --release -p kvdisk --features zstd --example codec_bench -- FILE  # your bytes
//!     [--block-bytes N]   split FILE into independently compressed blocks (default 131072)
//!     [--codecs LIST]     comma-separated, e.g. none,lz4,zstd:1,zstd:3 (the default)
//!     [--reps N]          timed repetitions, the median is printed (default 7)
//! ```
//!
//! zstd needs kvdisk's `zstd` feature; without it the default list is none,lz4 and a zstd
//! codec in `--codecs` is refused.
//!
//! Each block is compressed on its own, as `BlockStore` stores them (one file per block);
//! speeds are raw bytes per second in both directions, single thread.
//!
//! Without FILE it synthesizes cold blocks laid out like `kernels::kvquant` (KIVI): a
//! SmolLM2-135M-shaped block (16 tokens, 30 layers, 3 KV heads of 64) per block; keys
//! quantized per channel over the block's tokens, values per token in groups of 32, both
//! asymmetric (`x ≈ code · scale + min`, f16 scale and min), from Gaussian activations with
//! a few outlier key channels. Codes of such data are roughly Gaussian around the middle
//! code, which is what bounds how well any codec can do: the order-0 entropy is printed
//! beside the measurements. An f16 set of the same activations is printed for context.

use std::time::Instant;

use kvdisk::Compression;

const TOKENS: usize = 16;
const LAYERS: usize = 30;
const HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const V_GROUP: usize = 32;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut block_bytes = 128 * 1024;
    let mut reps = 7;
    let default_codecs: &[&str] = if cfg!(feature = "zstd") {
        &["none", "lz4", "zstd:1", "zstd:3"]
    } else {
        &["none", "lz4"]
    };
    let mut codecs: Vec<Compression> = default_codecs
        .iter()
        .map(|s| s.parse().expect("built-in codec names parse"))
        .collect();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| die(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--block-bytes" => block_bytes = parse_num(&value("--block-bytes")),
            "--reps" => reps = parse_num(&value("--reps")).max(1),
            "--codecs" => {
                codecs = value("--codecs")
                    .split(',')
                    .map(|s| s.parse().unwrap_or_else(|e| die(&format!("{e}"))))
                    .collect()
            }
            "-h" | "--help" => {
                die("usage: codec_bench [FILE] [--block-bytes N] [--codecs LIST] [--reps N]")
            }
            _ if file.is_none() && !arg.starts_with('-') => file = Some(arg),
            _ => die(&format!("unexpected argument {arg:?}")),
        }
    }

    let (label, blocks) = match &file {
        Some(path) => {
            let bytes = std::fs::read(path).unwrap_or_else(|e| die(&format!("{path}: {e}")));
            let blocks: Vec<Vec<u8>> = bytes
                .chunks(block_bytes.max(1))
                .map(<[u8]>::to_vec)
                .collect();
            (
                format!("{path} in {} blocks of ≤{block_bytes} B", blocks.len()),
                vec![("file", blocks)],
            )
        }
        None => {
            let n = 64;
            let q4 = (0..n)
                .map(|i| synthetic_block(4, i as u64))
                .collect::<Vec<_>>();
            let q2 = (0..n)
                .map(|i| synthetic_block(2, 1000 + i as u64))
                .collect::<Vec<_>>();
            let label = format!(
                "synthetic KIVI cold blocks ({TOKENS} tok × {LAYERS} layers × {HEADS} KV heads × {HEAD_DIM}): \
                 {n} × {} B int4, {n} × {} B int2",
                q4[0].len(),
                q2[0].len()
            );
            // For context only: the hot tier's f16 (never written to disk as such).
            let f16 = (0..n)
                .map(|i| synthetic_f16_block(2000 + i as u64))
                .collect::<Vec<_>>();
            (label, vec![("int4", q4), ("int2", q2), ("f16", f16)])
        }
    };
    println!("{label}; median of {reps} reps, single thread");
    println!(
        "{:<6} {:<8} {:>8} {:>12} {:>12}   order-0 entropy bound",
        "data", "codec", "ratio", "comp GB/s", "decomp GB/s"
    );
    for (name, blocks) in &blocks {
        let raw_bytes: usize = blocks.iter().map(Vec::len).sum();
        let bound = entropy_ratio(blocks);
        for &c in &codecs {
            let r = measure(c, blocks, reps);
            println!(
                "{name:<6} {:<8} {:>8.3} {:>12.2} {:>12.2}   {bound:.3}",
                c.to_string(),
                raw_bytes as f64 / r.stored_bytes as f64,
                raw_bytes as f64 / r.compress_s / 1e9,
                raw_bytes as f64 / r.decompress_s / 1e9,
            );
        }
    }
}

struct Measured {
    stored_bytes: usize,
    compress_s: f64,
    decompress_s: f64,
}

fn measure(c: Compression, blocks: &[Vec<u8>], reps: usize) -> Measured {
    let mut stored: Vec<Vec<u8>> = vec![Vec::new(); blocks.len()];
    let mut out = Vec::new();
    let mut compress_s = Vec::new();
    let mut decompress_s = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        for (raw, s) in blocks.iter().zip(&mut stored) {
            kvdisk::compress(c, raw, s).expect("compress");
        }
        compress_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for (raw, s) in blocks.iter().zip(&stored) {
            kvdisk::decompress(c, s, raw.len(), &mut out).expect("decompress");
            std::hint::black_box(&out);
        }
        decompress_s.push(t.elapsed().as_secs_f64());
    }
    for (raw, s) in blocks.iter().zip(&stored) {
        kvdisk::decompress(c, s, raw.len(), &mut out).expect("decompress");
        assert!(out == *raw, "{c} did not round-trip");
    }
    Measured {
        stored_bytes: stored.iter().map(Vec::len).sum(),
        compress_s: median(compress_s),
        decompress_s: median(decompress_s),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// raw ÷ (order-0 byte entropy): what a coder of independent bytes could reach at best.
fn entropy_ratio(blocks: &[Vec<u8>]) -> f64 {
    let mut counts = [0u64; 256];
    let mut n = 0u64;
    for b in blocks.iter().flatten() {
        counts[*b as usize] += 1;
        n += 1;
    }
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.log2()
        })
        .sum();
    8.0 / bits
}

/// One cold block in the `kernels::kvquant` layout: per layer, K chunks then V chunks.
fn synthetic_block(bits: u32, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    for _layer in 0..LAYERS {
        let mut v_chunks = Vec::new();
        for _head in 0..HEADS {
            // Keys: a few channels carry outliers (KIVI's observation), each channel has
            // its own offset; quantized per channel over the block's tokens.
            let chan_scale: Vec<f32> = (0..HEAD_DIM)
                .map(|_| if rng.below(16) == 0 { 8.0 } else { 1.0 })
                .collect();
            let chan_bias: Vec<f32> = (0..HEAD_DIM).map(|_| rng.gauss() * 2.0).collect();
            let k: Vec<f32> = (0..TOKENS * HEAD_DIM)
                .map(|i| chan_bias[i % HEAD_DIM] + chan_scale[i % HEAD_DIM] * rng.gauss())
                .collect();
            let mut scales = Vec::new();
            let mut mins = Vec::new();
            let mut codes = vec![0u8; TOKENS * HEAD_DIM];
            for d in 0..HEAD_DIM {
                let col = (0..TOKENS).map(|t| k[t * HEAD_DIM + d]);
                let (s, m) = quant_params(col.clone(), bits);
                scales.extend_from_slice(&f16_bits(s).to_le_bytes());
                mins.extend_from_slice(&f16_bits(m).to_le_bytes());
                for (t, x) in col.enumerate() {
                    codes[t * HEAD_DIM + d] = code(x, s, m, bits);
                }
            }
            out.extend_from_slice(&scales);
            out.extend_from_slice(&mins);
            out.extend_from_slice(&pack(&codes, bits));

            // Values: per token, groups of 32 channels.
            let mut params = Vec::new();
            let mut codes = vec![0u8; TOKENS * HEAD_DIM];
            for t in 0..TOKENS {
                for g in 0..HEAD_DIM / V_GROUP {
                    let x: Vec<f32> = (0..V_GROUP).map(|_| rng.gauss()).collect();
                    let (s, m) = quant_params(x.iter().copied(), bits);
                    params.extend_from_slice(&f16_bits(s).to_le_bytes());
                    params.extend_from_slice(&f16_bits(m).to_le_bytes());
                    for (j, &x) in x.iter().enumerate() {
                        codes[t * HEAD_DIM + g * V_GROUP + j] = code(x, s, m, bits);
                    }
                }
            }
            v_chunks.extend_from_slice(&params);
            v_chunks.extend_from_slice(&pack(&codes, bits));
        }
        out.extend_from_slice(&v_chunks);
    }
    out
}

/// The same activations as f16, `[layer][K heads | V heads][token][dim]`.
fn synthetic_f16_block(seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    for _ in 0..LAYERS * 2 * HEADS * TOKENS * HEAD_DIM {
        out.extend_from_slice(&f16_bits(rng.gauss()).to_le_bytes());
    }
    out
}

fn quant_params(xs: impl Iterator<Item = f32>, bits: u32) -> (f32, f32) {
    let (lo, hi) = xs.fold((f32::MAX, f32::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let levels = ((1u32 << bits) - 1) as f32;
    (((hi - lo) / levels).max(1e-8), lo)
}

fn code(x: f32, scale: f32, min: f32, bits: u32) -> u8 {
    ((x - min) / scale)
        .round()
        .clamp(0.0, ((1u32 << bits) - 1) as f32) as u8
}

/// `8 / bits` codes per byte, lowest bits first.
fn pack(codes: &[u8], bits: u32) -> Vec<u8> {
    let per = (8 / bits) as usize;
    codes
        .chunks(per)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u8, |b, (k, &v)| b | (v << (k as u32 * bits)))
        })
        .collect()
}

/// f32 → IEEE half bits, round to nearest; enough for scales and minimums.
fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    let mant = b & 0x7f_ffff;
    if exp <= 0 {
        sign // flush tiny values to zero
    } else if exp >= 31 {
        sign | 0x7c00
    } else {
        let h = ((exp as u32) << 10 | (mant >> 13)) + ((mant >> 12) & 1);
        sign | h as u16
    }
}

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

fn parse_num(s: &str) -> usize {
    s.parse()
        .unwrap_or_else(|_| die(&format!("not a number: {s:?}")))
}

fn die(msg: &str) -> ! {
    eprintln!("codec_bench: {msg}");
    std::process::exit(2)
}
