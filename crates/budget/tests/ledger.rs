//! Reserving, borrowing and recalling through the public API.

use std::sync::{Arc, Mutex};

use budget::{
    Budget, BudgetBuilder, Bytes, Policy, PoolId, Reclaim, ReclaimReason, ReclaimRequest,
    Reservation, ShrinkError,
};

/// total 100: `a` tiered 40, `b` content-hash 30, `r` reserved 20; 10 unassigned.
/// Priority a > b, so `b` is asked first and lends first.
fn abr() -> (Budget, PoolId, PoolId, PoolId) {
    let budget = BudgetBuilder::new(Bytes(100))
        .pool("a", Policy::Tiered, Bytes(40))
        .pool("b", Policy::ContentHash, Bytes(30))
        .pool("r", Policy::Reserved, Bytes(20))
        .priority(["a", "b"])
        .build()
        .expect("valid layout");
    let id = |name| budget.pool_id(name).expect("pool exists");
    let (a, b, r) = (id("a"), id("b"), id("r"));
    (budget, a, b, r)
}

/// A pool owner: holds reservations, frees them newest first when asked, logs requests.
#[derive(Default)]
struct Owner {
    held: Mutex<Vec<Reservation>>,
    asked: Mutex<Vec<ReclaimRequest>>,
}

impl Owner {
    fn hold(&self, reservation: Reservation) {
        self.held.lock().expect("not poisoned").push(reservation);
    }

    fn asked(&self) -> Vec<ReclaimRequest> {
        self.asked.lock().expect("not poisoned").clone()
    }
}

impl Reclaim for Owner {
    fn reclaim(&self, request: ReclaimRequest) -> Bytes {
        self.asked.lock().expect("not poisoned").push(request);
        let mut freed = Bytes::ZERO;
        let mut held = self.held.lock().expect("not poisoned");
        while freed < request.want {
            let Some(r) = held.pop() else { break };
            freed = freed.saturating_add(r.size());
        }
        freed
    }
}

fn owner(budget: &Budget, pool: PoolId) -> Arc<Owner> {
    let owner = Arc::new(Owner::default());
    // The budget keeps a weak reference: the hook lives as long as the returned owner.
    budget.set_reclaim(pool, &owner);
    owner
}

#[test]
fn reserve_grow_shrink_and_drop_account_exactly() {
    let (budget, a, _, _) = abr();
    let mut r = budget.reserve(a, Bytes(10)).expect("fits");
    r.grow(Bytes(5)).expect("fits");
    assert_eq!((r.size(), budget.used(a)), (Bytes(15), Bytes(15)));
    r.shrink(Bytes(12)).expect("held");
    assert_eq!(budget.used(a), Bytes(3));
    assert!(matches!(
        r.shrink(Bytes(4)),
        Err(ShrinkError {
            held: Bytes(3),
            requested: Bytes(4),
            ..
        })
    ));
    let zero = budget
        .try_reserve(a, Bytes::ZERO)
        .expect("zero always fits");
    r.release();
    drop(zero);
    assert_eq!(budget.used(a), Bytes::ZERO);
    budget.check_invariants();
}

#[test]
fn borrowing_takes_unassigned_bytes_then_the_lowest_priority_slack() {
    let (budget, a, b, r) = abr();
    let _own = budget.reserve(a, Bytes(40)).expect("within limit");
    let _unassigned = budget.try_reserve(a, Bytes(10)).expect("unassigned slack");
    let _from_b = budget.try_reserve(a, Bytes(20)).expect("b's slack");
    assert_eq!(
        budget.available(b),
        Bytes(10),
        "b's own bytes, less what a borrowed"
    );
    let snap = budget.snapshot();
    assert_eq!(snap.unassigned_lent, Bytes(10));
    let (pa, pb, pr) = (&snap.pools[0], &snap.pools[1], &snap.pools[2]);
    assert_eq!(
        (pa.used, pa.borrowed, pa.lent),
        (Bytes(70), Bytes(30), Bytes::ZERO)
    );
    assert_eq!(
        (pb.used, pb.borrowed, pb.lent),
        (Bytes::ZERO, Bytes::ZERO, Bytes(20))
    );
    assert_eq!(pr.lent, Bytes::ZERO, "the reserved pool never lends");

    let refused = budget
        .try_reserve(a, Bytes(11))
        .expect_err("only b's last 10 are left");
    assert_eq!(
        (refused.requested, refused.available),
        (Bytes(11), Bytes(10))
    );
    assert_eq!(refused.shortfall(), Bytes(1));
    assert!(refused.to_string().contains("pool `a`"), "{refused}");

    // The reserved pool's 20 bytes are still all there, and it cannot go past them.
    let headroom = budget
        .try_reserve(r, Bytes(20))
        .expect("reserved bytes are never lent");
    assert!(
        budget.try_reserve(r, Bytes(1)).is_err(),
        "a reserved pool never borrows"
    );
    drop(headroom);
    budget.check_invariants();
}

