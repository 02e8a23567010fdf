//! Load latency by dependent pointer chasing.
//!
//! The working set is cut into cache lines; each line holds the address of the next line
//! of one random cycle through all of them (Sattolo's algorithm, so the cycle visits every
//! line before repeating and no line is its own successor). Every load depends on the one
//! before, so neither out-of-order execution nor the prefetchers can overlap them: time per
//! load is the latency of whichever level holds the set, plus a page walk when the TLB
//! cannot map it (the step that huge pages remove).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::bandwidth::Timing;
use crate::buffer::{Pages, Region};
use crate::error::BenchError;
use crate::pool::Pool;

/// A measured latency point.
#[derive(Debug, Clone)]
pub(crate) struct LatencySample {
    /// Nanoseconds per load, one value per repetition.
    pub(crate) ns: Vec<f64>,
    /// Bytes of the working set the kernel backed with huge pages (Linux only).
    pub(crate) huge_page_bytes: Option<u64>,
}

/// Measures `size` bytes with one pointer per `line_bytes`, on `pool`'s first worker.
pub(crate) fn measure(
    size: u64,
    line_bytes: u64,
    pages: Pages,
    pool: &Pool,
    timing: Timing,
) -> Result<LatencySample, BenchError> {
    let lines = size / line_bytes;
    if lines < 2 || lines > u64::from(u32::MAX) {
        return Err(BenchError::InvalidConfig {
            what: "latency working set must hold 2 to 2^32 cache lines",
            value: size,
        });
    }
    let bytes = usize::try_from(size).map_err(|_| BenchError::InvalidConfig {
        what: "size must fit in memory",
        value: size,
    })?;
    let region = Arc::new(Region::new(bytes, pages)?);
    let line = line_bytes as usize;
    let next = sattolo_cycle(lines as usize, 0x6d65_6d62_656e_6368 ^ size);

    // The chain is written by the worker that will chase it (first touch places the pages
    // near its core). Line i holds the address of line next[i].
    let writer = Arc::clone(&region);
    pool.run(Arc::new(move |worker| {
        if worker != 0 {
            return;
        }
        let base = writer.as_ptr();
        for (i, &to) in next.iter().enumerate() {
            // SAFETY: i and `to` are below `lines`, so both addresses are inside the
            // region; line starts are multiples of `line` (≥ 16) from a 128-B aligned base,
            // so the usize store is aligned. Only this worker touches the region now.
            unsafe {
                base.add(i * line)
                    .cast::<usize>()
                    .write(base.add(to as usize * line) as usize)
            };
        }
    }));
    let huge_page_bytes = region.huge_page_bytes();

    let start = region.as_ptr() as usize;
    let sink = Arc::new(AtomicUsize::new(0));
    let job = |steps: u64| {
        let (region, sink) = (Arc::clone(&region), Arc::clone(&sink));
        let job: crate::pool::Job = Arc::new(move |worker| {
            if worker == 0 {
                let _keep_alive = &region;
                // SAFETY: `start` is a line of the cycle written above, every line holds the
                // address of another line of the same region, and the region outlives the
                // job (the closure holds an `Arc`). Nothing writes it during the chase.
                let end = unsafe { chase(start, steps) };
                sink.store(end, Ordering::Relaxed);
            }
        });
        job
    };
    // A full lap warms the caches and TLB; then size the repetitions.
    pool.run(job(lines));
    let mut steps = lines.max(1 << 16);
    let steps = loop {
        let t = pool.run(job(steps));
        if t >= timing.min_rep || steps >= 1 << 40 {
            break steps.div_ceil(8) * 8;
        }
        let ratio = timing.min_rep.as_secs_f64() / t.as_secs_f64().max(1e-9);
        steps = ((steps as f64 * ratio * 1.1).ceil() as u64).clamp(steps * 2, steps * 64);
    };
    let ns = (0..timing.reps)
        .map(|_| pool.run(job(steps)).as_secs_f64() * 1e9 / steps as f64)
        .collect();
    Ok(LatencySample {
        ns,
        huge_page_bytes,
    })
}

/// Follows `steps` links from `start` (`steps` rounded up to a multiple of 8) and returns where it
/// ended, so the loads cannot be optimized away.
///
/// # Safety
/// `start` and every address reachable from it must point at a readable, aligned `usize`
/// that holds the next address of the chain.
unsafe fn chase(start: usize, steps: u64) -> usize {
    let mut p = start;
    for _ in 0..steps.div_ceil(8) {
        // Eight links per iteration keep loop overhead out of the dependent chain's timing.
        for _ in 0..8 {
            // SAFETY: guaranteed by the caller.
            p = unsafe { (p as *const usize).read() };
        }
    }
    std::hint::black_box(p)
}

/// A uniformly random single cycle over `0..n` (Sattolo's algorithm): `next[i]` is the
/// element after `i`.
pub(crate) fn sattolo_cycle(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64(seed);
    let mut next: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        // j uniform in 0..i (never i itself): that is what makes one cycle, not any
        // permutation. Lemire's multiply-shift; its bias is below 2^-32 for i < 2^32.
        let j = ((u128::from(rng.next()) * i as u128) >> 64) as usize;
        next.swap(i, j);
    }
    next
}

/// Steele, Lea & Flood's SplitMix64: tiny, fast, and good enough to defeat prefetchers.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_REP: std::time::Duration = std::time::Duration::from_micros(100);

    #[test]
    fn sattolo_makes_one_cycle_through_every_element() {
        for n in [2usize, 3, 10, 1000, 4097] {
            let next = sattolo_cycle(n, n as u64);
            let mut seen = vec![false; n];
            let mut at = 0usize;
            for _ in 0..n {
                assert!(!seen[at], "n={n}: revisited {at} early");
                seen[at] = true;
                at = next[at] as usize;
            }
            assert_eq!(at, 0, "n={n}: did not return to the start after n steps");
            assert!(next.iter().enumerate().all(|(i, &to)| i != to as usize));
        }
    }

    #[test]
    fn sattolo_successors_are_spread_out() {
        // Prefetchers follow short strides; a random cycle should rarely step to a
        // neighbouring line.
        let next = sattolo_cycle(1 << 16, 7);
        let near = next
            .iter()
            .enumerate()
            .filter(|(i, to)| i.abs_diff(**to as usize) <= 2)
            .count();
        assert!(near < 64, "{near} successors within two lines");
    }

    #[test]
    fn latency_points_are_positive_and_report_every_rep() {
        let pool = Pool::new(1).unwrap();
        let timing = Timing {
            reps: 3,
            min_rep: TEST_REP,
        };
        let sample = measure(64 << 10, 64, Pages::Base, &pool, timing).unwrap();
        assert_eq!(sample.ns.len(), 3);
        assert!(sample.ns.iter().all(|ns| ns.is_finite() && *ns > 0.0));
        if cfg!(target_os = "linux") {
            assert!(sample.huge_page_bytes.is_some());
        }
    }

    #[test]
    fn rejects_sets_smaller_than_two_lines() {
        let pool = Pool::new(1).unwrap();
        let timing = Timing {
            reps: 1,
            min_rep: TEST_REP,
        };
        let err = measure(64, 64, Pages::Base, &pool, timing).unwrap_err();
        assert!(matches!(err, BenchError::InvalidConfig { .. }));
    }
}
