//! The disk tier as a cache of prefixes (issue 13): only blocks in the reuse's format are
//! ever found again, a disk that refuses writes costs the spill and nothing else, and the
//! store is held to its cap by the eviction score, chains shrinking from their ends.

use std::collections::HashSet;

use budget::{BudgetBuilder, Bytes, Policy};
use kvcache::policy::{Action, Rates, Weights};
use kvcache::{
    BlockStore, Compression, KvCache, KvError, KvFormat, KvLayout, ReuseRule, SeqId, Tier, disk_key,
};
use kvdisk::Link;

const BT: usize = 16;
const DIGEST: u64 = 0xD15C;

fn layout() -> KvLayout {
    KvLayout::new(2, 1, 32, BT).unwrap()
}

/// Appends `toks` to `seq` from position `from` with values that depend on token and
/// position only.
fn append(kv: &mut KvCache, seq: SeqId, toks: &[u32], from: usize) -> Result<(), KvError> {
    kv.seq_reserve(seq, from + toks.len())?;
    for (i, &t) in toks.iter().enumerate() {
        let pos = from + i;
        for layer in 0..2 {
            let row = |kv: u32| -> Vec<u16> {
                (0..32u32)
                    .map(|d| {
                        let x =
                            ((t * 31 + pos as u32 * 7 + d + kv * 13 + layer) as f32 * 0.1).sin();
                        half::f16::from_f32(x).to_bits()
                    })
                    .collect()
            };
            kv.write(seq, layer as usize, pos, &row(0), &row(1))?;
        }
    }
    Ok(())
}

fn rule(format: KvFormat) -> ReuseRule {
    ReuseRule {
        digest: DIGEST,
        format,
        align_tokens: BT,
    }
}

/// Issue 13, finding 1 (the pressure half): a block the ladder demoted below the type's
/// format is not the type's block. It is not persisted as one, not attached in RAM as
/// one, and its spill file is never found by a prefix lookup.
#[test]
fn finding1_blocks_demoted_by_pressure_are_never_reused_as_the_types_blocks() {
    let l = layout();
    let budget = BudgetBuilder::new(Bytes(64 * l.block_bytes()))
        .pool("kv", Policy::Tiered, Bytes(64 * l.block_bytes()))
        .build()
        .unwrap();
    let kvp = budget.pool_id("kv").unwrap();
    let mut kv = KvCache::new(l, 32);
    kv.pool_mut()
        .set_reservation(budget.reserve(kvp, Bytes(0)).unwrap())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
    let toks: Vec<u32> = (0..4 * BT as u32).map(|i| i * 5 % 97).collect();
    let a = kv.seq_new();
    append(&mut kv, a, &toks, 0).unwrap();
    kv.seq_publish(a, &toks, DIGEST, KvFormat::F16).unwrap();
    kv.seq_set_running(a, false).unwrap();
    // Pressure: every block goes f16 → int8 → int4 → int2 → disk.
    let mut spilled = 0;
    for _ in 0..5 {
        let r = kv
            .reclaim(
                u64::MAX,
                Some(&store),
                Compression::None,
                &Weights::default(),
                &Rates::default(),
            )
            .unwrap();
        assert!(r.spill_failure.is_none());
        spilled += r
            .decisions
            .iter()
            .filter(|d| d.action == Action::Spill)
            .count();
    }
    assert_eq!(spilled, 4);
    assert_eq!(kv.pool().tier_counts(), [0, 0, 0, 4]);
    let hashes: Vec<u64> = kv
        .seq_blocks(a)
        .unwrap()
        .iter()
        .map(|&id| kv.pool().meta(id).hash.unwrap())
        .collect();
    for f in KvFormat::ALL {
        for &h in &hashes {
            assert!(
                !store.contains(disk_key(h, f)),
                "a spill under a prefix key ({f:?})"
            );
        }
        // Not in RAM as the type's blocks either (they are on disk, format int2).
        let b = kv.seq_new();
        let got = kv
            .seq_attach_prefix(b, &toks, toks.len(), &rule(f))
            .unwrap();
        let want = if f == KvFormat::Q2 { 64 } else { 0 };
        assert_eq!(got, want, "{f:?}");
        kv.seq_remove(b);
        // And nothing of another format is written as f16's.
        assert_eq!(
            kv.seq_persist(a, &store, f).unwrap().written,
            0,
            "{f:?}: spilled blocks are not persisted"
        );
    }
    // Brought back: the int2 blocks are still not f16's, and their spill files are gone.
    kv.seq_set_running(a, true).unwrap();
    kv.seq_prepare(a, Some(&store)).unwrap();
    assert_eq!(
        store.keys().unwrap(),
        Vec::<u64>::new(),
        "spill files removed after load"
    );
    assert_eq!(kv.seq_persist(a, &store, KvFormat::F16).unwrap().written, 0);
    let c = kv.seq_new();
    assert_eq!(
        kv.seq_attach_from_disk(c, &toks, 64, &rule(KvFormat::F16), &store)
            .unwrap(),
        0
    );
    kv.check_invariants();
}

