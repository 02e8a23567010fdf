//! Throughput of the k-quant and 5-bit products on Qwen2.5-1.5B-shaped matrices, beside
//! the machine's plain read bandwidth (a development aid).
//!
//! `cargo run --release -p kernels --example kquant_speed -- [threads] [seconds per case]
//! [types, comma-separated, e.g. Q4_K,Q6_K] [skip-bandwidth]`
//!
//! The third argument may instead list cases of its own, space-separated
//! `TYPE:ROWSxCOLS:TOKENS,TOKENS…` (e.g. `"Q5_0:9728x896:24,512 Q6_K:896x4864:512"`).

use std::time::{Duration, Instant};

use kernels::matmul::{MatJob, QMatrix, matmul};
use kernels::pool::ThreadPool;
use kernels::quant::{BlockQ8, QK, WType, quantize_row_for, reference};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A `rows × cols` matrix of `t`: 64 distinct quantized rows repeated (quantizing a
/// 150k-row head row by row would take longer than the measurement).
fn matrix(t: WType, rows: usize, cols: usize) -> Vec<u8> {
    let x = values(64 * cols, rows as u64);
    let block = match t {
        WType::Q4_K => reference::quantize_q4_k(&x),
        WType::Q5_K => reference::quantize_q5_k(&x),
        WType::Q6_K => reference::quantize_q6_k(&x),
        WType::Q3_K => reference::quantize_q3_k(&x),
        WType::Q5_0 => reference::quantize_q5_0(&x),
        WType::Q4_0 => reference::quantize_q4_0(&x),
        WType::Q8_0 => reference::quantize_q8_0(&x),
        _ => unimplemented!("{t:?}"),
    };
    let rb = block.len() / 64;
    let mut out = Vec::with_capacity(rows * rb);
    while out.len() < rows * rb {
        let n = (rows * rb - out.len()).min(block.len());
        out.extend_from_slice(&block[..n]);
    }
    out
}

/// CPU time of every thread of this process so far, in seconds (Linux; 0 elsewhere). On a
/// machine shared with other work the wall time of a long run includes other tasks'
/// slices; the CPU time per run does not.
fn cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}

