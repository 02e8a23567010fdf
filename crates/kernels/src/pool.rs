//! A persistent thread pool: `run` hands one closure to every available thread and waits.
//!
//! Decode issues a few hundred parallel operations per token, each lasting tens of
//! microseconds, so waking threads through the OS every time would cost more than the
//! work. Workers therefore spin briefly (about 50 µs) for the next job, then yield, then
//! sleep on a condition variable: a lone machine gets spin-speed hand-offs, and a shared
//! core is given back instead of burned.
//!
//! A worker that has not picked a job up by the time the calling thread has finished its
//! own share does not take part at all: the caller closes the job and waits only for the
//! workers that joined. Jobs hand out work from shared counters, so the caller then simply
//! did more of it. This keeps a descheduled worker (another process on its core) from
//! stalling every operation until the scheduler runs it again.
//!
//! # Invariants
//! - `state` packs the job's epoch (high 32 bits), a closed flag and the number of
//!   workers that joined it. A worker joins only by a compare-and-swap on an open state,
//!   so the count `run` reads when it closes the job is exact.
//! - `run` returns only when `done` equals that count: the job closure (borrowed from
//!   `run`'s caller) is never used after `run` returns.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = dyn Fn(usize) + Sync;

/// Stack of each worker thread (the caller, thread 0, keeps its own).
///
/// Set rather than inherited so that the memory plan can count it: a thread never has more
/// of its stack resident than this, and Rust's default (2 MiB, or `RUST_MIN_STACK`) would
/// be a bound 25 times too loose. The deepest worker path measured is attention's item
/// loop: 80 KiB resident on every worker (its two 32 KiB K/V tiles, zero-filled, plus
/// the frames below them; x86-64, AVX-512 and AVX2 builds); a panic there, printing a
/// symbolized backtrace, runs within 32 KiB more. 256 KiB leaves more than half of it
/// spare for kernels to grow. A kernel that outgrows it aborts with "has overflowed its
/// stack" in the tests, which run every kernel on pool workers.
pub const WORKER_STACK_BYTES: usize = 256 * 1024;
/// How long an idle thread spins before it yields and then sleeps.
const SPIN: Duration = Duration::from_micros(50);
/// How long it yields before sleeping.
const YIELD: Duration = Duration::from_micros(500);
const CLOSED: u64 = 1 << 31;
const JOINED_MASK: u64 = CLOSED - 1;

struct Shared {
    /// Epoch << 32 | CLOSED | joined workers.
    state: AtomicU64,
    /// Workers that finished the current job.
    done: AtomicU64,
    /// The current job: a pointer to `run`'s reference to its closure (erased to
    /// `'static`), valid while the job is not finished. An atomic, not a lock: every
    /// worker reads it at every job, and a contended lock sends threads to the OS.
    job: AtomicPtr<&'static Job>,
    sleepers: AtomicU64,
    main_waiting: AtomicBool,
    shutdown: AtomicBool,
    panicked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    done_cv: Condvar,
}

/// A fixed set of worker threads; the calling thread takes part as thread 0.
pub struct ThreadPool {
    n_threads: usize,
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl ThreadPool {
    /// Starts `n_threads - 1` workers (at least one thread in all).
    pub fn new(n_threads: usize) -> std::io::Result<Self> {
        let n_threads = n_threads.clamp(1, 1024);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(CLOSED),
            done: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            sleepers: AtomicU64::new(0),
            main_waiting: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            done_cv: Condvar::new(),
        });
        let mut handles = Vec::with_capacity(n_threads - 1);
        for idx in 1..n_threads {
            let s = Arc::clone(&shared);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("llmem-worker-{idx}"))
                    .stack_size(WORKER_STACK_BYTES)
                    .spawn(move || worker(&s, idx))?,
            );
        }
        Ok(ThreadPool {
            n_threads,
            shared,
            handles,
        })
    }

    /// Most threads taking part in each `run`, the caller included.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Calls `f(i)` at most once for each thread index `i` in `0..n_threads` — always for
    /// `i = 0` (the caller), and for each worker that picks the job up before the caller
    /// finishes its own call — and returns when all calls have finished. Jobs must
    /// therefore share out their work dynamically (e.g. from an atomic counter).
    ///
    /// # Panics
    /// If any call panics (the panic is re-raised here after all calls finished).
    pub fn run<F: Fn(usize) + Sync>(&self, f: F) {
        if self.n_threads == 1 {
            f(0);
            return;
        }
        let s = &*self.shared;
        let job: &(dyn Fn(usize) + Sync + '_) = &f;
        // SAFETY: the 'static lifetime is a lie the invariants make harmless: workers use
        // the job only after joining it and before counting themselves done, and this
        // function does not return before every joined worker is done.
        // SAFETY: (see above) no use of `job` outlives this call.
        let mut job: &'static Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(job) };
        s.job.store(&mut job, SeqCst);
        s.done.store(0, SeqCst);
        let epoch = (s.state.load(SeqCst) >> 32) + 1;
        s.state.store(epoch << 32, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        let joined = s.state.fetch_or(CLOSED, SeqCst) & JOINED_MASK;
        if joined > 0 {
            wait_for(s, || s.done.load(SeqCst) >= joined);
        }
        s.job.store(std::ptr::null_mut(), SeqCst);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, SeqCst) {
            panic!("a thread-pool worker panicked");
        }
    }
}

