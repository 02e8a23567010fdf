//! Model-based property test: random layouts and random interleavings of reserve, grow,
//! shrink, release, borrowing, recall and reclaim, checked step by step against plain counters.

use std::sync::{Arc, Mutex};

use budget::{Budget, BudgetBuilder, Bytes, Policy, PoolId, Reclaim, ReclaimRequest, Reservation};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Layout {
    total: u64,
    /// Policy and limit of each pool; limits add up to at most `total`.
    pools: Vec<(Policy, u64)>,
    /// A permutation of pool indices, highest priority first.
    priority: Vec<usize>,
}

fn layout() -> impl Strategy<Value = Layout> {
    let policy = prop_oneof![
        Just(Policy::Persistent),
        Just(Policy::Tiered),
        Just(Policy::Circular),
        Just(Policy::ContentHash),
        Just(Policy::Reserved),
    ];
    (
        1u64..5_000,
        prop::collection::vec((policy, 0u64..100), 1..6),
        0u64..100,
    )
        .prop_flat_map(|(total, weights, unassigned_weight)| {
            let sum: u64 = weights.iter().map(|w| w.1).sum::<u64>() + unassigned_weight;
            let pools: Vec<(Policy, u64)> = weights
                .iter()
                .map(|&(p, w)| (p, total * w / sum.max(1)))
                .collect();
            let order: Vec<usize> = (0..pools.len()).collect();
            (Just(total), Just(pools), Just(order).prop_shuffle()).prop_map(
                |(total, pools, priority)| Layout {
                    total,
                    pools,
                    priority,
                },
            )
        })
}

#[derive(Clone, Debug)]
enum Op {
    /// `try_reserve`, or `reserve` (which may recall) when `recall` is set.
    Reserve {
        pool: usize,
        bytes: u64,
        recall: bool,
    },
    Grow {
        slot: usize,
        bytes: u64,
        recall: bool,
    },
    Shrink {
        slot: usize,
        bytes: u64,
    },
    Release {
        slot: usize,
    },
    /// `Budget::reclaim`, as the pressure ladder calls it.
    Reclaim {
        pool: usize,
        want: u64,
    },
}

fn op(total: u64) -> impl Strategy<Value = Op> {
    let bytes = prop_oneof![0..=total / 4 + 1, 0..=total + 1];
    prop_oneof![
        4 => (any::<usize>(), bytes.clone(), any::<bool>())
            .prop_map(|(pool, bytes, recall)| Op::Reserve { pool, bytes, recall }),
        2 => (any::<usize>(), bytes.clone(), any::<bool>())
            .prop_map(|(slot, bytes, recall)| Op::Grow { slot, bytes, recall }),
        2 => (any::<usize>(), bytes.clone()).prop_map(|(slot, bytes)| Op::Shrink { slot, bytes }),
        2 => any::<usize>().prop_map(|slot| Op::Release { slot }),
        1 => (any::<usize>(), bytes).prop_map(|(pool, want)| Op::Reclaim { pool, want }),
    ]
}

/// The reference: every live reservation with the size the model says it has, per pool.
/// Hooks pop from it, so whatever a hook frees leaves the model too.
type Held = Arc<Mutex<Vec<Vec<(u64, Reservation)>>>>;

/// A pool owner that frees its newest reservations until it has freed `want`, and checks
/// that the ledger asks only for what the pool can give.
struct Owner {
    pool: usize,
    limit: u64,
    held: Held,
    budget: Budget,
    calls: Arc<Mutex<Vec<usize>>>,
    /// Bytes of the reserve or grow in progress.
    pending: Arc<Mutex<u64>>,
}

impl Reclaim for Owner {
    fn reclaim(&self, request: ReclaimRequest) -> Bytes {
        self.calls.lock().expect("calls").push(self.pool);
        let used = self.budget.used(request.pool).get();
        if let budget::ReclaimReason::Recall { lender } = request.reason {
            let short = self
                .pending
                .lock()
                .expect("pending")
                .saturating_sub(self.budget.available(lender).get());
            assert!(request.want.get() <= short, "asked past the shortfall");
            assert!(
                request.want.get() <= used.saturating_sub(self.limit),
                "asked past borrowed"
            );
            assert!(request.want.get() > 0);
        }
        let mut freed = Vec::new();
        let mut sum = 0;
        {
            let mut held = self.held.lock().expect("held");
            while sum < request.want.get() {
                let Some((size, r)) = held[self.pool].pop() else {
                    break;
                };
                sum += size;
                freed.push(r);
            }
        }
        // Dropped outside the model's lock, inside the hook: gives bytes back to the ledger.
        drop(freed);
        Bytes(sum)
    }
}

struct Run {
    layout: Layout,
    budget: Budget,
    ids: Vec<PoolId>,
    held: Held,
    calls: Arc<Mutex<Vec<usize>>>,
    pending: Arc<Mutex<u64>>,
    _hooks: Vec<Arc<Owner>>,
}

