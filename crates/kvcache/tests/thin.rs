//! Sliding-window layers keep only their window: blocks whose windowed layers no query
//! will see again are thinned to their global layers, and every verb of the cache —
//! sharing, reuse, truncation, tiers, disk — keeps that sound.

use budget::{BudgetBuilder, Bytes, Policy};
use kvcache::{
    BlockStore, Compression, KvBlock, KvCache, KvError, KvFormat, KvLayout, KvType, ReuseRule,
    SeqId,
};

mod common;

use common::{BT, HD, WINDOW, WINDOWED, bits, layout};

const DIGEST: u64 = 0x5ADE;

fn write(kv: &mut KvCache, seq: SeqId, from: usize, to: usize) {
    kv.seq_reserve(seq, to).unwrap();
    for pos in from..to {
        for layer in 0..6 {
            let k: Vec<u16> = (0..HD).map(|d| bits(pos, layer, 0, d)).collect();
            let v: Vec<u16> = (0..HD).map(|d| bits(pos, layer, 1, d)).collect();
            kv.write(seq, layer, pos, &k, &v).unwrap();
        }
    }
}

/// An unbudgeted cache holding one sequence of 40 written tokens (10 blocks).
fn forty_tokens() -> (KvCache, SeqId) {
    let mut kv = KvCache::new(layout(), 64);
    let s = kv.seq_new();
    write(&mut kv, s, 0, 40);
    (kv, s)
}

/// As [`forty_tokens`], in a cache whose ledger reservation must follow its storage.
fn budgeted_forty_tokens() -> (KvCache, SeqId, budget::Budget, budget::PoolId) {
    let budget = BudgetBuilder::new(Bytes(1 << 30))
        .pool("kv", Policy::Tiered, Bytes(1 << 30))
        .build()
        .unwrap();
    let p = budget.pool_id("kv").unwrap();
    let mut kv = KvCache::new(layout(), 64);
    kv.pool_mut()
        .set_reservation(budget.reserve(p, Bytes(0)).unwrap())
        .unwrap();
    let s = kv.seq_new();
    write(&mut kv, s, 0, 40);
    (kv, s, budget, p)
}

/// Checks that a (thin or whole) f16 block holds what was written for block `b`.
fn holds_written(kv: &KvCache, id: kvcache::BlockId, b: usize) {
    let l = *kv.layout();
    let d = kv.pool().data(id);
    let thin = kv.pool().meta(id).thin;
    for layer in (0..6).filter(|&la| !thin || !WINDOWED[la]) {
        for t in 0..BT {
            let pos = b * BT + t;
            assert_eq!(d[l.k_base(layer) + t * HD], bits(pos, layer, 0, 0));
            assert_eq!(d[l.v_base(layer) + t * HD + 3], bits(pos, layer, 1, 3));
        }
    }
}

/// The bytes of a resident quantized block.
fn quant_bytes(kv: &KvCache, id: kvcache::BlockId) -> Vec<u8> {
    match kv.pool().view(id).unwrap() {
        KvBlock::Quant(_, b) => b.to_vec(),
        _ => panic!("not quantized"),
    }
}

#[test]
fn global_layers_take_the_first_slots() {
    let l = layout();
    let slots: Vec<usize> = (0..6).map(|la| l.slot(la)).collect();
    assert_eq!(slots, [2, 3, 0, 4, 5, 1]);
    assert_eq!(
        (l.n_global(), l.n_windowed(), l.window()),
        (2, 4, Some(WINDOW))
    );
    assert_eq!(
        l.thin_geom().block_bytes(KvFormat::F16) as u64 * 3,
        l.block_bytes()
    );
    // No windowed layer: the plain layout.
    let plain = KvLayout::new(6, 1, HD, BT).unwrap();
    assert_eq!(plain.with_window(8, &[false; 6]).unwrap(), plain);
    assert!(plain.with_window(8, &[true; 5]).is_err());
    assert!(plain.with_window(0, &WINDOWED).is_err());
}