/// Plain read bandwidth over a buffer far larger than the caches, on the pool.
fn read_bandwidth(pool: &ThreadPool, budget: Duration) -> f64 {
    let buf: Vec<u64> = (0..(256usize << 20) / 8).map(|i| i as u64).collect();
    let n = pool.n_threads();
    let part = buf.len() / n;
    let mut best = 0.0f64;
    let start = Instant::now();
    while start.elapsed() < budget {
        let t = Instant::now();
        let sums: Vec<std::sync::atomic::AtomicU64> = (0..n)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect();
        pool.run(|i| {
            let s = buf[i * part..(i + 1) * part]
                .chunks_exact(8)
                .fold([0u64; 8], |mut a, c| {
                    for k in 0..8 {
                        a[k] = a[k].wrapping_add(c[k]);
                    }
                    a
                });
            sums[i].store(s.iter().sum(), std::sync::atomic::Ordering::Relaxed);
        });
        std::hint::black_box(&sums);
        best = best.max((part * n * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// The kinds [`matrix`] builds.
const KINDS: [WType; 7] = [
    WType::Q4_K,
    WType::Q5_K,
    WType::Q6_K,
    WType::Q3_K,
    WType::Q5_0,
    WType::Q4_0,
    WType::Q8_0,
];

/// Cases `TYPE:ROWSxCOLS:TOKENS,TOKENS…`, space-separated.
fn parse_cases(list: &str) -> Vec<(WType, usize, usize, usize)> {
    let mut cases = Vec::new();
    for case in list.split_whitespace() {
        let bad = || panic!("a case is TYPE:ROWSxCOLS:TOKENS,…, not {case:?}");
        let mut parts = case.split(':');
        let (Some(t), Some(shape), Some(tokens)) = (parts.next(), parts.next(), parts.next())
        else {
            bad()
        };
        // The kinds `matrix` can build, by the names the type filter uses.
        let Some(t) = KINDS.into_iter().find(|k| format!("{k:?}") == t) else {
            bad()
        };
        let Some((rows, cols)) = shape.split_once('x') else {
            bad()
        };
        let (Ok(rows), Ok(cols)) = (rows.parse(), cols.parse()) else {
            bad()
        };
        for n in tokens.split(',') {
            let Ok(n) = n.parse() else { bad() };
            cases.push((t, rows, cols, n));
        }
    }
    cases
}

fn main() {
    let mut args = std::env::args().skip(1);
    let threads = args.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let only: Option<String> = args.next();
    let skip_bandwidth = args.next().is_some();
    let budget = Duration::from_secs_f64(secs);
    let pool = ThreadPool::new(threads).unwrap();
    println!("{threads} threads; best of repeated runs within {secs} s per case");
    if !skip_bandwidth {
        println!(
            "plain read bandwidth: {:.1} GB/s",
            read_bandwidth(&pool, budget)
        );
    }
    // (type, rows, cols, tokens): Qwen2.5-1.5B's FFN gate/up (8960 × 1536), down
    // (1536 × 8960) and output head (151936 × 1536).
    let default_cases = [
        (WType::Q4_K, 8960, 1536, 1),
        (WType::Q4_K, 1536, 8960, 1),
        (WType::Q4_K, 8960, 1536, 64),
        (WType::Q4_K, 1536, 8960, 64),
        (WType::Q6_K, 151_936, 1536, 1),
        (WType::Q6_K, 1536, 8960, 1),
        (WType::Q6_K, 1536, 8960, 64),
        (WType::Q5_K, 8960, 1536, 1),
        (WType::Q3_K, 8960, 1536, 1),
        (WType::Q3_K, 8960, 1536, 64),
        (WType::Q5_0, 8960, 1536, 1),
        (WType::Q5_0, 8960, 1536, 64),
        (WType::Q4_0, 8960, 1536, 1),
        (WType::Q4_0, 8960, 1536, 64),
        (WType::Q8_0, 8960, 1536, 1),
        (WType::Q8_0, 8960, 1536, 64),
        // Gemma 3 270M's FFN (2048 × 640, 640 × 2048), whose Q5_0/Q8_0 tensors sit
        // beside the k-quants.
        (WType::Q5_0, 2048, 640, 1),
        (WType::Q5_0, 2048, 640, 64),
        (WType::Q8_0, 640, 2048, 1),
        (WType::Q8_0, 640, 2048, 64),
        (WType::Q4_0, 151_936, 1536, 1),
        (WType::Q5_0, 151_936, 1536, 1),
    ];
    let own = only.as_deref().filter(|o| o.contains(':')).map(parse_cases);
    let filter = if own.is_some() { None } else { only };
    for (t, rows, cols, n) in own.unwrap_or_else(|| default_cases.to_vec()) {
        let name = format!("{t:?}");
        if filter
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|s| s == name))
        {
            continue;
        }
        let w = matrix(t, rows, cols);
        let m = QMatrix::new(t, rows, cols, &w).unwrap();
        let x = values(n * cols, 7);
        let mut xq = vec![BlockQ8::default(); n * cols / QK];
        for (xr, qr) in x.chunks(cols).zip(xq.chunks_mut(cols / QK)) {
            quantize_row_for(t, xr, qr);
        }
        let mut out = vec![0.0f32; n * rows];
        let mut best = f64::INFINITY;
        let start = Instant::now();
        let cpu0 = cpu_seconds();
        let mut reps = 0;
        while reps < 3 || start.elapsed() < budget {
            let t0 = Instant::now();
            matmul(&pool, &mut [MatJob::new(m, &mut out)], &x, &xq, n);
            best = best.min(t0.elapsed().as_secs_f64());
            reps += 1;
        }
        let cpu = (cpu_seconds() - cpu0) / reps as f64;
        let flops = 2.0 * (rows * cols * n) as f64;
        println!(
            "{name:>5} {rows:>6} x {cols:>5}, {n:>2} tok: {:8.3} ms  {:6.1} GB/s of weights  \
             {:6.1} GFLOP/s | {:8.3} CPU-ms per run, {:6.1} GFLOP per CPU-s",
            best * 1e3,
            w.len() as f64 / best / 1e9,
            flops / best / 1e9,
            cpu * 1e3,
            flops / cpu / 1e9
        );
    }
}