impl Run {
    fn new(layout: Layout) -> Run {
        let names: Vec<String> = (0..layout.pools.len()).map(|i| format!("p{i}")).collect();
        let mut builder = BudgetBuilder::new(Bytes(layout.total));
        for (name, &(policy, limit)) in names.iter().zip(&layout.pools) {
            builder = builder.pool(name, policy, Bytes(limit));
        }
        let budget = builder
            .priority(layout.priority.iter().map(|&i| &names[i]))
            .build()
            .expect("generated layouts are valid");
        let ids: Vec<PoolId> = names
            .iter()
            .map(|n| budget.pool_id(n).expect("pool"))
            .collect();
        let held: Held = Arc::new(Mutex::new((0..ids.len()).map(|_| Vec::new()).collect()));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let pending = Arc::new(Mutex::new(0));
        let hooks: Vec<Arc<Owner>> = (0..ids.len())
            .map(|pool| {
                let owner = Arc::new(Owner {
                    pool,
                    limit: layout.pools[pool].1,
                    held: Arc::clone(&held),
                    budget: budget.clone(),
                    calls: Arc::clone(&calls),
                    pending: Arc::clone(&pending),
                });
                budget.set_reclaim(ids[pool], &owner);
                owner
            })
            .collect();
        Run {
            layout,
            budget,
            ids,
            held,
            calls,
            pending,
            _hooks: hooks,
        }
    }

    fn used(&self) -> Vec<u64> {
        let held = self.held.lock().expect("held");
        held.iter()
            .map(|pool| pool.iter().map(|(size, _)| size).sum())
            .collect()
    }

    fn shares(&self, pool: usize) -> bool {
        self.layout.pools[pool].0 != Policy::Reserved
    }

    fn shared_capacity(&self) -> u64 {
        let reserved: u64 = self
            .layout
            .pools
            .iter()
            .filter(|p| p.0 == Policy::Reserved)
            .map(|p| p.1)
            .sum();
        self.layout.total - reserved
    }

    /// What `try_reserve` may grant `pool`, from the plain counters.
    fn available(&self, used: &[u64], pool: usize) -> u64 {
        if self.shares(pool) {
            let shared: u64 = (0..used.len())
                .filter(|&i| self.shares(i))
                .map(|i| used[i])
                .sum();
            self.shared_capacity() - shared
        } else {
            self.layout.pools[pool].1 - used[pool]
        }
    }

    /// Whether `reserve` (with recall) must succeed: the shortfall is within the pool's
    /// entitlement and the other sharing pools hold at least that much beyond their limits.
    fn recall_fits(&self, used: &[u64], pool: usize, bytes: u64) -> bool {
        let short = bytes.saturating_sub(self.available(used, pool));
        let entitled = self.layout.pools[pool]
            .1
            .saturating_sub(used[pool])
            .min(bytes);
        let borrowed: u64 = (0..used.len())
            .filter(|&i| i != pool && self.shares(i))
            .map(|i| used[i].saturating_sub(self.layout.pools[i].1))
            .sum();
        self.shares(pool) && short <= entitled && borrowed >= short
    }

    /// The slot-th live reservation, taken out of the model (hooks must not free it mid-op).
    fn take(&self, slot: usize) -> Option<(usize, u64, Reservation)> {
        let mut held = self.held.lock().expect("held");
        let count: usize = held.iter().map(Vec::len).sum();
        if count == 0 {
            return None;
        }
        let mut slot = slot % count;
        for (pool, list) in held.iter_mut().enumerate() {
            if slot < list.len() {
                let (size, r) = list.remove(slot);
                return Some((pool, size, r));
            }
            slot -= list.len();
        }
        None
    }

    fn put(&self, pool: usize, size: u64, r: Reservation) {
        self.held.lock().expect("held")[pool].push((size, r));
    }

    fn calls(&self) -> usize {
        self.calls.lock().expect("calls").len()
    }