/// Issue 13, finding 5: a full disk made the spill fail the whole step. Now the block
/// stays in RAM, spilling stops for the call, and the failure is reported once.
#[test]
fn finding5_a_spill_the_disk_refuses_leaves_the_block_in_ram() {
    let l = layout();
    let mut kv = KvCache::new(l, 32);
    let dir = tempfile::tempdir().unwrap();
    let store = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
    let toks: Vec<u32> = (0..3 * BT as u32).collect();
    let a = kv.seq_new();
    append(&mut kv, a, &toks, 0).unwrap();
    for id in kv.seq_blocks(a).unwrap().to_vec() {
        kv.pool_mut().set_format(id, KvFormat::Q2).unwrap();
    }
    kv.seq_set_running(a, false).unwrap();
    let one_block = l.block_bytes_in(KvFormat::Q2) + 3 + kvdisk::HEADER_LEN as u64;
    store.simulate_full_disk(one_block);
    let before = kv.pool().storage_bytes();
    let r = kv
        .reclaim(
            u64::MAX,
            Some(&store),
            Compression::None,
            &Weights::default(),
            &Rates::default(),
        )
        .unwrap();
    assert_eq!(r.decisions.len(), 1, "one spill fit: {r:?}");
    assert!(matches!(r.spill_failure, Some(KvError::Disk(_))), "{r:?}");
    assert_eq!(kv.pool().tier_counts(), [0, 0, 2, 1]);
    assert_eq!(
        before - kv.pool().storage_bytes(),
        r.decisions[0].bytes_freed
    );
    kv.check_invariants();
    // Without a store nothing more can give, and nothing fails.
    let r = kv
        .reclaim(
            u64::MAX,
            None,
            Compression::None,
            &Weights::default(),
            &Rates::default(),
        )
        .unwrap();
    assert!(r.decisions.is_empty() && r.spill_failure.is_none());
}

/// Writes a chain of `n` blocks of `len` bytes under keys `base..base + n`, each linked
/// to the one before.
fn chain(store: &BlockStore, base: u64, n: u32, len: usize) {
    for d in 0..n {
        let key = base + u64::from(d);
        store.put(key, &vec![d as u8; len]).unwrap();
        store.link(
            key,
            Link {
                parent: d.checked_sub(1).map(|p| base + u64::from(p)),
                depth: d,
            },
        );
    }
}

