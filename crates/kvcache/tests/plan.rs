//! Plan, then apply: a batch's growth is answered before anything changes, "no room" is a
//! value carrying the shortfall, and applying is the only mutation. Checked on cases
//! (copy on write of a shared partial block, promotion of a quantized one, stale plans,
//! the ledger) and against a naive reference under random operations.

use budget::{BudgetBuilder, Bytes, Policy};
use kvcache::{KvCache, KvError, KvFormat, KvLayout, NoRoom, PlanError, ReuseRule, SeqId};
use proptest::prelude::*;

const BT: usize = 4;
const DIGEST: u64 = 7;

fn layout() -> KvLayout {
    KvLayout::new(2, 1, 32, BT).unwrap()
}

/// Writes a recognisable row for every position in `from..to` of `seq`.
fn fill(kv: &mut KvCache, seq: SeqId, from: usize, to: usize) {
    for pos in from..to {
        for layer in 0..2 {
            let k = vec![(pos * 10 + layer) as u16; 32];
            let v = vec![(pos * 10 + layer + 5) as u16; 32];
            kv.write(seq, layer, pos, &k, &v).unwrap();
        }
    }
}

/// Each sequence's id, length and block table.
type Tables = Vec<(SeqId, usize, Vec<kvcache::BlockId>)>;

/// The state a plan must not touch.
fn snapshot(kv: &KvCache) -> (Tables, usize, u64) {
    let seqs = kv
        .seq_ids()
        .into_iter()
        .map(|s| {
            (
                s,
                kv.seq_len(s).unwrap(),
                kv.seq_blocks(s).unwrap().to_vec(),
            )
        })
        .collect();
    (seqs, kv.pool().used_blocks(), kv.pool().storage_bytes())
}

#[test]
fn a_plan_changes_nothing_and_apply_grows_every_sequence_at_once() {
    let mut kv = KvCache::new(layout(), 10);
    let (a, b) = (kv.seq_new(), kv.seq_new());
    kv.seq_reserve(a, 3).unwrap();
    let before = snapshot(&kv);
    let plan = kv.plan(&[(a, 6), (b, 5), (a, 1)]).unwrap();
    assert_eq!(snapshot(&kv), before, "planning mutated the cache");
    // a: 3 → 10 tokens = 3 blocks (has 1); b: 0 → 5 = 2 blocks.
    assert_eq!(plan.blocks(), 4);
    assert_eq!(plan.bytes(), 4 * layout().block_bytes());
    kv.apply(plan).unwrap();
    assert_eq!(kv.seq_len(a).unwrap(), 10);
    assert_eq!(kv.seq_len(b).unwrap(), 5);
    assert_eq!(kv.pool().used_blocks(), 5);
    kv.check_invariants();
}

#[test]
fn no_room_is_a_value_with_the_block_shortfall_and_nothing_changes() {
    let mut kv = KvCache::new(layout(), 4);
    let (a, b) = (kv.seq_new(), kv.seq_new());
    kv.seq_reserve(a, 8).unwrap();
    let before = snapshot(&kv);
    let e = kv.plan(&[(a, 4), (b, 8)]).unwrap_err();
    let PlanError::NoRoom(no) = e else {
        panic!("expected NoRoom, got {e:?}")
    };
    assert_eq!(
        (no.needed_blocks, no.free_blocks, no.short_blocks()),
        (3, 2, 1)
    );
    assert_eq!(no.available_bytes, None);
    assert_eq!(snapshot(&kv), before);
    assert!(kv.plan(&[(a, 4), (b, 4)]).is_ok());
}

#[test]
fn no_room_carries_the_byte_shortfall_against_the_ledger() {
    let bb = layout().block_bytes();
    let budget = BudgetBuilder::new(Bytes(3 * bb))
        .pool("kv", Policy::Tiered, Bytes(3 * bb))
        .build()
        .unwrap();
    let pool = budget.pool_id("kv").unwrap();
    let mut kv = KvCache::new(layout(), 100);
    kv.pool_mut()
        .set_reservation(budget.reserve(pool, Bytes(0)).unwrap())
        .unwrap();
    let a = kv.seq_new();
    kv.apply(kv.plan(&[(a, 8)]).unwrap()).unwrap();
    assert_eq!(budget.used(pool).0, 2 * bb);
    let Err(PlanError::NoRoom(no)) = kv.plan(&[(a, 8)]) else {
        panic!("two more blocks do not fit the ledger")
    };
    assert_eq!(no.needed_bytes, 2 * bb);
    assert_eq!(no.available_bytes, Some(bb));
    assert_eq!(no.short_bytes(), bb);
    assert_eq!(no.short_blocks(), 0);
    // A freed block keeps its storage: reusing it costs the ledger nothing.
    let b = kv.seq_new();
    kv.apply(kv.plan(&[(b, 4)]).unwrap()).unwrap();
    kv.seq_remove(b);
    assert_eq!(kv.plan(&[(a, 4)]).unwrap().bytes(), 0);
    assert_eq!(budget.used(pool).0, 3 * bb);
    kv.check_invariants();
}

