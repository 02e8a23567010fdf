//! Cost of a reserve/release pair, with the bare primitives it is built on as peers.
//!
//! The ledger takes its mutex twice per pair (reserve, then release on drop); the peers show
//! what two uncontended lock round trips and two atomic read-modify-writes cost on the same
//! machine, so the ledger's own bookkeeping can be read off as the difference.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use budget::{Budget, Bytes, PoolId, Profile};
use criterion::{Criterion, criterion_group, criterion_main};

fn production() -> (Budget, PoolId) {
    let budget = Profile::builtin("production", Bytes::gib(128))
        .expect("builds")
        .to_budget();
    let kv = budget.pool_id("kv").expect("kv pool");
    (budget, kv)
}

fn pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("pair");
    let (budget, kv) = production();
    // Keep some bytes in the pool so the pair is not measured on an empty ledger.
    let _held = budget.reserve(kv, Bytes::gib(1)).expect("fits");

    group.bench_function("try_reserve+drop", |b| {
        b.iter(|| drop(black_box(budget.try_reserve(kv, black_box(Bytes::kib(64))))));
    });
    group.bench_function("reserve+drop", |b| {
        b.iter(|| drop(black_box(budget.reserve(kv, black_box(Bytes::kib(64))))));
    });
    let mut grown = budget.reserve(kv, Bytes::kib(64)).expect("fits");
    group.bench_function("grow+shrink", |b| {
        b.iter(|| {
            let _ = black_box(grown.try_grow(black_box(Bytes::kib(64))));
            let _ = black_box(grown.shrink(black_box(Bytes::kib(64))));
        });
    });
    group.bench_function("refused try_reserve", |b| {
        b.iter(|| black_box(budget.try_reserve(kv, black_box(Bytes::gib(512)))).is_err());
    });
    group.finish();

    let mut peers = c.benchmark_group("peer");
    let counter = Mutex::new(0u64);
    peers.bench_function("mutex lock+add, lock+sub", |b| {
        b.iter(|| {
            *counter.lock().expect("not poisoned") += black_box(65_536);
            *counter.lock().expect("not poisoned") -= black_box(65_536);
        });
    });
    let atomic = AtomicU64::new(0);
    peers.bench_function("atomic fetch_add+fetch_sub", |b| {
        b.iter(|| {
            atomic.fetch_add(black_box(65_536), Ordering::AcqRel);
            atomic.fetch_sub(black_box(65_536), Ordering::AcqRel);
        });
    });
    peers.finish();
}

/// The same pair while another thread reserves and releases in the same pool.
fn contended(c: &mut Criterion) {
    let (budget, kv) = production();
    let stop = Arc::new(AtomicBool::new(false));
    let rival = {
        let (budget, stop) = (budget.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                drop(black_box(budget.try_reserve(kv, Bytes::kib(64))));
            }
        })
    };
    c.bench_function("pair/try_reserve+drop, 1 rival thread", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                drop(black_box(budget.try_reserve(kv, black_box(Bytes::kib(64)))));
            }
            start.elapsed()
        });
    });
    stop.store(true, Ordering::Relaxed);
    rival.join().expect("rival thread ran");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = pairs, contended
}
criterion_main!(benches);