    fn step(&self, op: &Op) {
        let before = self.used();
        if let Op::Reserve { bytes, .. } | Op::Grow { bytes, .. } = *op {
            *self.pending.lock().expect("pending") = bytes;
        }
        match *op {
            Op::Reserve {
                pool,
                bytes,
                recall,
            } => {
                let pool = pool % self.ids.len();
                let fits = bytes <= self.available(&before, pool);
                let calls = self.calls();
                let result = if recall {
                    self.budget.reserve(self.ids[pool], Bytes(bytes))
                } else {
                    self.budget.try_reserve(self.ids[pool], Bytes(bytes))
                };
                self.check_outcome(&before, pool, bytes, recall, calls, result.as_ref().err());
                if let Ok(r) = result {
                    assert_eq!(r.size(), Bytes(bytes));
                    self.put(pool, bytes, r);
                } else {
                    assert!(!fits);
                }
            }
            Op::Grow {
                slot,
                bytes,
                recall,
            } => {
                let Some((pool, size, mut r)) = self.take(slot) else {
                    return;
                };
                let before = self.used_with(pool, size);
                let calls = self.calls();
                let result = if recall {
                    r.grow(Bytes(bytes))
                } else {
                    r.try_grow(Bytes(bytes))
                };
                self.check_outcome(&before, pool, bytes, recall, calls, result.as_ref().err());
                let size = if result.is_ok() { size + bytes } else { size };
                assert_eq!(r.size(), Bytes(size));
                self.put(pool, size, r);
            }
            Op::Shrink { slot, bytes } => {
                let Some((pool, size, mut r)) = self.take(slot) else {
                    return;
                };
                let result = r.shrink(Bytes(bytes));
                assert_eq!(result.is_ok(), bytes <= size);
                let size = if bytes <= size { size - bytes } else { size };
                assert_eq!(r.size(), Bytes(size));
                self.put(pool, size, r);
            }
            Op::Release { slot } => drop(self.take(slot)),
            Op::Reclaim { pool, want } => {
                let pool = pool % self.ids.len();
                let freed = self.budget.reclaim(self.ids[pool], Bytes(want));
                let after = self.used();
                assert_eq!(
                    freed.get(),
                    before[pool] - after[pool],
                    "hook report vs model"
                );
                assert!(after[pool] == 0 || before[pool] - after[pool] >= want);
            }
        }
        self.check();
    }

    /// Plain counters as they were before a grow took `size` bytes of `pool` out of the model.
    fn used_with(&self, pool: usize, size: u64) -> Vec<u64> {
        let mut used = self.used();
        used[pool] += size;
        used
    }

    fn check_outcome(
        &self,
        before: &[u64],
        pool: usize,
        bytes: u64,
        recall: bool,
        calls_before: usize,
        error: Option<&budget::OutOfBudget>,
    ) {
        let fits = bytes <= self.available(before, pool);
        let must_succeed = fits || (recall && self.recall_fits(before, pool, bytes));
        assert_eq!(
            error.is_none(),
            must_succeed,
            "{bytes} bytes in p{pool}: {error:?}"
        );
        if let Some(error) = error {
            assert_eq!(error.requested, Bytes(bytes));
            // Nothing was freed, since recall only runs when it can succeed.
            assert_eq!(error.available, Bytes(self.available(before, pool)));
        }
        if fits || !recall || !self.recall_fits(before, pool, bytes) {
            assert_eq!(
                self.calls(),
                calls_before,
                "no hook runs unless recall can succeed"
            );
        }
        // Borrowers are asked lowest priority first, each at most once, never the requester.
        let rank = |p: usize| self.layout.priority.iter().position(|&q| q == p);
        let asked: Vec<_> = self.calls.lock().expect("calls")[calls_before..]
            .iter()
            .map(|&p| rank(p))
            .collect();
        assert!(
            asked.windows(2).all(|w| w[0] > w[1]),
            "asked out of order: {asked:?}"
        );
        assert!(!asked.contains(&rank(pool)), "the requester asked itself");
    }

    /// Compares the ledger with the model and checks every limit.
    fn check(&self) {
        self.budget.check_invariants();
        let used = self.used();
        let snap = self.budget.snapshot();
        assert_eq!(snap.used.get(), used.iter().sum::<u64>());
        assert!(snap.used.get() <= self.layout.total);
        assert!(snap.peak.get() <= self.layout.total);
        let mut borrowed = 0;
        let mut lent = snap.unassigned_lent.get();
        for (i, pool) in snap.pools.iter().enumerate() {
            let limit = self.layout.pools[i].1;
            assert_eq!(pool.used.get(), used[i], "p{i} used");
            assert_eq!(pool.limit.get(), limit);
            assert_eq!(pool.borrowed.get(), used[i].saturating_sub(limit));
            assert!(pool.used <= pool.limit.saturating_add(pool.borrowed));
            assert!(
                pool.lent.get() <= limit.saturating_sub(used[i]),
                "p{i} lent unused bytes"
            );
            assert!(pool.peak.get() >= used[i]);
            if !self.shares(i) {
                assert_eq!((pool.borrowed, pool.lent), (Bytes::ZERO, Bytes::ZERO));
                assert!(pool.peak.get() <= limit);
            }
            borrowed += pool.borrowed.get();
            lent += pool.lent.get();
        }
        assert_eq!(borrowed, lent, "every borrowed byte has a lender");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn ledger_matches_the_model(
        (layout, ops) in layout().prop_flat_map(|l| {
            let total = l.total;
            (Just(l), prop::collection::vec(op(total), 1..120))
        })
    ) {
        let run = Run::new(layout);
        for op in &ops {
            run.step(op);
        }
        run.held.lock().expect("held").clear();
        let snap = run.budget.snapshot();
        prop_assert_eq!(snap.used, Bytes::ZERO);
        for pool in &snap.pools {
            prop_assert_eq!(pool.used, Bytes::ZERO, "no byte lost in {}", pool.name);
            prop_assert_eq!(pool.reservations, 0);
        }
        run.budget.check_invariants();
    }
}