#[test]
fn a_shared_partial_block_is_copied_before_it_is_written() {
    let mut kv = KvCache::new(layout(), 10);
    let a = kv.seq_new();
    let toks: Vec<u32> = (0..8).collect();
    kv.seq_reserve(a, 8).unwrap();
    fill(&mut kv, a, 0, 8);
    kv.seq_publish(a, &toks, DIGEST, KvFormat::F16).unwrap();
    let b = kv.seq_new();
    let rule = ReuseRule {
        digest: DIGEST,
        format: KvFormat::F16,
        align_tokens: 4,
    };
    assert_eq!(kv.seq_attach_prefix(b, &toks, 8, &rule).unwrap(), 8);
    // Rewind b into its shared second block: the block is now partial and shared.
    kv.seq_truncate(b, 6).unwrap();
    let shared = kv.seq_blocks(b).unwrap()[1];
    assert_eq!(kv.pool().meta(shared).ref_count, 2);
    assert!(matches!(
        kv.write(b, 0, 5, &[0; 32], &[0; 32]),
        Err(KvError::SharedBlock(_))
    ));
    let plan = kv.plan(&[(b, 3)]).unwrap();
    // One copy, plus one block for positions 8..9.
    assert_eq!((plan.copies(), plan.blocks()), (1, 2));
    kv.apply(plan).unwrap();
    let own = kv.seq_blocks(b).unwrap()[1];
    assert_ne!(own, shared);
    assert_eq!(kv.pool().meta(shared).ref_count, 1);
    assert_eq!(kv.pool().data(own), kv.pool().data(shared));
    fill(&mut kv, b, 7, 9);
    kv.write(b, 0, 6, &[1; 32], &[1; 32]).unwrap();
    // a's block is untouched by b's writes.
    let l = layout();
    let row = |kv: &KvCache, id, t: usize| kv.pool().data(id)[l.k_base(0) + t * 32];
    assert_eq!(row(&kv, shared, 2), 60);
    assert_eq!(row(&kv, own, 2), 1);
    kv.check_invariants();
}

#[test]
fn a_quantized_partial_block_is_promoted_before_it_is_written() {
    let mut kv = KvCache::new(layout(), 10);
    let a = kv.seq_new();
    kv.seq_reserve(a, 8).unwrap();
    fill(&mut kv, a, 0, 8);
    let last = kv.seq_blocks(a).unwrap()[1];
    kv.pool_mut().set_format(last, KvFormat::Q8).unwrap();
    kv.seq_truncate(a, 6).unwrap();
    assert!(matches!(
        kv.write(a, 0, 5, &[0; 32], &[0; 32]),
        Err(KvError::NotWritable(_))
    ));
    let plan = kv.plan(&[(a, 1)]).unwrap();
    let bb = layout().block_bytes();
    assert_eq!(plan.blocks(), 0);
    assert_eq!(
        plan.bytes(),
        bb - layout().block_bytes_in(KvFormat::Q8),
        "promotion's growth"
    );
    kv.apply(plan).unwrap();
    assert_eq!(kv.pool().meta(last).format, KvFormat::F16);
    fill(&mut kv, a, 6, 7);
    kv.check_invariants();
}

#[test]
fn a_plan_made_before_a_change_is_refused() {
    let mut kv = KvCache::new(layout(), 10);
    let a = kv.seq_new();
    let plan = kv.plan(&[(a, 5)]).unwrap();
    kv.seq_reserve(a, 2).unwrap();
    assert_eq!(kv.apply(plan), Err(KvError::StalePlan(a)));
    assert_eq!(kv.seq_len(a).unwrap(), 2);
    let plan = kv.plan(&[(a, 5)]).unwrap();
    kv.seq_remove(a);
    assert_eq!(kv.apply(plan), Err(KvError::UnknownSeq(a)));
    kv.check_invariants();
}

