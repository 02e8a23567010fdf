//! Bandwidth points: one working set, every streaming op, one thread and all threads.
//!
//! Working-set layout for an op over `k` arrays (k = 1 read/write, 2 copy, 3 triad):
//!
//! ```text
//!  region (allocated once per size, page-touched by all workers before any timing)
//!  ├── array 0: len f64 ──┤ skew ├── array 1: len f64 ──┤ skew ├── array 2 ...
//!  │← 128-B aligned       │ 384 B│← 128-B aligned
//!  len = ⌊size / k / 128 B⌋ · 16 elements, so k arrays fill the nominal size
//! ```
//!
//! The skew keeps the arrays from starting at the same offset modulo 4 KiB (a power-of-two
//! distance makes loads and stores of the same index alias in the store buffer and in the
//! same L1 sets). Each worker owns the same 128-byte-aligned slice of every array.

use std::sync::Arc;
use std::time::Duration;

use crate::buffer::{ARRAY_ALIGN_BYTES, Pages, Region};
use crate::error::BenchError;
use crate::kernels::{Kernels, Stores};
use crate::pool::{Job, Pool};
use crate::{Op, StorePolicy};

/// Elements per alignment block (128 B of `f64`).
const BLOCK: usize = ARRAY_ALIGN_BYTES / 8;
/// Distance between consecutive arrays, beyond their length.
const SKEW_BYTES: usize = 3 * ARRAY_ALIGN_BYTES;
/// Values written at page-touch time; any normal number works (no denormals arise).
const FILL: f64 = 1.0;
/// STREAM's triad scalar.
const TRIAD_Q: f64 = 3.0;

/// How long and how often to time each point.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) reps: usize,
    pub(crate) min_rep: Duration,
}

/// One measured point with one store kind.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) stores: Stores,
    pub(crate) gb_s: Vec<f64>,
}

/// One (op, threads) point of a working set, calibrated, collecting its repetitions.
pub(crate) struct Point<'p> {
    pub(crate) op: Op,
    pub(crate) pool: &'p Pool,
    kernels: Kernels,
    iters: Vec<u64>,
    pub(crate) samples: Vec<Sample>,
}

/// A working set ready to be measured.
pub(crate) struct WorkingSet {
    region: Arc<Region>,
    size: u64,
    huge_page_bytes: Option<u64>,
}

