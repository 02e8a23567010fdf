//! Prefill products on SmolLM2-135M-shaped Q4_1 matrices: multiply-adds a second for the
//! FFN's gate and up (one call, two jobs, as a layer runs them) and its down product, at
//! several token counts (a development aid; the reported figures come from `llmem bench`).
//!
//! `cargo run --release -p kernels --example gemm_speed -- [threads] [reps]`

use std::time::Instant;

use kernels::matmul::{MatJob, QMatrix, matmul};
use kernels::pool::ThreadPool;
use kernels::quant::{BlockQ8, WType, quantize_row_q8, reference};

fn m(w: &[u8], r: usize, c: usize) -> QMatrix<'_> {
    QMatrix::new(WType::Q4_1, r, c, w).unwrap()
}

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (threads, reps) = (arg(1, 2), arg(2, 20));
    let pool = ThreadPool::new(threads).unwrap();
    let (d, ff) = (576usize, 1536usize);
    let make = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 2654435761 + seed) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    };
    let gate = reference::quantize_q4_1(&make(ff * d, 1));
    let up = reference::quantize_q4_1(&make(ff * d, 2));
    let down = reference::quantize_q4_1(&make(d * ff, 3));
    println!("{threads} threads, {reps} reps");
    for &n in &[16usize, 64, 128, 256, 512, 1024, 2048] {
        let x = make(n * ff, 99);
        let quant = |k: usize| {
            let mut q = vec![BlockQ8::default(); n * k / 32];
            for (xr, qr) in x[..n * k].chunks(k).zip(q.chunks_mut(k / 32)) {
                quantize_row_q8(xr, qr);
            }
            q
        };
        let (qd, qf) = (quant(d), quant(ff));
        let (mut g, mut u, mut o) = (vec![0.0f32; n * ff], vec![0.0f32; n * ff], vec![0.0; n * d]);
        let time = |f: &mut dyn FnMut()| {
            f();
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        };
        let t_up = time(&mut || {
            matmul(
                &pool,
                &mut [
                    MatJob::new(m(&gate, ff, d), &mut g),
                    MatJob::new(m(&up, ff, d), &mut u),
                ],
                &x[..n * d],
                &qd,
                n,
            )
        });
        let t_down = time(&mut || {
            matmul(
                &pool,
                &mut [MatJob::new(m(&down, d, ff), &mut o)],
                &x[..n * ff],
                &qf,
                n,
            )
        });
        let macs = (n * ff * d) as f64;
        println!(
            "n={n:5}: gate+up {:8.3} ms {:7.1} GMAC/s   down {:8.3} ms {:7.1} GMAC/s",
            t_up * 1e3,
            2.0 * macs / t_up / 1e9,
            t_down * 1e3,
            macs / t_down / 1e9
        );
    }
}