#[test]
fn unknown_sequences_are_an_error_not_no_room() {
    let kv = KvCache::new(layout(), 10);
    assert_eq!(
        kv.plan(&[(SeqId(9), 1)]),
        Err(PlanError::Kv(KvError::UnknownSeq(SeqId(9))))
    );
}

#[derive(Debug, Clone)]
enum Op {
    New,
    /// Grow these (sequence index, tokens) together.
    Grow(Vec<(usize, usize)>),
    Fork(usize),
    Remove(usize),
    Truncate(usize, usize),
    Trim,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::New),
        proptest::collection::vec((0..8usize, 0..14usize), 1..5).prop_map(Op::Grow),
        (0..8usize).prop_map(Op::Fork),
        (0..8usize).prop_map(Op::Remove),
        (0..8usize, 0..30usize).prop_map(|(s, n)| Op::Truncate(s, n)),
        Just(Op::Trim),
    ]
}

proptest! {
    /// Random batches of growths, forks, removals and rewinds against a naive reference
    /// of sequence lengths and shared blocks: a plan succeeds exactly when the reference
    /// says the blocks (appended ones plus copies of shared partial blocks) fit, lengths
    /// agree after every step, applying never fails after a successful plan, and every
    /// invariant holds.
    #[test]
    fn plan_and_apply_match_a_naive_reference(ops in proptest::collection::vec(op(), 1..80)) {
        let cap = 16;
        let mut kv = KvCache::new(layout(), cap);
        let mut live: Vec<(SeqId, usize)> = Vec::new();
        for op in ops {
            match op {
                Op::New => live.push((kv.seq_new(), 0)),
                Op::Grow(gs) if !live.is_empty() => {
                    let n = live.len();
                    let grows: Vec<(SeqId, usize)> =
                        gs.iter().map(|&(i, t)| (live[i % n].0, t)).collect();
                    // Naive: per sequence, total growth; blocks appended, plus one copy
                    // if its partial last block is shared with another table.
                    let mut want_blocks = 0;
                    let mut totals: Vec<usize> = vec![0; n];
                    for &(i, t) in &gs {
                        totals[i % n] += t;
                    }
                    for (j, &t) in totals.iter().enumerate() {
                        if t == 0 {
                            continue;
                        }
                        let (s, len) = live[j];
                        want_blocks += (len + t).div_ceil(BT) - len.div_ceil(BT);
                        let table = kv.seq_blocks(s).unwrap();
                        if len % BT != 0 {
                            let last = *table.last().unwrap();
                            let holders = live
                                .iter()
                                .filter(|(o, _)| kv.seq_blocks(*o).unwrap().contains(&last))
                                .count();
                            want_blocks += usize::from(holders > 1);
                        }
                    }
                    let free = kv.pool().free_blocks();
                    match kv.plan(&grows) {
                        Ok(p) => {
                            prop_assert!(want_blocks <= free);
                            prop_assert_eq!(p.blocks(), want_blocks);
                            kv.apply(p).unwrap();
                            for (j, &t) in totals.iter().enumerate() {
                                live[j].1 += t;
                            }
                        }
                        Err(PlanError::NoRoom(NoRoom { needed_blocks, free_blocks, .. })) => {
                            prop_assert!(want_blocks > free);
                            prop_assert_eq!((needed_blocks, free_blocks), (want_blocks, free));
                        }
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Fork(i) if !live.is_empty() => {
                    let (s, len) = live[i % live.len()];
                    if let Ok(f) = kv.seq_copy(s) {
                        live.push((f, len));
                    }
                }
                Op::Remove(i) if !live.is_empty() => {
                    let (s, _) = live.remove(i % live.len());
                    kv.seq_remove(s);
                }
                Op::Truncate(i, n) if !live.is_empty() => {
                    let m = live.len();
                    let (s, len) = &mut live[m.min(i % m)];
                    kv.seq_truncate(*s, n).unwrap();
                    *len = (*len).min(n);
                }
                Op::Trim => kv.pool_mut().trim(),
                _ => {}
            }
            kv.check_invariants();
            for (s, len) in &live {
                prop_assert_eq!(kv.seq_len(*s).unwrap(), *len);
            }
        }
    }
}
