//! `Budget`: the ledger's counters and the rules for reserving, borrowing and recalling bytes.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::builder::Layout;
use crate::{
    BudgetSnapshot, Bytes, OutOfBudget, PoolId, PoolSnapshot, PoolSpec, Reclaim, ReclaimReason,
    ReclaimRequest, Reservation,
};

/// Tells budgets apart so that a [`PoolId`] of one is never taken for a pool of another.
static NEXT_SERIAL: AtomicU32 = AtomicU32::new(1);

/// One byte budget split into named pools: the ledger every large allocation goes through.
///
/// `Budget` is a handle: clones share one ledger, and it is `Send + Sync`. Reserve bytes with
/// [`reserve`](Budget::reserve) or [`try_reserve`](Budget::try_reserve); the returned
/// [`Reservation`] gives them back when dropped.
///
/// # Borrowing and recall
/// A pool may hold more than its limit by borrowing slack: first bytes no pool's limit claims
/// (the unassigned part of the total), then the unused limit of other pools. A *reserved* pool
/// never lends and never borrows. So a request of `n` bytes in a sharing pool fits when
/// `n <= shared capacity - bytes held by sharing pools`, where the shared capacity is the total
/// less the limits of reserved pools; in a reserved pool it fits when `n <= limit - used`.
///
/// When a request does not fit, [`try_reserve`](Budget::try_reserve) fails at once.
/// [`reserve`](Budget::reserve) first tries to take back lent bytes, under these rules:
/// - Only a pool's *entitlement* can make others give way: the request is `e` bytes within
///   its limit (`e = min(n, limit - used)`) plus the rest borrowed. Recall happens only when
///   the shortfall `s` is at most `e`; borrowing never makes another pool free memory.
/// - Only borrowers are asked (pools holding more than their limit, with a live hook), lowest
///   priority first, each for `min(what it holds beyond its limit, what is still short)`;
///   the shortfall is recounted from the ledger after each hook, and asking stops as soon as
///   the request fits.
/// - If the borrowers together hold less than `s` beyond their limits, nobody is asked and the
///   request fails at once.
/// - Hooks run with no lock held, so they may drop or take reservations. Between a hook and
///   the retry another thread may take the freed bytes; the request then fails with the
///   [`OutOfBudget`] it would have had. There is no queue and no fairness.
///
/// Slack is attributed to lenders in a fixed order for reporting ([`BudgetSnapshot`]): the
/// unassigned bytes first, then pools lowest priority first.
///
/// # Invariants
/// Checked by [`check_invariants`](Budget::check_invariants), after every mutation in debug
/// builds:
/// - The bytes of all reservations never exceed the total, and the sharing pools never hold
///   more than the shared capacity (so reserved pools' headroom is never lent).
/// - A reserved pool holds at most its limit.
/// - Every byte a pool holds beyond its limit is covered by unassigned bytes or by another
///   sharing pool's unused limit.
/// - A pool with no live reservation holds zero bytes: no byte is ever lost.
/// - Peaks are at least current use, and the overall peak is at most the total.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    serial: u32,
    total: u64,
    /// Total less the limits of reserved pools: what sharing pools may hold together.
    shared_capacity: u64,
    /// Shared capacity less the limits of sharing pools: lendable bytes owned by no pool.
    unassigned: u64,
    pools: Box<[PoolSpec]>,
    /// Pool indices, highest priority first.
    priority: Box<[usize]>,
    ledger: Mutex<Ledger>,
}

/// The mutable counters, all behind one short mutex.
///
/// A mutex rather than atomics so that every reader (snapshots, lending attribution,
/// `check_invariants`) sees one consistent state, and a reservation checks and updates its
/// pool and the shared total together. Measured (`benches/reserve.rs`, docs/design/budget.md):
/// an uncontended reserve/release pair costs 25-65 ns. Several threads in tight loops on one
/// budget serialize on the lock (0.7 µs per pair with two threads); a lock-free prototype
/// (one CAS and two atomic adds each way) measured about 2x the contended throughput, not
/// enough to give up consistent snapshots while reservations are per block, not per token.
struct Ledger {
    pools: Box<[PoolCounters]>,
    used_total: u64,
    /// Bytes held by sharing (non-reserved) pools.
    used_shared: u64,
    peak_total: u64,
}

#[derive(Default)]
struct PoolCounters {
    used: u64,
    peak: u64,
    /// Live reservations; when zero, `used` must be zero or bytes were lost.
    live: u64,
    /// Weak so that an owner holding both the hook and reservations makes no cycle.
    hook: Option<Weak<dyn Reclaim>>,
}

