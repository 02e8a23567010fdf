//! Rough kernel throughput on SmolLM2-135M-shaped Q4_1 matrices (a development aid; the
//! reported figures come from `llmem bench infer`).
//!
//! `cargo run --release -p kernels --example kernel_speed -- [threads]`

use std::time::Instant;

use kernels::matmul::{MatJob, QMatrix, matmul};
use kernels::pool::ThreadPool;
use kernels::quant::{BlockQ8, quantize_row_q8, reference};

fn main() {
    let threads = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let pool = ThreadPool::new(threads).unwrap();
    let layers: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let (d, ff) = (576usize, 1536usize);
    let make = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 2654435761 + seed) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    };
    // Per layer: q (576), k (192), v (192), o (576), gate/up (1536), down (576 × 1536).
    let mut mats: Vec<(Vec<u8>, usize, usize)> = Vec::new();
    for l in 0..layers {
        for (i, &(r, c)) in [
            (d, d),
            (192, d),
            (192, d),
            (d, d),
            (ff, d),
            (ff, d),
            (d, ff),
        ]
        .iter()
        .enumerate()
        {
            mats.push((reference::quantize_q4_1(&make(r * c, l * 7 + i)), r, c));
        }
    }
    let bytes: usize = mats.iter().map(|m| m.0.len()).sum();
    println!("{} MiB of Q4_1 weights, {threads} threads", bytes >> 20);
    for &n in &[1usize, 512] {
        let x = make(n * ff, 99);
        let mut xq = vec![BlockQ8::default(); n * ff / 32];
        for (xr, qr) in x.chunks(ff).zip(xq.chunks_mut(ff / 32)) {
            quantize_row_q8(xr, qr);
        }
        let mut out = vec![0.0f32; n * ff];
        let reps = if n == 1 { 1500 / layers } else { 60 / layers };
        let t = Instant::now();
        for _ in 0..reps {
            for (w, r, c) in &mats {
                let m = QMatrix::new(kernels::quant::WType::Q4_1, *r, *c, w).unwrap();
                matmul(
                    &pool,
                    &mut [MatJob::new(m, &mut out[..n * r])],
                    &x[..n * c],
                    &xq[..n * c / 32],
                    n,
                );
            }
        }
        let per = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "n={n:4}: {:.2} ms per pass over all layers, {:.1} tokens/s, {:.1} GB/s of weights",
            per * 1e3,
            n as f64 / per,
            bytes as f64 / per / 1e9
        );
    }
}
