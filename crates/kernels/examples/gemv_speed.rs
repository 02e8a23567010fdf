//! One-token (decode) product speed on a matrix larger than the last-level cache, read
//! once per pass, in GB/s of weights: what a model's decode step sees (a development aid;
//! the reported figures come from `llmem bench infer`). A matrix multiplied again and
//! again stays partly in the cache and reads faster than any model's weights do.
//!
//! `cargo run --release -p kernels --example gemv_speed -- [threads] [kind]`, kind one of
//! q8_0 q5_0 q4_0 q4_1 q4_k q6_k, or `stream`: a bare stream of loads and `vpdpbusd`
//! over Q8_0 blocks on x86-64 with AVX-512 VNNI, the ceiling no kernel reaches.

use std::time::Instant;

use kernels::matmul::{MatJob, QMatrix, matmul};
use kernels::pool::ThreadPool;
use kernels::quant::{BlockQ8, WType, quantize_row_for};

const PASSES: usize = 20;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let kind = std::env::args().nth(2).unwrap_or_else(|| "q8_0".into());
    let (wtype, block_bytes, block_values) = match kind.as_str() {
        "q8_0" | "stream" => (WType::Q8_0, 34, 32),
        "q5_0" => (WType::Q5_0, 22, 32),
        "q4_0" => (WType::Q4_0, 18, 32),
        "q4_1" => (WType::Q4_1, 20, 32),
        "q4_k" => (WType::Q4_K, 144, 256),
        "q6_k" => (WType::Q6_K, 210, 256),
        k => panic!("unknown kind {k}"),
    };
    // Qwen2.5's output matrix for the 32-value kinds; 1536 columns (a multiple of 256)
    // and as many bytes for the K-quants.
    let (rows, cols) = if block_values == 256 {
        (175_000, 1536)
    } else {
        (151_936, 896)
    };
    let w = random_blocks(rows * cols / block_values, block_bytes);
    let x: Vec<f32> = (0..cols)
        .map(|i| ((i * 37 % 100) as f32) / 50.0 - 1.0)
        .collect();
    let mut xq = vec![BlockQ8::default(); cols / 32];
    quantize_row_for(wtype, &x, &mut xq);
    let mut out = vec![0.0f32; rows];
    let pool = ThreadPool::new(threads).unwrap();
    let m = QMatrix::new(wtype, rows, cols, &w).unwrap();
    let mut rates = Vec::with_capacity(PASSES);
    for pass in 0..PASSES + 2 {
        let t = Instant::now();
        if kind == "stream" {
            stream(&w, threads);
        } else {
            matmul(&pool, &mut [MatJob::new(m, &mut out[..])], &x, &xq, 1);
        }
        if pass >= 2 {
            rates.push(w.len() as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "{kind}, {} MB, {threads} threads: best {:.1} GB/s, median {:.1}",
        w.len() / 1_000_000,
        rates[PASSES - 1],
        rates[PASSES / 2]
    );
}

/// `n` blocks of random codes, each with a modest f16 scale (and offset) so that no sum
/// overflows or turns into infinities.
fn random_blocks(n: usize, block_bytes: usize) -> Vec<u8> {
    let mut w = vec![0u8; n * block_bytes];
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    for b in w.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *b = s as u8;
    }
    let half = 0x2C00u16.to_le_bytes(); // 0.0625
    for blk in w.chunks_mut(block_bytes) {
        match block_bytes {
            210 => blk[208..].copy_from_slice(&half), // Q6_K: d last
            144 | 20 => {
                blk[..2].copy_from_slice(&half); // d, then dmin / m
                blk[2..4].copy_from_slice(&half);
            }
            _ => blk[..2].copy_from_slice(&half),
        }
    }
    w
}

/// Every Q8_0 block's codes through `vpdpbusd`, split over `threads` threads.
fn stream(w: &[u8], threads: usize) {
    let per = w.len().div_ceil(threads).div_ceil(34) * 34;
    std::thread::scope(|sc| {
        for part in w.chunks(per) {
            sc.spawn(move || std::hint::black_box(dot_stream(part)));
        }
    });
}

#[cfg(target_arch = "x86_64")]
fn dot_stream(w: &[u8]) -> i32 {
    if !std::arch::is_x86_feature_detected!("avx512vnni")
        || !std::arch::is_x86_feature_detected!("avx512vl")
    {
        panic!("stream needs AVX-512 VNNI");
    }
    // SAFETY: the features were detected above.
    unsafe { dot_stream_vnni(w) }
}

#[cfg(not(target_arch = "x86_64"))]
fn dot_stream(_: &[u8]) -> i32 {
    panic!("stream is for x86-64")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn dot_stream_vnni(w: &[u8]) -> i32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_si256(); 4];
    for (i, blk) in w.chunks_exact(34).enumerate() {
        // SAFETY: the block holds 34 bytes; 32 are read from byte 2.
        let v = unsafe { _mm256_loadu_si256(blk.as_ptr().add(2).cast()) };
        acc[i % 4] = _mm256_dpbusd_epi32(acc[i % 4], _mm256_sign_epi8(v, v), a);
    }
    let s = _mm256_add_epi32(
        _mm256_add_epi32(acc[0], acc[1]),
        _mm256_add_epi32(acc[2], acc[3]),
    );
    let mut o = [0i32; 8];
    // SAFETY: eight i32.
    unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), s) };
    o.iter().sum()
}