/// Whether a request may ask other pools to give bytes back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Immediate,
    MayRecall,
}

/// Whether bytes start or end a whole reservation, or change part of an existing one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    Whole,
    Part,
}

/// Who lends the bytes that pools hold beyond their limits.
struct Lending {
    unassigned_lent: u64,
    lent: Vec<u64>,
    /// Borrowed bytes nobody's slack covers; zero unless an invariant is broken.
    uncovered: u64,
}

impl Budget {
    pub(crate) fn from_layout(layout: Layout) -> Budget {
        let Layout {
            total,
            pools,
            priority,
        } = layout;
        let reserved: u64 = pools
            .iter()
            .filter(|p| !p.policy().shares())
            .map(|p| p.limit().0)
            .sum();
        let shared_limits: u64 = pools
            .iter()
            .filter(|p| p.policy().shares())
            .map(|p| p.limit().0)
            .sum();
        // The layout guarantees that all limits add up to at most the total.
        let shared_capacity = total.0.saturating_sub(reserved);
        let counters = pools.iter().map(|_| PoolCounters::default()).collect();
        let inner = Inner {
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            total: total.0,
            shared_capacity,
            unassigned: shared_capacity.saturating_sub(shared_limits),
            pools: pools.into_boxed_slice(),
            priority: priority.into_boxed_slice(),
            ledger: Mutex::new(Ledger {
                pools: counters,
                used_total: 0,
                used_shared: 0,
                peak_total: 0,
            }),
        };
        Budget {
            inner: Arc::new(inner),
        }
    }

    /// The budget's total.
    #[must_use]
    pub fn total(&self) -> Bytes {
        Bytes(self.inner.total)
    }

    /// The id of the pool called `name`.
    #[must_use]
    pub fn pool_id(&self, name: &str) -> Option<PoolId> {
        let index = self
            .inner
            .pools
            .iter()
            .position(|p| p.name().as_str() == name)?;
        Some(self.id(index))
    }

    /// Every pool with its id, in declaration order.
    #[must_use]
    pub fn pools(&self) -> impl ExactSizeIterator<Item = (PoolId, &PoolSpec)> {
        self.inner
            .pools
            .iter()
            .enumerate()
            .map(|(i, spec)| (self.id(i), spec))
    }

