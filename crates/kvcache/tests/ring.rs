//! The ring (`KvCache::set_ring`): a sequence's windowed layers hold exactly their
//! window — a new block's windowed rows go into the block one window earlier, replacing
//! rows as they leave every window — and every row a query can see reads back as
//! written, through decode steps, prefill chunks, truncation, fork and removal.

use budget::{BudgetBuilder, Bytes, Policy};
use kvcache::{KvCache, KvError, SeqId};

mod common;

use common::{BT, HD, WINDOW, WINDOWED, bits, layout};

fn row(pos: usize, layer: usize, kv: usize) -> Vec<u16> {
    (0..HD).map(|d| bits(pos, layer, kv, d)).collect()
}

/// A budgeted cache (its ledger must follow its storage), ring on or off.
fn cache(ring: bool) -> (KvCache, budget::Budget) {
    let budget = BudgetBuilder::new(Bytes(1 << 30))
        .pool("kv", Policy::Tiered, Bytes(1 << 30))
        .build()
        .unwrap();
    let p = budget.pool_id("kv").unwrap();
    let mut kv = KvCache::new(layout(), 256);
    kv.pool_mut()
        .set_reservation(budget.reserve(p, Bytes(0)).unwrap())
        .unwrap();
    kv.set_ring(ring);
    (kv, budget)
}

/// Appends positions `from..to` as an engine does: global layers first, then (after
/// "attention", which for several tokens reads them from scratch) the windowed rows in
/// position order; then reports the next query.
fn step(kv: &mut KvCache, seq: SeqId, from: usize, to: usize) {
    kv.seq_reserve(seq, to).unwrap();
    write_step(kv, seq, from, to);
}

/// The writes and the report of [`step`], after the growth.
fn write_step(kv: &mut KvCache, seq: SeqId, from: usize, to: usize) {
    for windowed in [false, true] {
        for pos in from..to {
            for layer in (0..6).filter(|&l| WINDOWED[l] == windowed) {
                kv.write(seq, layer, pos, &row(pos, layer, 0), &row(pos, layer, 1))
                    .unwrap();
            }
        }
    }
    kv.seq_thin(seq, to).unwrap();
    kv.check_invariants();
}

/// Every row a query at `len` reads (all global rows, the windowed ones in its window)
/// holds what was written, both through `read` and through the views attention gets.
fn reads_back(kv: &KvCache, seq: SeqId, len: usize) {
    let l = *kv.layout();
    let (mut k, mut v) = (vec![0u16; HD], vec![0u16; HD]);
    for layer in 0..6 {
        let mut views = Vec::new();
        kv.layer_views(seq, layer, &mut views).unwrap();
        let from = if WINDOWED[layer] {
            (len + 1).saturating_sub(WINDOW)
        } else {
            0
        };
        for pos in from..len {
            kv.read(seq, layer, pos, &mut k, &mut v).unwrap();
            assert_eq!(k, row(pos, layer, 0), "layer {layer} pos {pos} of {len}");
            assert_eq!(v, row(pos, layer, 1), "layer {layer} pos {pos} of {len}");
            let kvcache::KvBlock::F16(d) = views[pos / BT] else {
                panic!("hot blocks")
            };
            assert_eq!(d[l.k_base(layer) + (pos % BT) * HD], bits(pos, layer, 0, 0));
            assert_eq!(
                d[l.v_base(layer) + (pos % BT) * HD + 1],
                bits(pos, layer, 1, 1)
            );
        }
    }
}

/// Blocks of the sequence holding windowed rows (whole ones).
fn whole_blocks(kv: &KvCache, seq: SeqId) -> usize {
    kv.seq_blocks(seq)
        .unwrap()
        .iter()
        .filter(|&&id| !kv.pool().meta(id).thin)
        .count()
}

#[test]
fn decode_holds_exactly_the_window_and_reads_back() {
    let (mut kv, _b) = cache(true);
    let s = kv.seq_new();
    for pos in 0..40 {
        step(&mut kv, s, pos, pos + 1);
        reads_back(&kv, s, pos + 1);
        // Past the first window: the window's blocks, never one more.
        if pos + 1 >= WINDOW {
            assert_eq!(whole_blocks(&kv, s), WINDOW / BT, "at {}", pos + 1);
        }
        assert_eq!(kv.pool().reserved(), Some(kv.pool().storage_bytes()));
    }
    // The same tokens without the ring hold one block more whenever the last is partial.
    let (mut off, _b2) = cache(false);
    let t = off.seq_new();
    // At 38 the window (31..=38) touches three blocks.
    for pos in 0..38 {
        step(&mut off, t, pos, pos + 1);
    }
    reads_back(&off, t, 38);
    assert_eq!(whole_blocks(&off, t), WINDOW / BT + 1);
    assert!(kv.pool().storage_bytes() < off.pool().storage_bytes() + 1);
}

#[test]
fn prefill_chunks_of_every_length_read_back() {
    for chunk in [2, 3, 4, 5, 8, 9, 13] {
        let (mut kv, _b) = cache(true);
        let s = kv.seq_new();
        let mut len = 0;
        while len < 50 {
            let to = len + chunk;
            step(&mut kv, s, len, to);
            len = to;
            reads_back(&kv, s, len);
            let whole = whole_blocks(&kv, s);
            assert!(
                whole <= WINDOW / BT,
                "chunk {chunk}: {whole} whole blocks at {len}"
            );
            // Decode steps between chunks.
            step(&mut kv, s, len, len + 1);
            len += 1;
            reads_back(&kv, s, len);
        }
    }
}