/// Issue 13, finding 5 (the cap): the store is trimmed to its cap in the eviction
/// score's order, least valuable first, from the ends of chains so no kept block loses
/// its parent; a block this cache spilled there is never removed; the root's other
/// directories count toward the same cap.
#[test]
fn finding5_the_store_is_trimmed_to_its_cap_least_valuable_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
    let other = BlockStore::open(dir.path(), DIGEST + 1, Compression::None).unwrap();
    let len = 1000;
    let file = (len + kvdisk::HEADER_LEN) as u64;
    chain(&store, 100, 6, len); // old, never read again
    chain(&other, 300, 4, len); // another model's: old too
    // Long enough that the two old chains' write times are close beside the gap.
    std::thread::sleep(std::time::Duration::from_millis(600));
    chain(&store, 200, 6, len); // read back often
    for _ in 0..3 {
        for k in 200..206 {
            store.get(k).unwrap().unwrap();
        }
    }
    drop(other);
    let siblings = store.siblings();
    assert_eq!(siblings.len(), 1);
    let kv = KvCache::new(layout(), 4);
    let cap = 8 * file;
    let t = kv
        .trim_store(
            &store,
            &siblings,
            cap,
            &Weights::default(),
            &Rates::default(),
        )
        .unwrap();
    assert_eq!(t.blocks_removed, 8);
    assert_eq!(t.bytes_left, cap);
    drop(siblings);
    let mut left: Vec<u64> = store.keys().unwrap();
    let sib = BlockStore::open(dir.path(), DIGEST + 1, Compression::None).unwrap();
    left.extend(sib.keys().unwrap());
    left.sort_unstable();
    // The often-read chain stays whole; the others shrank from their ends.
    assert_eq!(left, vec![100, 101, 200, 201, 202, 203, 204, 205]);
    // Nothing kept is orphaned.
    let kept: HashSet<u64> = left.iter().copied().collect();
    for e in store.entries().unwrap() {
        if let Some(p) = e.link.parent {
            assert!(kept.contains(&p), "{} kept without its parent {p}", e.key);
        }
    }
    // Under the cap: nothing to do.
    let t = kv
        .trim_store(&store, &[], cap, &Weights::default(), &Rates::default())
        .unwrap();
    assert_eq!((t.blocks_removed, t.bytes_left), (0, 8 * file));
}

#[test]
fn a_block_spilled_by_this_cache_is_never_trimmed() {
    let l = layout();
    let mut kv = KvCache::new(l, 8);
    let dir = tempfile::tempdir().unwrap();
    let store = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
    let a = kv.seq_new();
    append(&mut kv, a, &(0..2 * BT as u32).collect::<Vec<_>>(), 0).unwrap();
    let ids = kv.seq_blocks(a).unwrap().to_vec();
    for (i, &id) in ids.iter().enumerate() {
        kv.pool_mut().spill(id, &store, 7 + i as u64).unwrap();
    }
    chain(&store, 500, 3, 10);
    let t = kv
        .trim_store(&store, &[], 0, &Weights::default(), &Rates::default())
        .unwrap();
    assert_eq!(t.blocks_removed, 3);
    assert_eq!(store.keys().unwrap(), vec![7, 8]);
    assert_eq!(kv.pool().tier_counts()[Tier::Disk as usize], 2);
    kv.seq_prepare(a, Some(&store)).unwrap();
    assert_eq!(store.keys().unwrap(), Vec::<u64>::new());
}

/// Issue 13, finding 5: a full disk failed the run at the prompt's blocks. Persisting
/// now stops at the first failed write, keeps what was written and says why.
#[test]
fn finding5_a_full_disk_stops_persist_with_the_blocks_written_so_far() {
    let mut kv = KvCache::new(layout(), 32);
    let dir = tempfile::tempdir().unwrap();
    let store = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
    let toks: Vec<u32> = (0..5 * BT as u32).collect();
    let a = kv.seq_new();
    append(&mut kv, a, &toks, 0).unwrap();
    kv.seq_publish(a, &toks, DIGEST, KvFormat::F16).unwrap();
    let file = layout().block_bytes_in(KvFormat::F16) + 3 + kvdisk::HEADER_LEN as u64;
    store.simulate_full_disk(2 * file + 10);
    let p = kv.seq_persist(a, &store, KvFormat::F16).unwrap();
    assert_eq!(p.written, 2);
    assert!(
        matches!(p.failure, Some(KvError::Disk(ref e)) if e.contains("write")),
        "{p:?}"
    );
    assert_eq!(store.keys().unwrap().len(), 2);
    let mut fresh = KvCache::new(layout(), 32);
    let c = fresh.seq_new();
    assert_eq!(
        fresh
            .seq_attach_from_disk(c, &toks, toks.len(), &rule(KvFormat::F16), &store)
            .unwrap(),
        32
    );
}