#[test]
fn a_lender_recalls_only_the_shortfall_from_the_borrower() {
    let (budget, a, b, _) = abr();
    let a_owner = owner(&budget, a);
    for _ in 0..7 {
        a_owner.hold(budget.reserve(a, Bytes(10)).expect("fits"));
    }
    // a holds 70: 40 of its own, 10 unassigned, 20 of b's. b asks for 25 of its 30: 10 are
    // free, so 15 are short.
    let got = budget
        .reserve(b, Bytes(25))
        .expect("b is entitled to its bytes");
    assert_eq!(got.size(), Bytes(25));
    let asked = a_owner.asked();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].pool, a);
    assert_eq!(asked[0].want, Bytes(15));
    assert_eq!(asked[0].reason, ReclaimReason::Recall { lender: b });
    assert_eq!(budget.used(a), Bytes(50), "the hook freed two blocks of 10");
    budget.check_invariants();
}

#[test]
fn borrowing_never_makes_another_pool_free_memory() {
    let (budget, a, b, _) = abr();
    let a_owner = owner(&budget, a);
    a_owner.hold(budget.reserve(a, Bytes(70)).expect("fits by borrowing"));
    let _b_full = budget.reserve(b, Bytes(10)).expect("the free 10");
    // b has 10 of its 30; 20 more would be entitled but 0 are free: recall is allowed.
    // 25 more would be 20 entitled + 5 borrowed, and the shortfall (25) is past the
    // entitlement: refused without asking anyone.
    let refused = budget
        .reserve(b, Bytes(25))
        .expect_err("the borrowed part cannot recall");
    assert_eq!(refused.available, Bytes::ZERO);
    assert!(a_owner.asked().is_empty(), "a was not asked");
    assert!(
        budget.try_reserve(b, Bytes(20)).is_err(),
        "try_reserve never recalls"
    );
    assert!(a_owner.asked().is_empty(), "a was not asked");
}

#[test]
fn borrowers_are_asked_lowest_priority_first_and_only_while_short() {
    let budget = BudgetBuilder::new(Bytes(90))
        .pool("high", Policy::Persistent, Bytes(30))
        .pool("mid", Policy::Tiered, Bytes(30))
        .pool("low", Policy::ContentHash, Bytes(30))
        .priority(["high", "mid", "low"])
        .build()
        .expect("valid layout");
    let [high, mid, low] = ["high", "mid", "low"].map(|n| budget.pool_id(n).expect("pool"));
    let (mid_owner, low_owner) = (owner(&budget, mid), owner(&budget, low));
    for _ in 0..4 {
        mid_owner.hold(budget.reserve(mid, Bytes(10)).expect("fits"));
        low_owner.hold(budget.reserve(low, Bytes(5)).expect("fits"));
    }
    low_owner.hold(budget.reserve(low, Bytes(30)).expect("borrows"));
    // mid holds 40 (10 borrowed), low holds 50 (20 borrowed): high's 30 are all lent.
    assert_eq!(budget.available(high), Bytes::ZERO);
    let _first = budget.reserve(high, Bytes(15)).expect("low gives back");
    assert_eq!(
        low_owner.asked().iter().map(|r| r.want).collect::<Vec<_>>(),
        [Bytes(15)]
    );
    assert!(mid_owner.asked().is_empty(), "low's return was enough");
    // low freed its 30-byte block, so it now holds 20 (within its limit): 15 were freed
    // beyond the 15 asked, and those are free now.
    assert_eq!(budget.available(high), Bytes(15));
    let _second = budget.reserve(high, Bytes(15)).expect("free bytes");
    assert!(mid_owner.asked().is_empty());
    let _third = budget.try_reserve(mid, Bytes(1));
    budget.check_invariants();
}

#[test]
fn recall_asks_nobody_when_borrowers_cannot_cover_the_shortfall() {
    let (budget, a, b, _) = abr();
    // a borrows 30 but registers no hook: nobody can be asked.
    let _a = budget.reserve(a, Bytes(70)).expect("fits by borrowing");
    let refused = budget.reserve(b, Bytes(30)).expect_err("a has no hook");
    assert_eq!(refused.available, Bytes(10));
}

#[test]
fn a_hook_that_frees_nothing_leaves_an_ordinary_error() {
    let (budget, a, b, _) = abr();
    let asked = Arc::new(Mutex::new(0u32));
    let hook = Arc::new({
        let asked = Arc::clone(&asked);
        move |_: ReclaimRequest| {
            *asked.lock().expect("not poisoned") += 1;
            Bytes::gib(1) // claims much, frees nothing: the ledger's count is what matters
        }
    });
    budget.set_reclaim(a, &hook);
    let _a = budget.reserve(a, Bytes(70)).expect("fits by borrowing");
    let refused = budget.reserve(b, Bytes(30)).expect_err("nothing was freed");
    assert_eq!(refused.available, Bytes(10));
    assert_eq!(*asked.lock().expect("not poisoned"), 1);
}