    /// Pools from highest to lowest priority.
    #[must_use]
    pub fn priority(&self) -> impl ExactSizeIterator<Item = PoolId> + '_ {
        self.inner.priority.iter().map(|&i| self.id(i))
    }

    /// The configuration of `pool`.
    ///
    /// # Panics
    /// If `pool` belongs to another budget (a bug in the caller).
    #[must_use]
    pub fn pool(&self, pool: PoolId) -> &PoolSpec {
        &self.inner.pools[self.index(pool)]
    }

    /// Reserves `bytes` in `pool`, asking borrowers to give lent bytes back if needed (see
    /// *Borrowing and recall*). May wait for as long as reclaim hooks take.
    ///
    /// # Errors
    /// [`OutOfBudget`] with what was available, when the bytes do not fit even after recall.
    ///
    /// # Panics
    /// If `pool` belongs to another budget (a bug in the caller).
    pub fn reserve(&self, pool: PoolId, bytes: Bytes) -> Result<Reservation, OutOfBudget> {
        let index = self.index(pool);
        self.acquire(index, bytes.0, Mode::MayRecall, Hold::Whole)?;
        Ok(Reservation::new(self.clone(), index, bytes.0))
    }

    /// Reserves `bytes` in `pool` if they fit now; never calls a hook, never blocks beyond the
    /// ledger's short lock.
    ///
    /// # Errors
    /// [`OutOfBudget`] with what was available.
    ///
    /// # Panics
    /// If `pool` belongs to another budget (a bug in the caller).
    pub fn try_reserve(&self, pool: PoolId, bytes: Bytes) -> Result<Reservation, OutOfBudget> {
        let index = self.index(pool);
        self.acquire(index, bytes.0, Mode::Immediate, Hold::Whole)?;
        Ok(Reservation::new(self.clone(), index, bytes.0))
    }

    /// What [`try_reserve`](Budget::try_reserve) on `pool` could grant right now.
    ///
    /// # Panics
    /// If `pool` belongs to another budget (a bug in the caller).
    #[must_use]
    pub fn available(&self, pool: PoolId) -> Bytes {
        let index = self.index(pool);
        Bytes(self.available_in(&self.lock(), index))
    }

    /// Bytes held by `pool`'s reservations.
    ///
    /// # Panics
    /// If `pool` belongs to another budget (a bug in the caller).
    #[must_use]
    pub fn used(&self, pool: PoolId) -> Bytes {
        let index = self.index(pool);
        Bytes(self.lock().pools[index].used)
    }

    /// Registers the hook that frees memory of `pool`, replacing any earlier one.
    ///
    /// The budget keeps only a weak reference: the owner keeps the `Arc`, and the hook
    /// disappears when the owner drops it. This lets an owner hold both its hook and its
    /// reservations without a reference cycle.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use budget::{BudgetBuilder, Bytes, Policy, ReclaimRequest, Reservation};
    ///
    /// let budget = BudgetBuilder::new(Bytes::mib(8))
    ///     .pool("kv", Policy::Tiered, Bytes::mib(4))
    ///     .build()?;
    /// let kv = budget.pool_id("kv").ok_or("no kv pool")?;
    /// let blocks: Arc<Mutex<Vec<Reservation>>> = Arc::default();
    /// let hook = Arc::new({
    ///     let blocks = Arc::clone(&blocks);
    ///     move |request: ReclaimRequest| {
    ///         let mut freed = Bytes::ZERO;
    ///         let mut blocks = blocks.lock().unwrap_or_else(|e| e.into_inner());
    ///         while freed < request.want {
    ///             let Some(block) = blocks.pop() else { break };
    ///             freed = freed.saturating_add(block.size());
    ///         }
    ///         freed
    ///     }
    /// });
    /// budget.set_reclaim(kv, &hook);
    /// blocks.lock().map_err(|_| "poisoned")?.push(budget.reserve(kv, Bytes::mib(1))?);
    /// assert_eq!(budget.reclaim(kv, Bytes::KIB), Bytes::mib(1));
    /// assert_eq!(budget.used(kv), Bytes::ZERO);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    /// If `pool` belongs to another budget (a bug in the caller).
    pub fn set_reclaim<R: Reclaim + 'static>(&self, pool: PoolId, hook: &Arc<R>) {
        let index = self.index(pool);
        let weak: Weak<R> = Arc::downgrade(hook);
        self.lock().pools[index].hook = Some(weak as Weak<dyn Reclaim>);
    }

    /// Removes `pool`'s reclaim hook.
    ///
    /// # Panics
    /// If `pool` belongs to another budget (a bug in the caller).
    pub fn clear_reclaim(&self, pool: PoolId) {
        let index = self.index(pool);
        self.lock().pools[index].hook = None;
    }

    /// Asks `pool`'s owner to free up to `want` bytes (the pressure ladder's entry point) and
    /// returns what the hook reports freed; zero without a hook. The hook runs with no lock
    /// held.
    ///
    /// # Panics
    /// If `pool` belongs to another budget (a bug in the caller).
    pub fn reclaim(&self, pool: PoolId, want: Bytes) -> Bytes {
        let index = self.index(pool);
        let hook = self.lock().pools[index]
            .hook
            .as_ref()
            .and_then(Weak::upgrade);
        match hook {
            Some(hook) => hook.reclaim(ReclaimRequest {
                pool,
                want,
                reason: ReclaimReason::Pressure,
            }),
            None => Bytes::ZERO,
        }
    }

    /// A consistent copy of every counter.
    #[must_use]
    pub fn snapshot(&self) -> BudgetSnapshot {
        let ledger = self.lock();
        let lending = self.lending(&ledger);
        let pools = self
            .inner
            .pools
            .iter()
            .zip(ledger.pools.iter())
            .zip(lending.lent)
            .map(|((spec, counters), lent)| PoolSnapshot {
                name: spec.name().clone(),
                policy: spec.policy(),
                limit: spec.limit(),
                used: Bytes(counters.used),
                borrowed: Bytes(counters.used.saturating_sub(spec.limit().0)),
                lent: Bytes(lent),
                peak: Bytes(counters.peak),
                reservations: counters.live,
            })
            .collect();
        BudgetSnapshot {
            total: Bytes(self.inner.total),
            used: Bytes(ledger.used_total),
            peak: Bytes(ledger.peak_total),
            unassigned: Bytes(self.inner.unassigned),
            unassigned_lent: Bytes(lending.unassigned_lent),
            pools,
        }
    }

    /// Sets every peak, per pool and overall, to current use.
    pub fn reset_peaks(&self) {
        let mut ledger = self.lock();
        ledger.peak_total = ledger.used_total;
        for counters in &mut ledger.pools {
            counters.peak = counters.used;
        }
    }

    /// Checks the invariants listed on [`Budget`].
    ///
    /// # Panics
    /// If one is broken, which is a bug in this crate.
    pub fn check_invariants(&self) {
        self.check(&self.lock());
    }

    fn check(&self, ledger: &Ledger) {
        let inner = &*self.inner;
        let sum: u64 = ledger.pools.iter().map(|c| c.used).sum();
        let shared: u64 = self.sharing(ledger).map(|(_, _, c)| c.used).sum();
        assert_eq!(
            sum, ledger.used_total,
            "pool use does not add up to the total use"
        );
        assert_eq!(
            shared, ledger.used_shared,
            "sharing pools' use does not add up"
        );
        assert!(
            ledger.used_total <= inner.total,
            "reservations exceed the total"
        );
        assert!(
            ledger.used_shared <= inner.shared_capacity,
            "reserved headroom was lent"
        );
        assert!(
            ledger.peak_total >= ledger.used_total,
            "overall peak below use"
        );
        assert!(
            ledger.peak_total <= inner.total,
            "overall peak above the total"
        );
        for (spec, counters) in inner.pools.iter().zip(ledger.pools.iter()) {
            let name = spec.name();
            assert!(
                counters.peak >= counters.used,
                "pool `{name}`: peak below use"
            );
            if !spec.policy().shares() {
                assert!(
                    counters.peak <= spec.limit().0,
                    "reserved pool `{name}` over its limit"
                );
            }
            assert!(
                counters.live > 0 || counters.used == 0,
                "pool `{name}` lost bytes"
            );
        }
        let lending = self.lending(ledger);
        assert_eq!(lending.uncovered, 0, "borrowed bytes that no pool lent");
        assert!(
            lending.unassigned_lent <= inner.unassigned,
            "lent more unassigned than exists"
        );
    }

    /// Sharing pools with their index, spec and counters.
    fn sharing<'a>(
        &'a self,
        ledger: &'a Ledger,
    ) -> impl Iterator<Item = (usize, &'a PoolSpec, &'a PoolCounters)> + 'a {
        self.inner
            .pools
            .iter()
            .zip(ledger.pools.iter())
            .enumerate()
            .filter(|(_, (spec, _))| spec.policy().shares())
            .map(|(i, (spec, counters))| (i, spec, counters))
    }

    fn lending(&self, ledger: &Ledger) -> Lending {
        let inner = &*self.inner;
        let mut rest: u64 = self
            .sharing(ledger)
            .map(|(_, spec, c)| c.used.saturating_sub(spec.limit().0))
            .sum();
        let unassigned_lent = rest.min(inner.unassigned);
        rest -= unassigned_lent;
        let mut lent = vec![0; inner.pools.len()];
        for &i in inner.priority.iter().rev() {
            let spec = &inner.pools[i];
            if spec.policy().shares() {
                let slack = spec.limit().0.saturating_sub(ledger.pools[i].used);
                lent[i] = slack.min(rest);
                rest -= lent[i];
            }
        }
        Lending {
            unassigned_lent,
            lent,
            uncovered: rest,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // Counters are updated after every check that can fail, so a panic while the lock is
        // held (only a failed invariant check) leaves them consistent enough to keep going.
        self.inner
            .ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn id(&self, index: usize) -> PoolId {
        // Layouts have at most MAX_POOLS pools, so the index fits.
        #[allow(clippy::cast_possible_truncation)]
        PoolId {
            budget_serial: self.inner.serial,
            index: index as u32,
        }
    }

    fn index(&self, pool: PoolId) -> usize {
        assert_eq!(
            pool.budget_serial, self.inner.serial,
            "pool id {pool:?} belongs to another budget"
        );
        pool.index()
    }

    pub(crate) fn pool_name_at(&self, index: usize) -> &crate::PoolName {
        self.inner.pools[index].name()
    }

    pub(crate) fn id_at(&self, index: usize) -> PoolId {
        self.id(index)
    }

    fn available_in(&self, ledger: &Ledger, index: usize) -> u64 {
        let spec = &self.inner.pools[index];
        if spec.policy().shares() {
            self.inner
                .shared_capacity
                .saturating_sub(ledger.used_shared)
        } else {
            spec.limit().0.saturating_sub(ledger.pools[index].used)
        }
    }

    /// Takes `bytes` for pool `index` if they fit now; else returns what was available.
    fn take(&self, ledger: &mut Ledger, index: usize, bytes: u64, hold: Hold) -> Result<(), u64> {
        let available = self.available_in(ledger, index);
        if bytes > available {
            return Err(available);
        }
        if self.inner.pools[index].policy().shares() {
            ledger.used_shared += bytes;
        }
        ledger.used_total += bytes;
        ledger.peak_total = ledger.peak_total.max(ledger.used_total);
        let counters = &mut ledger.pools[index];
        counters.used += bytes;
        counters.peak = counters.peak.max(counters.used);
        if hold == Hold::Whole {
            counters.live += 1;
        }
        #[cfg(debug_assertions)]
        self.check(ledger);
        Ok(())
    }

    /// Adds `bytes` to pool `index`, recalling lent bytes first when `mode` allows.
    pub(crate) fn acquire(
        &self,
        index: usize,
        bytes: u64,
        mode: Mode,
        hold: Hold,
    ) -> Result<(), OutOfBudget> {
        let borrowers = {
            let mut ledger = self.lock();
            let available = match self.take(&mut ledger, index, bytes, hold) {
                Ok(()) => return Ok(()),
                Err(available) => available,
            };
            match (mode, self.recall_plan(&ledger, index, bytes)) {
                (Mode::MayRecall, Some(borrowers)) => borrowers,
                _ => return Err(self.out_of_budget(index, bytes, available)),
            }
        };
        let lender = self.id(index);
        for (borrower, hook) in borrowers {
            let want = {
                let mut ledger = self.lock();
                if self.take(&mut ledger, index, bytes, hold).is_ok() {
                    return Ok(());
                }
                let Some(short) = self.recall_shortfall(&ledger, index, bytes) else {
                    break;
                };
                let spec = &self.inner.pools[borrower];
                short.min(ledger.pools[borrower].used.saturating_sub(spec.limit().0))
            };
            if want > 0 {
                let reason = ReclaimReason::Recall { lender };
                hook.reclaim(ReclaimRequest {
                    pool: self.id(borrower),
                    want: Bytes(want),
                    reason,
                });
            }
        }
        let mut ledger = self.lock();
        self.take(&mut ledger, index, bytes, hold)
            .map_err(|available| self.out_of_budget(index, bytes, available))
    }

    /// The bytes still missing for a request of `bytes` in pool `index`, if the request may
    /// recall them: a sharing pool, and a shortfall within its entitlement.
    fn recall_shortfall(&self, ledger: &Ledger, index: usize, bytes: u64) -> Option<u64> {
        let spec = &self.inner.pools[index];
        if !spec.policy().shares() {
            return None;
        }
        let short = bytes.saturating_sub(self.available_in(ledger, index));
        let entitled = spec
            .limit()
            .0
            .saturating_sub(ledger.pools[index].used)
            .min(bytes);
        (short <= entitled).then_some(short)
    }

    /// Borrowers to ask, lowest priority first, or `None` when recall cannot make the
    /// request fit.
    fn recall_plan(
        &self,
        ledger: &Ledger,
        index: usize,
        bytes: u64,
    ) -> Option<Vec<(usize, Arc<dyn Reclaim>)>> {
        let short = self.recall_shortfall(ledger, index, bytes)?;
        let mut askable = 0u64;
        let mut borrowers = Vec::new();
        for &j in self.inner.priority.iter().rev() {
            let spec = &self.inner.pools[j];
            let borrowed = ledger.pools[j].used.saturating_sub(spec.limit().0);
            if j == index || !spec.policy().shares() || borrowed == 0 {
                continue;
            }
            if let Some(hook) = ledger.pools[j].hook.as_ref().and_then(Weak::upgrade) {
                askable += borrowed;
                borrowers.push((j, hook));
            }
        }
        (askable >= short).then_some(borrowers)
    }

    fn out_of_budget(&self, index: usize, bytes: u64, available: u64) -> OutOfBudget {
        OutOfBudget {
            pool: self.pool_name_at(index).clone(),
            requested: Bytes(bytes),
            available: Bytes(available),
        }
    }

    /// Gives `bytes` of pool `index` back; `hold` says whether a reservation ends.
    pub(crate) fn release(&self, index: usize, bytes: u64, hold: Hold) {
        let mut ledger = self.lock();
        if self.inner.pools[index].policy().shares() {
            ledger.used_shared = ledger.used_shared.saturating_sub(bytes);
        }
        ledger.used_total = ledger.used_total.saturating_sub(bytes);
        let counters = &mut ledger.pools[index];
        counters.used = counters.used.saturating_sub(bytes);
        if hold == Hold::Whole {
            counters.live = counters.live.saturating_sub(1);
        }
        #[cfg(debug_assertions)]
        self.check(&ledger);
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("total", &Bytes(self.inner.total))
            .field("pools", &self.inner.pools)
            .finish_non_exhaustive()
    }
}