impl WorkingSet {
    /// Allocates `size` bytes (plus skew) on `pages` and page-touches them with `pool`'s
    /// workers, each touching the part it will later use (first touch places pages near
    /// that core).
    pub(crate) fn new(size: u64, pool: &Pool, pages: Pages) -> Result<WorkingSet, BenchError> {
        let bytes = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_add(4 * SKEW_BYTES))
            .ok_or(BenchError::InvalidConfig {
                what: "size must fit in memory",
                value: size,
            })?;
        let region = Arc::new(Region::new(bytes, pages)?);
        let mut set = WorkingSet {
            region,
            size,
            huge_page_bytes: None,
        };
        let elements = set.region.len() / 8 / BLOCK * BLOCK;
        let (region, threads) = (Arc::clone(&set.region), pool.threads());
        pool.run(Arc::new(move |worker| {
            let (start, end) = chunk(worker, threads, elements);
            // SAFETY: the region holds `elements` f64 (128-B aligned), workers get disjoint
            // chunks, and nothing else touches the region during the job.
            let all = unsafe { array(&region, 0, elements) };
            all[start..end].fill(FILL);
        }));
        set.huge_page_bytes = set.region.huge_page_bytes().map(|h| h.min(size));
        Ok(set)
    }

    /// Bytes of the working set backed by huge pages once touched (Linux; `None`
    /// elsewhere).
    pub(crate) fn huge_page_bytes(&self) -> Option<u64> {
        self.huge_page_bytes
    }

    /// Elements in each of the op's arrays.
    fn array_len(&self, op: Op) -> usize {
        let per_array = self.size / op.arrays() as u64;
        usize::try_from(per_array).unwrap_or(usize::MAX) / 8 / BLOCK * BLOCK
    }

    /// Bytes one pass of `op` moves, counted as STREAM counts them.
    pub(crate) fn bytes_per_pass(&self, op: Op) -> u64 {
        (self.array_len(op) * op.arrays() * 8) as u64
    }

    /// Times `op` on `pool` with each store kind `policy` allows, after a calibration that
    /// doubles as warm-up: [`WorkingSet::prepare`], then `timing.reps` of
    /// [`WorkingSet::repeat`].
    #[cfg(test)]
    pub(crate) fn measure(
        &self,
        op: Op,
        pool: &Pool,
        kernels: Kernels,
        policy: StorePolicy,
        timing: Timing,
    ) -> Vec<Sample> {
        let mut point = self.prepare(op, pool, kernels, policy, timing);
        for _ in 0..timing.reps {
            self.repeat(&mut point);
        }
        point.samples
    }

    /// Calibrates `op` on `pool` (pass counts so each repetition lasts `timing.min_rep`;
    /// the runs warm caches and TLB) for each store kind `policy` allows.
    pub(crate) fn prepare<'p>(
        &self,
        op: Op,
        pool: &'p Pool,
        kernels: Kernels,
        policy: StorePolicy,
        timing: Timing,
    ) -> Point<'p> {
        let nt = kernels.isa().has_nontemporal_stores() && op.writes();
        let stores: &[Stores] = match policy {
            StorePolicy::Best if nt => &[Stores::Temporal, Stores::NonTemporal],
            StorePolicy::NonTemporal if nt => &[Stores::NonTemporal],
            _ => &[Stores::Temporal],
        };
        let threads = pool.threads();
        let iters = stores
            .iter()
            .map(|&st| {
                calibrate(
                    pool,
                    &|n| self.job(op, threads, kernels, st, n),
                    timing.min_rep,
                )
            })
            .collect();
        Point {
            op,
            pool,
            kernels,
            iters,
            samples: stores
                .iter()
                .map(|&stores| Sample {
                    stores,
                    gb_s: Vec::new(),
                })
                .collect(),
        }
    }

    /// One timed repetition of `point`, each store kind in turn (alternating, so a burst
    /// of interference from elsewhere on the machine hits both alike instead of deciding
    /// which one "wins").
    pub(crate) fn repeat(&self, point: &mut Point<'_>) {
        let bytes = self.bytes_per_pass(point.op) as f64;
        let threads = point.pool.threads();
        for (sample, &n) in point.samples.iter_mut().zip(&point.iters) {
            let job = self.job(point.op, threads, point.kernels, sample.stores, n);
            let t = point.pool.run(job);
            sample
                .gb_s
                .push(bytes * n as f64 / t.as_secs_f64().max(1e-9) / 1e9);
        }
    }

    fn job(&self, op: Op, threads: usize, kernels: Kernels, stores: Stores, iters: u64) -> Job {
        let region = Arc::clone(&self.region);
        let len = self.array_len(op);
        let stride = len * 8 + SKEW_BYTES;
        Arc::new(move |worker| {
            let (s, e) = chunk(worker, threads, len);
            // The op's arrays lie at `j · stride` inside the region (it has room for 4 skews
            // beyond the nominal size), 128-B aligned and disjoint from each other.
            // SAFETY: in bounds as above; each worker takes its own chunk [s, e) of each
            // array, and the coordinator does not touch the region while the job runs.
            let arr = |j: usize| unsafe { &mut array(&region, j * stride, len)[s..e] };
            match op {
                Op::Read => {
                    let a = arr(0);
                    for _ in 0..iters {
                        std::hint::black_box(kernels.read(std::hint::black_box(&*a)));
                    }
                }
                Op::Write => {
                    let a = arr(0);
                    for _ in 0..iters {
                        kernels.write(std::hint::black_box(&mut *a), FILL, stores);
                    }
                }
                Op::Copy => {
                    let (src, dst) = (arr(0), arr(1));
                    for _ in 0..iters {
                        kernels.copy(std::hint::black_box(&mut *dst), src, stores);
                    }
                }
                Op::Triad => {
                    let (a, b, c) = (arr(0), arr(1), arr(2));
                    for _ in 0..iters {
                        kernels.triad(std::hint::black_box(&mut *a), b, c, TRIAD_Q, stores);
                    }
                }
                Op::Latency | Op::LatencyHuge => {}
            }
        })
    }
}