#[test]
fn thinning_frees_the_windowed_layers_of_blocks_out_of_sight() {
    let (mut kv, s, budget, p) = budgeted_forty_tokens();
    let l = *kv.layout();
    let whole = kv.pool().storage_bytes();
    assert_eq!(whole, 10 * l.block_bytes());
    let freed = kv.seq_thin(s, 40).unwrap();
    // A query at 40 sees keys 33..=40: blocks 0..=7 (tokens 0..32) are out of sight.
    let per_block = l.windowed_geom().block_bytes(KvFormat::F16) as u64;
    assert_eq!(freed, 8 * per_block);
    assert_eq!(kv.pool().storage_bytes(), whole - freed);
    assert_eq!(budget.used(p).0, kv.pool().storage_bytes());
    let blocks = kv.seq_blocks(s).unwrap().to_vec();
    for (b, &id) in blocks.iter().enumerate() {
        assert_eq!(kv.pool().meta(id).thin, b < 8, "block {b}");
        holds_written(&kv, id, b);
    }
    assert_eq!(kv.seq_first_whole(s).unwrap(), 8);
    // Thinning again frees nothing; a thin block is never written again.
    assert_eq!(kv.seq_thin(s, 40).unwrap(), 0);
    let row = vec![0u16; HD];
    assert_eq!(
        kv.write(s, 2, 0, &row, &row),
        Err(KvError::Thinned(blocks[0]))
    );
    kv.check_invariants();
    // Released thin blocks are not kept for reuse: the ledger falls to zero.
    kv.seq_remove(s);
    kv.pool_mut().trim();
    assert_eq!(budget.used(p).0, 0);
    kv.check_invariants();
}

#[test]
fn a_shared_block_thins_only_when_every_holder_is_past_it() {
    let (mut kv, s) = forty_tokens();
    let f = kv.seq_copy(s).unwrap();
    kv.seq_truncate(f, 20).unwrap();
    // The fork's next query is at 20: it still sees blocks 3 and 4.
    kv.seq_thin(f, 20).unwrap();
    kv.seq_thin(s, 40).unwrap();
    let thin: Vec<bool> = kv
        .seq_blocks(s)
        .unwrap()
        .iter()
        .map(|&id| kv.pool().meta(id).thin)
        .collect();
    assert_eq!(
        thin,
        [
            true, true, true, false, false, true, true, true, false, false
        ]
    );
    kv.check_invariants();
    kv.seq_remove(f);
    kv.seq_thin(s, 40).unwrap();
    let blocks = kv.seq_blocks(s).unwrap().to_vec();
    assert!(blocks[..8].iter().all(|&id| kv.pool().meta(id).thin));
    kv.check_invariants();
}

#[test]
fn prefix_reuse_never_attaches_a_thin_block_where_its_window_reaches() {
    let mut kv = KvCache::new(layout(), 64);
    let tokens: Vec<u32> = (0..40).collect();
    let rule = ReuseRule {
        digest: DIGEST,
        format: KvFormat::F16,
        align_tokens: BT,
    };
    let s = kv.seq_new();
    write(&mut kv, s, 0, 40);
    kv.seq_publish(s, &tokens, DIGEST, KvFormat::F16).unwrap();
    kv.seq_thin(s, 40).unwrap();
    // All 40: the next query (at 40) sees only the whole blocks 8 and 9.
    let a = kv.seq_new();
    assert_eq!(kv.seq_attach_prefix(a, &tokens, 40, &rule).unwrap(), 40);
    kv.check_invariants();
    // Any shorter prefix would need thin blocks in its window: none is attached.
    for max in [4, 12, 24, 36, 39] {
        let b = kv.seq_new();
        assert_eq!(
            kv.seq_attach_prefix(b, &tokens, max, &rule).unwrap(),
            0,
            "{max}"
        );
        kv.seq_remove(b);
    }
    // A fresh run of the same tokens publishes whole blocks: it keeps its own (never
    // switching to the thin ones) and they take the index's place.
    let t = kv.seq_new();
    write(&mut kv, t, 0, 40);
    kv.seq_publish(t, &tokens, DIGEST, KvFormat::F16).unwrap();
    let own = kv.seq_blocks(t).unwrap().to_vec();
    assert!(own.iter().all(|&id| !kv.pool().meta(id).thin));
    kv.check_invariants();
    let c = kv.seq_new();
    assert_eq!(kv.seq_attach_prefix(c, &tokens, 24, &rule).unwrap(), 24);
    assert_eq!(kv.seq_blocks(c).unwrap(), &own[..6]);
    kv.check_invariants();
}

