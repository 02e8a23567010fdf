//! Several threads reserving, growing, shrinking, releasing and recalling at random against
//! one budget, while another checks the invariants; nothing may exceed a limit or be lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use budget::{Budget, BudgetBuilder, Bytes, Policy, PoolId, Reclaim, ReclaimRequest, Reservation};

const THREADS: usize = 4;
const STEPS: usize = 20_000;
const TOTAL: u64 = 1 << 20;

/// A small deterministic generator (xorshift64*), one per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An index below `n`.
    fn pick(&mut self, n: usize) -> usize {
        let n = u64::try_from(n).expect("usize fits u64");
        usize::try_from(self.below(n)).expect("below a usize")
    }
}

/// Reservations any thread may hand over, freed by the pool's hook on request.
struct Parked {
    reservations: Mutex<Vec<Reservation>>,
    asked: AtomicU64,
}

impl Reclaim for Parked {
    fn reclaim(&self, request: ReclaimRequest) -> Bytes {
        self.asked.fetch_add(1, Ordering::Relaxed);
        let mut freed = Vec::new();
        let mut sum = Bytes::ZERO;
        {
            let mut parked = self.reservations.lock().expect("parked");
            while sum < request.want {
                let Some(r) = parked.pop() else { break };
                sum = sum.saturating_add(r.size());
                freed.push(r);
            }
        }
        drop(freed);
        sum
    }
}

fn layout() -> Budget {
    BudgetBuilder::new(Bytes(TOTAL))
        .pool("weights", Policy::Persistent, Bytes(TOTAL / 4))
        .pool("kv", Policy::Tiered, Bytes(TOTAL / 4))
        .pool("scratch", Policy::Circular, Bytes(TOTAL / 8))
        .pool("documents", Policy::ContentHash, Bytes(TOTAL / 8))
        .pool("reserve", Policy::Reserved, Bytes(TOTAL / 8))
        .priority(["scratch", "weights", "kv", "documents"])
        .build()
        .expect("valid layout")
}

#[derive(Default)]
struct Tally {
    granted: AtomicU64,
    refused: AtomicU64,
}

fn worker(budget: &Budget, ids: &[PoolId], parked: &[Arc<Parked>], seed: u64, tally: &Tally) {
    let mut rng = Rng(seed);
    let mut mine: Vec<Reservation> = Vec::new();
    for _ in 0..STEPS {
        let pool = rng.pick(ids.len());
        let bytes = Bytes(rng.below(TOTAL / 16) + 1);
        let outcome = match rng.pick(10) {
            0..=2 => budget.try_reserve(ids[pool], bytes).map(|r| mine.push(r)),
            3..=4 => budget.reserve(ids[pool], bytes).map(|r| mine.push(r)),
            5 if !mine.is_empty() => {
                let i = rng.pick(mine.len());
                mine[i].grow(bytes)
            }
            6 if !mine.is_empty() => {
                let i = rng.pick(mine.len());
                let by = Bytes(rng.below(mine[i].size().get() + 1));
                mine[i].shrink(by).expect("never more than held");
                Ok(())
            }
            7 if !mine.is_empty() => {
                let r = mine.swap_remove(rng.pick(mine.len()));
                let owner = r.pool().index();
                parked[owner].reservations.lock().expect("parked").push(r);
                Ok(())
            }
            8 => {
                budget.reclaim(ids[pool], bytes);
                Ok(())
            }
            _ => {
                if !mine.is_empty() {
                    drop(mine.swap_remove(rng.pick(mine.len())));
                }
                Ok(())
            }
        };
        let counter = if outcome.is_ok() {
            &tally.granted
        } else {
            &tally.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn threads_never_exceed_the_total_and_never_lose_a_byte() {
    let budget = layout();
    let ids: Vec<PoolId> = budget.pools().map(|(id, _)| id).collect();
    let parked: Vec<Arc<Parked>> = ids
        .iter()
        .map(|&id| {
            let p = Arc::new(Parked {
                reservations: Mutex::default(),
                asked: AtomicU64::new(0),
            });
            budget.set_reclaim(id, &p);
            p
        })
        .collect();
    let tally = Tally::default();
    let done = AtomicBool::new(false);
    let checks = AtomicU64::new(0);

    thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                budget.check_invariants();
                let snap = budget.snapshot();
                assert!(snap.used.get() <= TOTAL);
                let borrowed: u64 = snap.pools.iter().map(|p| p.borrowed.get()).sum();
                let lent: u64 = snap.pools.iter().map(|p| p.lent.get()).sum();
                assert_eq!(borrowed, lent + snap.unassigned_lent.get());
                checks.fetch_add(1, Ordering::Relaxed);
                thread::yield_now();
            }
        });
        let workers: Vec<_> = (0..THREADS as u64)
            .map(|t| {
                let (budget, ids, parked, tally) = (&budget, &ids, &parked, &tally);
                s.spawn(move || worker(budget, ids, parked, 0x9e37_79b9_7f4a_7c15 ^ (t + 1), tally))
            })
            .collect();
        for w in workers {
            w.join().expect("worker finished");
        }
        done.store(true, Ordering::Relaxed);
    });

    for p in &parked {
        p.reservations.lock().expect("parked").clear();
    }
    let snap = budget.snapshot();
    budget.check_invariants();
    assert_eq!(snap.used, Bytes::ZERO);
    for pool in &snap.pools {
        assert_eq!(
            (pool.used, pool.reservations),
            (Bytes::ZERO, 0),
            "{} lost bytes",
            pool.name
        );
    }
    // The high-water marks the ledger kept: high, but never past a limit.
    assert!(snap.peak.get() <= TOTAL);
    assert!(
        snap.peak.get() > TOTAL / 2,
        "the budget was under pressure: {}",
        snap.peak
    );
    let reserve = &snap.pools[4];
    assert!(reserve.peak <= reserve.limit);
    // The run exercised what it claims to: grants, refusals, recalls and concurrent checks.
    assert!(tally.granted.load(Ordering::Relaxed) > 0);
    assert!(tally.refused.load(Ordering::Relaxed) > 0);
    assert!(
        parked
            .iter()
            .map(|p| p.asked.load(Ordering::Relaxed))
            .sum::<u64>()
            > 0
    );
    assert!(checks.load(Ordering::Relaxed) > 0);
}