/// Picks a pass count so one repetition lasts at least `min_rep`; the runs it makes warm
/// caches, TLB and branch predictors for the timed ones.
fn calibrate(pool: &Pool, job: &dyn Fn(u64) -> Job, min_rep: Duration) -> u64 {
    let mut iters: u64 = 1;
    loop {
        let t = pool.run(job(iters));
        if t >= min_rep || iters >= 1 << 40 {
            return iters;
        }
        let ratio = min_rep.as_secs_f64() / t.as_secs_f64().max(1e-9);
        // Aim 10% over the target; at most ×64 per step so one noisy short run cannot
        // make a repetition last far too long.
        iters = ((iters as f64 * ratio * 1.1).ceil() as u64).clamp(iters * 2, iters * 64);
    }
}

/// Worker `worker`'s part `[start, end)` of `len` elements, in whole 128-byte blocks.
pub(crate) fn chunk(worker: usize, threads: usize, len: usize) -> (usize, usize) {
    let blocks = len / BLOCK;
    let at = |w: usize| blocks * w / threads * BLOCK;
    let end = if worker + 1 == threads {
        len
    } else {
        at(worker + 1)
    };
    (at(worker).min(end), end)
}

/// `len` f64 at byte `offset` of `region`.
///
/// # Safety
/// `offset + len · 8 <= region.len()`, `offset` a multiple of 8, and for as long as the
/// slice lives no other live reference may overlap the elements the caller uses.
#[allow(clippy::mut_from_ref)]
unsafe fn array(region: &Region, offset: usize, len: usize) -> &mut [f64] {
    debug_assert!(offset + len * 8 <= region.len() && offset.is_multiple_of(8));
    // SAFETY: in bounds and aligned by the caller's contract; the region is zero-filled or
    // written memory, so every element is an initialized f64.
    unsafe { std::slice::from_raw_parts_mut(region.as_ptr().add(offset).cast::<f64>(), len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_tile_the_array_in_aligned_blocks() {
        for threads in 1..6 {
            for len in [0, 16, 160, 4096, 4096 + 16] {
                let mut next = 0;
                for w in 0..threads {
                    let (s, e) = chunk(w, threads, len);
                    assert_eq!(s, next, "gap at worker {w}");
                    assert_eq!(s % BLOCK, 0);
                    next = e;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn kernels_leave_the_stream_results_in_the_arrays() {
        let pool = Pool::new(2).unwrap();
        let set = WorkingSet::new(64 << 10, &pool, Pages::Base).unwrap();
        let kernels = Kernels::detect();
        for op in [Op::Write, Op::Copy, Op::Triad] {
            pool.run(set.job(op, 2, kernels, Stores::NonTemporal, 2));
        }
        let len = set.array_len(Op::Triad);
        let stride = len * 8 + SKEW_BYTES;
        // SAFETY: no job is running; offsets are inside the region.
        let a = unsafe { array(&set.region, 0, len) };
        // SAFETY: as above.
        let c = unsafe { array(&set.region, 2 * stride, len) };
        // Triad wrote a = b + 3c where b and c still hold the fill value 1.0.
        assert!(a.iter().all(|x| *x == FILL + TRIAD_Q * FILL));
        assert!(c.iter().all(|x| *x == FILL));
        assert_eq!(set.bytes_per_pass(Op::Triad), (3 * len * 8) as u64);
        assert!(set.bytes_per_pass(Op::Copy) <= 64 << 10);
        assert!(set.bytes_per_pass(Op::Copy) > (64 << 10) - 2 * ARRAY_ALIGN_BYTES as u64);
    }

    #[test]
    fn measurement_gives_one_sample_per_store_kind_with_reps_values() {
        let pool = Pool::new(1).unwrap();
        let set = WorkingSet::new(16 << 10, &pool, Pages::Huge).unwrap();
        let kernels = Kernels::detect();
        let timing = Timing {
            reps: 3,
            min_rep: Duration::from_micros(200),
        };
        let samples = set.measure(Op::Copy, &pool, kernels, StorePolicy::Best, timing);
        let expected = if kernels.isa().has_nontemporal_stores() {
            2
        } else {
            1
        };
        assert_eq!(samples.len(), expected);
        assert!(
            samples
                .iter()
                .all(|s| s.gb_s.len() == 3 && s.gb_s.iter().all(|g| *g > 0.0))
        );
        let read = set.measure(Op::Read, &pool, kernels, StorePolicy::Best, timing);
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].stores, Stores::Temporal);
    }
}