/// A published block that pressure demoted is not the bytes its hash stands for any
/// more: a new sequence computing the same prefix neither switches to it nor is it
/// attached; the exact block takes its place in the index, in RAM and when loaded from
/// disk, and the index stays consistent.
#[test]
fn finding1_a_block_demoted_under_pressure_gives_up_its_place_in_the_index() {
    let mut kv = KvCache::new(layout(), 64);
    let dir = tempfile::tempdir().unwrap();
    let store = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
    let toks: Vec<u32> = (0..4 * BT as u32).map(|i| i * 3 + 1).collect();
    let f16 = rule(KvFormat::F16);
    let a = kv.seq_new();
    append(&mut kv, a, &toks, 0).unwrap();
    kv.seq_publish(a, &toks, DIGEST, KvFormat::F16).unwrap();
    let a_blocks = kv.seq_blocks(a).unwrap().to_vec();
    // Pressure demotes A's second block.
    kv.pool_mut().set_format(a_blocks[1], KvFormat::Q8).unwrap();
    // B attaches up to it, computes the rest, publishes: the exact block takes over.
    let b = kv.seq_new();
    assert_eq!(
        kv.seq_attach_prefix(b, &toks, toks.len(), &f16).unwrap(),
        BT
    );
    append(&mut kv, b, &toks[BT..], BT).unwrap();
    kv.seq_publish(b, &toks, DIGEST, KvFormat::F16).unwrap();
    let b_blocks = kv.seq_blocks(b).unwrap().to_vec();
    assert_eq!(b_blocks[0], a_blocks[0]);
    assert_ne!(b_blocks[1], a_blocks[1], "switched to the demoted block");
    assert_eq!(
        &b_blocks[2..],
        &a_blocks[2..],
        "later exact blocks are shared"
    );
    assert_eq!(kv.pool().meta(a_blocks[1]).hash, None);
    for &id in &b_blocks {
        assert_eq!(kv.pool().meta(id).format, KvFormat::F16);
    }
    kv.check_invariants();
    // A's chain through the block that lost its hash is not extended from a wrong parent.
    let more: Vec<u32> = (0..BT as u32).collect();
    kv.seq_truncate(a, 2 * BT).unwrap();
    append(&mut kv, a, &more, 2 * BT).unwrap();
    let mut a_toks = toks[..2 * BT].to_vec();
    a_toks.extend(&more);
    kv.seq_publish(a, &a_toks, DIGEST, KvFormat::F16).unwrap();
    let a2 = kv.seq_blocks(a).unwrap()[2];
    assert_eq!(
        kv.pool().meta(a2).hash,
        None,
        "hashed after a block without a hash"
    );
    kv.check_invariants();

    // On disk: the exact blocks are stored; a cache whose index holds a demoted block
    // under the same hash loads the stored one in its place.
    assert_eq!(kv.seq_persist(b, &store, KvFormat::F16).unwrap().written, 4);
    let mut other = KvCache::new(layout(), 64);
    let c = other.seq_new();
    append(&mut other, c, &toks, 0).unwrap();
    other.seq_publish(c, &toks, DIGEST, KvFormat::F16).unwrap();
    let c_blocks = other.seq_blocks(c).unwrap().to_vec();
    other
        .pool_mut()
        .set_format(c_blocks[0], KvFormat::Q4)
        .unwrap();
    let d = other.seq_new();
    assert_eq!(
        other
            .seq_attach_from_disk(d, &toks, toks.len() - 1, &f16, &store)
            .unwrap(),
        3 * BT
    );
    let d_blocks = other.seq_blocks(d).unwrap().to_vec();
    assert_ne!(
        d_blocks[0], c_blocks[0],
        "loaded from disk, not the demoted one"
    );
    assert_eq!(
        &d_blocks[1..],
        &c_blocks[1..3],
        "exact blocks in RAM are taken as they are"
    );
    assert_eq!(other.pool().meta(c_blocks[0]).hash, None);
    other.check_invariants();
}