#[test]
fn truncating_into_a_thin_window_cuts_back_to_what_can_be_seen() {
    let (mut kv, s) = forty_tokens();
    kv.seq_thin(s, 40).unwrap();
    assert_eq!(kv.seq_truncate(s, 40).unwrap(), 40);
    // At 36 the window reaches block 7 (thin), and so on back to position 0.
    assert_eq!(kv.seq_truncate(s, 36).unwrap(), 0);
    assert_eq!(kv.seq_len(s).unwrap(), 0);
    kv.check_invariants();
    // A sink block that a shift would bring into the window is refused.
    let t = kv.seq_new();
    write(&mut kv, t, 0, 40);
    kv.seq_thin(t, 40).unwrap();
    let sink = kv.seq_blocks(t).unwrap()[0];
    assert_eq!(kv.seq_shift(t, 1, 8), Err(KvError::Thinned(sink)));
    assert_eq!(kv.seq_len(t).unwrap(), 40);
    // Dropping blocks 1..=2 keeps the sink out of sight.
    assert_eq!(kv.seq_shift(t, 1, 2).unwrap(), 8);
    kv.check_invariants();
}

#[test]
fn thin_blocks_round_trip_through_every_tier() {
    let (mut kv, s, budget, p) = budgeted_forty_tokens();
    let l = *kv.layout();
    kv.seq_thin(s, 40).unwrap();
    let id = kv.seq_blocks(s).unwrap()[1];
    let f16 = kv.pool().data(id).to_vec();
    // Demoted to int8 and int4: the thin shape in each format.
    for f in [KvFormat::Q8, KvFormat::Q4] {
        kv.pool_mut().set_format(id, f).unwrap();
        assert_eq!(
            kv.pool().block_ram_bytes(id),
            l.thin_geom().block_bytes(f) as u64
        );
        match kv.pool().view(id).unwrap() {
            KvBlock::Quant(g, b) => assert_eq!((g, b.len()), (f, l.thin_geom().block_bytes(f))),
            _ => panic!("not demoted"),
        }
        assert_eq!(budget.used(p).0, kv.pool().storage_bytes());
        kv.check_invariants();
    }
    let q4 = quant_bytes(&kv, id);
    // Compressed and back (kept as is if lz4 does not shrink it).
    kv.pool_mut().compress(id, Compression::Lz4).unwrap();
    kv.pool_mut().decompress(id).unwrap();
    assert_eq!(quant_bytes(&kv, id), q4);
    // Spilled to disk and loaded back, byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let store = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
    kv.pool_mut().spill(id, &store, 77).unwrap();
    assert_eq!(kv.pool().block_ram_bytes(id), 0);
    kv.check_invariants();
    kv.pool_mut().load(id, &store).unwrap();
    assert!(kv.pool().meta(id).thin);
    assert_eq!(quant_bytes(&kv, id), q4);
    // Promoted back to f16: the global layers within int4's error of what was written.
    kv.pool_mut().set_format(id, KvFormat::F16).unwrap();
    let back = kv.pool().data(id);
    assert_eq!(back.len(), f16.len());
    let err = back
        .iter()
        .zip(&f16)
        .map(|(&a, &b)| (half::f16::from_bits(a).to_f32() - half::f16::from_bits(b).to_f32()).abs())
        .fold(0f32, f32::max);
    assert!(err < 0.2, "{err}");
    assert_eq!(budget.used(p).0, kv.pool().storage_bytes());
    kv.check_invariants();
    // A thin block is not persisted as a reusable prefix block.
    let tokens: Vec<u32> = (0..40).collect();
    kv.seq_publish(s, &tokens, DIGEST, KvFormat::F16).unwrap();
    let done = kv.seq_persist(s, &store, KvFormat::F16).unwrap();
    assert_eq!(done.written, 2);
}