/// Spin, then yield, then tell the caller to sleep: the waiting policy of both sides.
struct Backoff {
    start: Instant,
    i: u32,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            start: Instant::now(),
            i: 0,
        }
    }

    /// One round of waiting; `false` once spinning and yielding are used up and the
    /// caller should sleep.
    fn snooze(&mut self) -> bool {
        self.i = self.i.wrapping_add(1);
        if !self.i.is_multiple_of(64) {
            std::hint::spin_loop();
            return true;
        }
        let waited = self.start.elapsed();
        if waited < SPIN {
            return true;
        }
        if waited < SPIN + YIELD {
            std::thread::yield_now();
            return true;
        }
        false
    }
}

/// The caller waits for joined workers: spin, yield, then sleep on `done_cv`.
fn wait_for(s: &Shared, ready: impl Fn() -> bool) {
    let mut backoff = Backoff::new();
    while !ready() {
        if backoff.snooze() {
            continue;
        }
        let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.main_waiting.store(true, SeqCst);
        while !ready() {
            g = s.done_cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        s.main_waiting.store(false, SeqCst);
        return;
    }
}

/// Waits until the state's epoch differs from `seen` (or shutdown); returns the state.
fn next_state(s: &Shared, seen: u64) -> u64 {
    let mut backoff = Backoff::new();
    loop {
        let st = s.state.load(SeqCst);
        if st >> 32 != seen || s.shutdown.load(SeqCst) {
            return st;
        }
        if backoff.snooze() {
            continue;
        }
        let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.sleepers.fetch_add(1, SeqCst);
        while s.state.load(SeqCst) >> 32 == seen && !s.shutdown.load(SeqCst) {
            g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        s.sleepers.fetch_sub(1, SeqCst);
    }
}

fn worker(s: &Shared, idx: usize) {
    let mut seen = 0u64;
    loop {
        let st = next_state(s, seen);
        if s.shutdown.load(SeqCst) {
            return;
        }
        if st & CLOSED != 0 {
            seen = st >> 32; // missed this job; the caller did our share
            continue;
        }
        if s.state
            .compare_exchange(st, st + 1, SeqCst, SeqCst)
            .is_err()
        {
            continue; // closed or joined by another meanwhile: look again
        }
        seen = st >> 32;
        let slot = s.job.load(SeqCst);
        // SAFETY: this worker joined an open job, so `run` stored the slot before opening
        // it and keeps it (and the closure it names) alive until this worker is counted
        // done; a stale null is impossible for the same reason.
        let job: &Job = unsafe { *slot };
        if catch_unwind(AssertUnwindSafe(|| job(idx))).is_err() {
            s.panicked.store(true, SeqCst);
        }
        s.done.fetch_add(1, SeqCst);
        if s.main_waiting.load(SeqCst) {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.done_cv.notify_all();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_thread_runs_each_job_once() {
        let pool = ThreadPool::new(3).unwrap();
        for round in 0..2000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            let work = AtomicUsize::new(0);
            pool.run(|i| {
                hits[i].fetch_add(1, SeqCst);
                // Shared work, claimed dynamically, as every real job does.
                while work.fetch_add(1, SeqCst) < 1000 {}
            });
            assert_eq!(
                hits[0].load(SeqCst),
                1,
                "round {round}: the caller always runs"
            );
            for h in &hits {
                assert!(h.load(SeqCst) <= 1, "round {round}: a thread ran twice");
            }
            assert!(work.load(SeqCst) >= 1000, "round {round}: work left undone");
            if round % 500 == 0 {
                // Let the workers fall asleep, to exercise the wake-up path.
                std::thread::sleep(Duration::from_millis(3));
            }
        }
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(|i| assert!(i != 0, "boom"))));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(|_| {
            n.fetch_add(1, SeqCst);
        });
        assert!(n.load(SeqCst) >= 1);
    }
}