#[test]
fn truncation_fork_and_removal_keep_rows_sound() {
    let (mut kv, _b) = cache(true);
    let s = kv.seq_new();
    for pos in 0..22 {
        step(&mut kv, s, pos, pos + 1);
    }
    // 22 = 5 blocks + 2: the last block is a guest of block 3, which lent 2 rows.
    // Dropping one token keeps every row a query at 21 sees.
    assert_eq!(kv.seq_truncate(s, 21).unwrap(), 21);
    reads_back(&kv, s, 21);
    step(&mut kv, s, 21, 22);
    step(&mut kv, s, 22, 23);
    // Going further back would show the host's lent rows to the query: cut to the host.
    let kept = kv.seq_truncate(s, 20).unwrap();
    assert!(kept <= 20);
    kv.check_invariants();
    reads_back(&kv, s, kept);
    for pos in kept..30 {
        step(&mut kv, s, pos, pos + 1);
    }
    reads_back(&kv, s, 30);

    // A fork while the last block is a guest: both read back, and both go on.
    let f = kv.seq_copy(s).unwrap();
    kv.check_invariants();
    reads_back(&kv, s, 30);
    reads_back(&kv, f, 30);
    for pos in 30..37 {
        step(&mut kv, s, pos, pos + 1);
        step(&mut kv, f, pos, pos + 1);
    }
    reads_back(&kv, s, 37);
    reads_back(&kv, f, 37);
    kv.seq_remove(s);
    kv.check_invariants();
    reads_back(&kv, f, 37);
    kv.seq_remove(f);
    kv.check_invariants();
    assert_eq!(kv.pool().used_blocks(), 0);
}

#[test]
fn a_thin_block_out_of_the_ring_still_refuses_writes() {
    let (mut kv, _b) = cache(true);
    let s = kv.seq_new();
    for pos in 0..20 {
        step(&mut kv, s, pos, pos + 1);
    }
    let first = kv.seq_blocks(s).unwrap()[0];
    assert!(kv.pool().meta(first).thin);
    assert_eq!(
        kv.write(s, 0, 1, &row(1, 0, 0), &row(1, 0, 1)),
        Err(KvError::Thinned(first))
    );
}

mod ops {
    //! Random interleavings of every verb that meets the ring — steps of any length,
    //! truncation, fork, removal, publishing and prefix reuse by another sequence — keep
    //! the cache's invariants, and every sequence reads back every row its next query
    //! can see (token ids are positions, so any two sequences agree on what a shared
    //! block must hold).
    use super::*;
    use kvcache::{KvFormat, ReuseRule};
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Step(usize, usize),
        Truncate(usize, usize),
        Fork(usize),
        Remove(usize),
        Reuse(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..4usize, 1..14usize).prop_map(|(s, n)| Op::Step(s, n)),
            1 => (0..4usize, 0..10usize).prop_map(|(s, n)| Op::Truncate(s, n)),
            1 => (0..4usize).prop_map(Op::Fork),
            1 => (0..4usize).prop_map(Op::Remove),
            1 => (0..4usize).prop_map(Op::Reuse),
        ]
    }

    const RULE: ReuseRule = ReuseRule {
        digest: 0x5EED,
        format: KvFormat::F16,
        align_tokens: BT,
    };

    fn publish(kv: &mut KvCache, s: SeqId) {
        let len = kv.seq_len(s).unwrap();
        let tokens: Vec<u32> = (0..len as u32).collect();
        kv.seq_publish(s, &tokens, RULE.digest, RULE.format)
            .unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn every_verb_keeps_what_a_query_sees(ops in proptest::collection::vec(op(), 1..60)) {
            let (mut kv, _b) = cache(true);
            let mut live = vec![kv.seq_new()];
            for op in ops {
                match op {
                    Op::Step(i, n) => {
                        let s = live[i % live.len()];
                        let len = kv.seq_len(s).unwrap();
                        // The batched engine's growth: a shared partial block is copied.
                        let plan = kv.plan(&[(s, n)]).unwrap();
                        kv.apply(plan).unwrap();
                        write_step(&mut kv, s, len, len + n);
                        publish(&mut kv, s);
                    }
                    Op::Truncate(i, back) => {
                        let s = live[i % live.len()];
                        let len = kv.seq_len(s).unwrap();
                        let kept = kv.seq_truncate(s, len.saturating_sub(back)).unwrap();
                        prop_assert!(kept <= len.saturating_sub(back));
                        kv.seq_thin(s, kept).unwrap();
                    }
                    Op::Fork(i) => {
                        let s = live[i % live.len()];
                        live.push(kv.seq_copy(s).unwrap());
                    }
                    Op::Remove(i) if live.len() > 1 => {
                        kv.seq_remove(live.remove(i % live.len()));
                    }
                    Op::Remove(_) => {}
                    Op::Reuse(i) => {
                        let s = live[i % live.len()];
                        let len = kv.seq_len(s).unwrap();
                        let tokens: Vec<u32> = (0..len as u32).collect();
                        let t = kv.seq_new();
                        let got = kv.seq_attach_prefix(t, &tokens, len, &RULE).unwrap();
                        prop_assert!(got <= len);
                        kv.seq_thin(t, got).unwrap();
                        live.push(t);
                    }
                }
                kv.check_invariants();
                for &s in &live {
                    reads_back(&kv, s, kv.seq_len(s).unwrap());
                }
                prop_assert_eq!(kv.pool().reserved(), Some(kv.pool().storage_bytes()));
            }
        }
    }
}
