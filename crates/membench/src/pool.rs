//! A persistent set of pinned worker threads with a synchronized start.
//!
//! Threads are created once per measurement run and reused for every point, so thread
//! creation and pinning stay out of the timings. Between jobs the workers sleep on a
//! condition variable (the machine may be shared; spinning idle workers would steal the
//! cores being measured). At the start of a job they meet at a spinning barrier, so all
//! begin within a few hundred nanoseconds of each other; a job's time runs from the
//! earliest start to the latest finish, as an OpenMP parallel region's would.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::BenchError;

/// Work run on every worker; the argument is the worker's index, `0..threads`.
pub(crate) type Job = Arc<dyn Fn(usize) + Send + Sync>;

/// Whether worker threads are bound to CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pinning {
    /// Each worker is bound to one CPU of the process's allowed set
    /// (`sched_setaffinity`, Linux).
    Pinned,
    /// The OS has no binding call this crate uses (macOS offers only affinity *tags*,
    /// hints the scheduler may ignore); workers float.
    Unsupported,
    /// Binding was attempted and refused (for example by a restrictive cgroup).
    Failed,
}

impl Pinning {
    /// Name for reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Pinning::Pinned => "pinned",
            Pinning::Unsupported => "not pinned (unsupported)",
            Pinning::Failed => "not pinned (refused)",
        }
    }
}

struct State {
    generation: u64,
    job: Option<Job>,
    remaining: usize,
    spans: Vec<Option<(Instant, Instant)>>,
    panicked: bool,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
    start: SpinBarrier,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker never panics while holding the lock (jobs run outside it), so a
        // poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A fixed set of worker threads.
///
/// # Invariants
/// `handles.len()` workers are alive until drop; at most one job runs at a time (`run`
/// takes `&self` but blocks until the job finished on every worker).
pub(crate) struct Pool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    pinning: Pinning,
}

impl Pool {
    /// Starts `threads` workers, worker `i` pinned to the `i`-th CPU the process may run
    /// on (wrapping around when there are more workers than CPUs).
    pub(crate) fn new(threads: usize) -> Result<Pool, BenchError> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                remaining: 0,
                spans: vec![None; threads],
                panicked: false,
                shutdown: false,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            start: SpinBarrier::new(threads),
        });
        let cpus = affinity::allowed_cpus();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut pool = Pool {
            shared: Arc::clone(&shared),
            handles: Vec::new(),
            pinning: Pinning::Pinned,
        };
        for index in 0..threads {
            let shared = Arc::clone(&shared);
            let cpu = cpus
                .as_ref()
                .and_then(|c| c.get(index % c.len().max(1)).copied());
            let tx = tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("membench-{index}"))
                .spawn(move || {
                    // The receiver lives until every worker reported; a send cannot fail.
                    let _ = tx.send(affinity::pin_current(cpu));
                    worker(&shared, index);
                })
                .map_err(|source| BenchError::Spawn {
                    index,
                    cause: source,
                })?;
            pool.handles.push(handle);
        }
        drop(tx);
        for pinning in rx.iter().take(threads) {
            if pinning != Pinning::Pinned {
                pool.pinning = pinning;
            }
        }
        Ok(pool)
    }

    pub(crate) fn threads(&self) -> usize {
        self.handles.len()
    }

    pub(crate) fn pinning(&self) -> Pinning {
        self.pinning
    }

    /// Runs `job` once on every worker and returns the time from the first worker's start
    /// to the last worker's finish.
    ///
    /// # Panics
    /// If the job panicked on a worker (the job is a bug then, and the panic is passed on).
    pub(crate) fn run(&self, job: Job) -> Duration {
        let mut state = self.shared.lock();
        state.job = Some(job);
        state.remaining = self.threads();
        state.spans.iter_mut().for_each(|s| *s = None);
        state.generation += 1;
        self.shared.wake.notify_all();
        while state.remaining > 0 {
            state = self
                .shared
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.job = None;
        assert!(!state.panicked, "a membench worker panicked");
        let spans = state.spans.iter().flatten();
        let first = spans.clone().map(|s| s.0).min();
        let last = spans.map(|s| s.1).max();
        match (first, last) {
            (Some(first), Some(last)) => last.duration_since(first),
            _ => Duration::ZERO,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        for handle in self.handles.drain(..) {
            // A worker that panicked already reported it through `run`.
            let _ = handle.join();
        }
    }
}

fn worker(shared: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        let job = {
            let mut state = shared.lock();
            while state.generation == seen && !state.shutdown {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.shutdown {
                return;
            }
            seen = state.generation;
            state.job.clone()
        };
        shared.start.wait();
        let start = Instant::now();
        let ok = match job {
            Some(job) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(index))).is_ok()
            }
            None => true,
        };
        let end = Instant::now();
        let mut state = shared.lock();
        state.spans[index] = Some((start, end));
        state.panicked |= !ok;
        state.remaining -= 1;
        if state.remaining == 0 {
            shared.done.notify_one();
        }
    }
}

/// A reusable barrier whose waiters spin: workers are already awake when they reach it,
/// so the wait is short, and spinning releases them together instead of one futex wake
/// at a time.
struct SpinBarrier {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(parties: usize) -> SpinBarrier {
        SpinBarrier {
            parties,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            spins = spins.wrapping_add(1);
            // On an oversubscribed machine the last worker may not be running at all;
            // yield now and then instead of burning its core.
            if spins.is_multiple_of(4096) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod affinity {
    use super::Pinning;

    /// The CPUs this process may run on, in order.
    pub(super) fn allowed_cpus() -> Option<Vec<usize>> {
        // SAFETY: `cpu_set_t` is plain data; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: pid 0 is the calling thread; `size` is the size of the set passed.
        let rc = unsafe { libc::sched_getaffinity(0, size, &mut set) };
        if rc != 0 {
            return None;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `cpu` is below CPU_SETSIZE, the set's capacity.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect();
        (!cpus.is_empty()).then_some(cpus)
    }

    /// Binds the calling thread to `cpu`.
    pub(super) fn pin_current(cpu: Option<usize>) -> Pinning {
        let Some(cpu) = cpu else {
            return Pinning::Failed;
        };
        // SAFETY: as above.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` came from `allowed_cpus`, so it is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: pid 0 is the calling thread; `size` is the size of the set passed.
        let rc = unsafe { libc::sched_setaffinity(0, size, &set) };
        if rc == 0 {
            Pinning::Pinned
        } else {
            Pinning::Failed
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod affinity {
    use super::Pinning;

    pub(super) fn allowed_cpus() -> Option<Vec<usize>> {
        None
    }

    pub(super) fn pin_current(_cpu: Option<usize>) -> Pinning {
        Pinning::Unsupported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_runs_every_job_once() {
        let pool = Pool::new(3).unwrap();
        let hits = Arc::new([
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        ]);
        for _ in 0..50 {
            let hits = Arc::clone(&hits);
            pool.run(Arc::new(move |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            }));
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50));
        assert_eq!(pool.threads(), 3);
        if cfg!(target_os = "linux") {
            assert_ne!(pool.pinning(), Pinning::Unsupported);
        }
    }

    #[test]
    #[should_panic(expected = "a membench worker panicked")]
    fn a_panicking_job_is_reported() {
        let pool = Pool::new(2).unwrap();
        pool.run(Arc::new(|i| assert_ne!(i, 1, "deliberate test panic")));
    }
}