/// Reads `ctx` tokens from position 0 in micro-batches of `ubatch`, writing and thinning
/// as the engine does (the ring on, as for an all-f16 cache: global rows first, the
/// windowed ones after the step's attention), and returns the most bytes held.
fn peak_of_a_fill(l: KvLayout, ctx: usize, ubatch: usize) -> u64 {
    let mut kv = KvCache::new(l, ctx.div_ceil(BT) + 1);
    kv.set_ring(true);
    let s = kv.seq_new();
    let mut peak = 0;
    let mut at = 0;
    let row = vec![0u16; HD];
    while at < ctx {
        let end = (at + ubatch).min(ctx);
        kv.seq_reserve(s, end).unwrap();
        peak = peak.max(kv.pool().storage_bytes());
        for windowed in [false, true] {
            for pos in at..end {
                for layer in (0..l.n_layers()).filter(|&la| l.is_windowed(la) == windowed) {
                    kv.write(s, layer, pos, &row, &row).unwrap();
                }
            }
        }
        kv.seq_thin(s, end).unwrap();
        at = end;
    }
    kv.check_invariants();
    peak
}

#[test]
fn the_plan_equals_the_peak_of_a_fill_and_counts_windowed_layers_by_their_window() {
    for (window, ubatch) in [(8, 4), (8, 8), (9, 5), (16, 12), (3, 1), (40, 16)] {
        let l = KvLayout::new(6, 1, HD, BT)
            .unwrap()
            .with_window(window, &WINDOWED)
            .unwrap();
        for ctx in (1..90).chain([200, 333]) {
            assert_eq!(
                KvType::F16.seq_bytes(&l, ctx, ubatch),
                peak_of_a_fill(l, ctx, ubatch),
                "window {window} ubatch {ubatch} ctx {ctx}"
            );
        }
    }
    // Without windows: every layer at every token, as before.
    let plain = KvLayout::new(6, 1, HD, BT).unwrap();
    assert_eq!(
        KvType::F16.bytes_per_token(&plain, 1000, 8),
        plain.bytes_per_token()
    );
    // Gemma 3 270M's shape: 18 layers, a global one every sixth, window 512, one KV head
    // of 256, blocks of 16, micro-batches of 512. At ctx 8192 the global layers hold
    // every token and the windowed ones their window, 512.
    let mut pattern = [true; 18];
    for il in [5, 11, 17] {
        pattern[il] = false;
    }
    let gemma = KvLayout::new(18, 1, 256, 16)
        .unwrap()
        .with_window(512, &pattern)
        .unwrap();
    let per_layer_token = 2 * 256 * 2;
    assert_eq!(
        KvType::F16.seq_bytes(&gemma, 8192, 512),
        (3 * 8192 + 15 * 512) * per_layer_token
    );
    // The inverse: the most tokens a budget holds (up to the end of the last block).
    let b = KvType::F16.seq_bytes(&gemma, 8192, 512);
    let n = KvType::F16.mix().tokens_within(&gemma, b, 1 << 20, 512);
    assert!(
        n >= 8192 && KvType::F16.seq_bytes(&gemma, n, 512) <= b,
        "{n}"
    );
    assert!(KvType::F16.seq_bytes(&gemma, n + 1, 512) > b, "{n}");
    assert_eq!(KvType::F16.mix().tokens_within(&gemma, b, 4096, 512), 4096);
    // Quantized and mixed types plan their global and windowed parts too.
    for t in KvType::ALL {
        let all = KvLayout::new(18, 1, 256, 16).unwrap();
        assert!(t.seq_bytes(&gemma, 32768, 128) * 3 < t.seq_bytes(&all, 32768, 128));
    }
}