#[test]
fn grow_recalls_like_reserve() {
    let (budget, a, b, _) = abr();
    let a_owner = owner(&budget, a);
    a_owner.hold(budget.reserve(a, Bytes(70)).expect("fits by borrowing"));
    let mut mine = budget.reserve(b, Bytes(10)).expect("free");
    assert!(mine.try_grow(Bytes(20)).is_err(), "try_grow never recalls");
    mine.grow(Bytes(20)).expect("b takes back its bytes");
    assert_eq!(mine.size(), Bytes(30));
    assert_eq!(a_owner.asked()[0].want, Bytes(20));
    assert_eq!(
        budget.used(a),
        Bytes::ZERO,
        "the only block, 70 bytes, was dropped"
    );
}

#[test]
fn pressure_reclaim_reaches_the_owner_until_it_drops_the_hook() {
    let (budget, a, _, _) = abr();
    let a_owner = owner(&budget, a);
    a_owner.hold(budget.reserve(a, Bytes(30)).expect("fits"));
    assert_eq!(budget.reclaim(a, Bytes(5)), Bytes(30));
    assert_eq!(a_owner.asked()[0].reason, ReclaimReason::Pressure);
    assert_eq!(budget.used(a), Bytes::ZERO);
    drop(a_owner);
    assert_eq!(
        budget.reclaim(a, Bytes(5)),
        Bytes::ZERO,
        "the hook went with its owner"
    );
    let _ = owner(&budget, a);
    budget.clear_reclaim(a);
    assert_eq!(budget.reclaim(a, Bytes(5)), Bytes::ZERO);
}

#[test]
fn hooks_may_reserve_and_release_without_deadlock() {
    let (budget, a, b, r) = abr();
    let hook = Arc::new({
        let budget = budget.clone();
        let held = Mutex::new(Some(
            budget.reserve(a, Bytes(70)).expect("fits by borrowing"),
        ));
        move |request: ReclaimRequest| {
            // Touches the ledger from inside the hook: reads, reserves and releases.
            let _ = budget.snapshot();
            let _tmp = budget.try_reserve(r, Bytes(1));
            held.lock()
                .expect("not poisoned")
                .take()
                .map_or(Bytes::ZERO, |x| {
                    assert!(request.want <= x.size());
                    x.size()
                })
        }
    });
    budget.set_reclaim(a, &hook);
    let _b = budget.reserve(b, Bytes(30)).expect("recalled");
    assert_eq!(budget.used(a), Bytes::ZERO);
}

#[test]
fn peaks_are_tracked_per_pool_and_overall_and_can_be_reset() {
    let (budget, a, b, _) = abr();
    let x = budget.reserve(a, Bytes(30)).expect("fits");
    let y = budget.reserve(b, Bytes(20)).expect("fits");
    drop(x);
    let _z = budget.reserve(b, Bytes(5)).expect("fits");
    let snap = budget.snapshot();
    assert_eq!((snap.peak, snap.used), (Bytes(50), Bytes(25)));
    assert_eq!(
        (snap.pools[0].peak, snap.pools[1].peak),
        (Bytes(30), Bytes(25))
    );
    assert_eq!(snap.pools[1].reservations, 2);
    drop(y);
    budget.reset_peaks();
    let snap = budget.snapshot();
    assert_eq!(
        (snap.peak, snap.pools[0].peak, snap.pools[1].peak),
        (Bytes(5), Bytes(0), Bytes(5))
    );
}

#[test]
fn snapshots_serialize_with_byte_suffixed_fields() {
    let (budget, a, _, _) = abr();
    let _x = budget.reserve(a, Bytes(45)).expect("fits");
    let json = serde_json::to_value(budget.snapshot()).expect("serializes");
    assert_eq!(json["total_bytes"], 100);
    assert_eq!(json["used_bytes"], 45);
    assert_eq!(json["unassigned_lent_bytes"], 5);
    let pool = &json["pools"][0];
    assert_eq!(pool["name"], "a");
    assert_eq!(pool["policy"], "tiered");
    assert_eq!(
        (pool["limit_bytes"].clone(), pool["borrowed_bytes"].clone()),
        (40.into(), 5.into())
    );
    assert_eq!(json["pools"][2]["policy"], "reserved");
}

#[test]
fn huge_requests_are_refused_not_overflowed() {
    let (budget, a, _, r) = abr();
    let mut x = budget.reserve(a, Bytes(1)).expect("fits");
    assert!(budget.reserve(a, Bytes(u64::MAX)).is_err());
    assert!(budget.reserve(r, Bytes(u64::MAX)).is_err());
    assert!(x.grow(Bytes(u64::MAX)).is_err());
    assert_eq!(x.size(), Bytes(1), "a failed grow changes nothing");
    budget.check_invariants();
}

#[test]
#[should_panic(expected = "belongs to another budget")]
fn a_pool_id_of_another_budget_is_a_bug() {
    let (one, a, _, _) = abr();
    let (other, _, _, _) = abr();
    drop(one);
    let _ = other.try_reserve(a, Bytes(1));
}

#[test]
fn reservations_outlive_their_handle_and_cross_threads() {
    let (budget, a, _, _) = abr();
    let x = budget.reserve(a, Bytes(10)).expect("fits");
    let observer = budget.clone();
    drop(budget);
    std::thread::spawn(move || drop(x))
        .join()
        .expect("thread ran");
    assert_eq!(observer.used(a), Bytes::ZERO);
}
