//! The pressure ladder, wired once: the probe's readings → the ledger's reclaim hooks →
//! the KV cache's owner (the scheduler demotes, writes to disk or preempts).
//!
//! Pressure is the larger of the OS's signal (PSI, MemAvailable, the cgroup's limit,
//! macOS's level — probe's [`probe::Pressure`]) and the ledger's own fill. At warning
//! (≥ 0.85) and above, the `kv` pool is asked for a share of what it holds that grows
//! with the pressure: a quarter at the warning threshold, all of it at 1.0. What it
//! gives back is the scheduler's business (see `engine::sched::Scheduler::ease`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use budget::{Budget, Bytes, PoolId};
use probe::{MemoryProbe, PRESSURE_WARNING};

/// Bytes to ask the `kv` pool for when it holds `kv_used` at `pressure` (0 below
/// warning).
pub fn kv_want(pressure: f64, kv_used: u64) -> u64 {
    if pressure.is_nan() || pressure < PRESSURE_WARNING {
        return 0;
    }
    let over = ((pressure - PRESSURE_WARNING) / (1.0 - PRESSURE_WARNING)).clamp(0.0, 1.0);
    let share = 0.25 + 0.75 * over;
    (kv_used as f64 * share) as u64
}

/// The ledger's own pressure: its fill.
fn ledger_fill(budget: &Budget) -> f64 {
    let s = budget.snapshot();
    if s.total.0 == 0 {
        return 0.0;
    }
    s.used.0 as f64 / s.total.0 as f64
}

/// One reading: asks `kv` for bytes if pressure calls for it; returns what was asked.
pub fn tick(probe: &dyn MemoryProbe, budget: &Budget, kv: PoolId) -> u64 {
    let os = probe.pressure().map_or(0.0, |p| p.value);
    let pressure = os.max(ledger_fill(budget));
    let want = kv_want(pressure, budget.used(kv).0);
    if want > 0 {
        budget.reclaim(kv, Bytes(want));
    }
    want
}

/// A thread reading the probe every `every` and passing pressure to the ledger. Stops
/// when dropped.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    pub fn start(
        probe: Box<dyn MemoryProbe + Send>,
        budget: Budget,
        kv: PoolId,
        every: Duration,
    ) -> std::io::Result<Watcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("llmem-pressure".into())
            .stack_size(256 << 10)
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    tick(probe.as_ref(), &budget, kv);
                    std::thread::park_timeout(every);
                }
            })?;
        Ok(Watcher {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use budget::{BudgetBuilder, Policy, ReclaimRequest};
    use probe::FakeProbe;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn pressure_asks_the_kv_pool_for_a_growing_share() {
        assert_eq!(kv_want(0.5, 1000), 0);
        assert_eq!(kv_want(f64::NAN, 1000), 0);
        assert_eq!(kv_want(0.85, 1000), 250);
        assert_eq!(kv_want(1.0, 1000), 1000);
        assert!(kv_want(0.9, 1000) > 250 && kv_want(0.9, 1000) < 1000);
    }

    #[test]
    fn os_pressure_reaches_the_kv_pools_hook() {
        let b = BudgetBuilder::new(Bytes(1 << 30))
            .pool("kv", Policy::Tiered, Bytes(1 << 29))
            .build()
            .unwrap();
        let kv = b.pool_id("kv").unwrap();
        let _held = b.try_reserve(kv, Bytes(1 << 20)).unwrap();
        let asked = Arc::new(AtomicU64::new(0));
        let seen = asked.clone();
        let hook = Arc::new(move |r: ReclaimRequest| {
            seen.fetch_add(r.want.0, Ordering::AcqRel);
            Bytes(0)
        });
        b.set_reclaim(kv, &hook);
        let probe = FakeProbe::new();
        // Calm: nothing asked.
        probe.set_pressure(Some(0.3));
        assert_eq!(tick(&probe, &b, kv), 0);
        assert_eq!(asked.load(Ordering::Acquire), 0);
        // Critical: the hook is asked for most of what the pool holds.
        probe.set_pressure(Some(0.97));
        let want = tick(&probe, &b, kv);
        assert!(want > (1 << 20) / 2, "{want}");
        assert_eq!(asked.load(Ordering::Acquire), want);
    }
}
