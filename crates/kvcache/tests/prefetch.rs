//! Promotion read ahead on the prefetcher's thread: a parked sequence's disk blocks come
//! back with the same bytes as a synchronous load, the read-ahead bytes are in the ledger
//! while they wait, a damaged file is caught there exactly as in a synchronous load, and a
//! budget with no room refuses read-ahead without losing anything.

use std::sync::Arc;

use budget::{Budget, BudgetBuilder, Bytes, Policy, PoolId};
use kvcache::{
    BlockStore, Compression, KvBlock, KvCache, KvError, KvFormat, KvLayout, Prefetcher, SeqId, Tier,
};

const BT: usize = 16;
const DIGEST: u64 = 0xFEED;

fn layout() -> KvLayout {
    KvLayout::new(2, 1, 32, BT).unwrap()
}

fn ledger(limit: u64) -> (Budget, PoolId) {
    let b = BudgetBuilder::new(Bytes(limit))
        .pool("kv", Policy::Tiered, Bytes(limit))
        .build()
        .unwrap();
    let kv = b.pool_id("kv").unwrap();
    (b, kv)
}

/// A cache in `budget` with one sequence of `blocks` full int4 blocks, spilled to `store`
/// under keys 1, 2, …; returns the cache, the sequence and each block's bytes.
fn spilled(
    budget: &Budget,
    pool: PoolId,
    store: &BlockStore,
    blocks: usize,
) -> (KvCache, SeqId, Vec<Vec<u8>>) {
    let l = layout();
    let mut kv = KvCache::new(l, 16);
    kv.pool_mut()
        .set_reservation(budget.reserve(pool, Bytes(0)).unwrap())
        .unwrap();
    let s = kv.seq_new();
    kv.seq_reserve(s, blocks * BT).unwrap();
    for pos in 0..blocks * BT {
        for layer in 0..l.n_layers() {
            let row = |kv: usize| -> Vec<u16> {
                (0..32)
                    .map(|d| {
                        let x = ((pos * 7 + d * 3 + layer * 11 + kv * 5) as f32 * 0.37).sin();
                        half::f16::from_f32(x).to_bits()
                    })
                    .collect()
            };
            kv.write(s, layer, pos, &row(0), &row(1)).unwrap();
        }
    }
    let ids = kv.seq_blocks(s).unwrap().to_vec();
    let mut bytes = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        kv.pool_mut().set_format(id, KvFormat::Q4).unwrap();
        match kv.pool().view(id).unwrap() {
            KvBlock::Quant(_, b) => bytes.push(b.to_vec()),
            _ => unreachable!("just quantized"),
        }
        kv.pool_mut().spill(id, store, i as u64 + 1).unwrap();
    }
    kv.seq_set_running(s, false).unwrap();
    (kv, s, bytes)
}

/// A store in a temporary directory, a 1 MiB kv pool, and a parked sequence of four
/// int4 blocks spilled to the store; plus a prefetcher reserving in the same pool.
struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<BlockStore>,
    budget: Budget,
    pool: PoolId,
    kv: KvCache,
    s: SeqId,
    before: Vec<Vec<u8>>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap());
        let (budget, pool) = ledger(1 << 20);
        let (kv, s, before) = spilled(&budget, pool, &store, 4);
        Fixture {
            dir,
            store,
            budget,
            pool,
            kv,
            s,
            before,
        }
    }

    fn prefetcher(&self) -> Prefetcher {
        let res = self.budget.reserve(self.pool, Bytes(0)).unwrap();
        Prefetcher::new(self.store.clone(), res).unwrap()
    }

    /// The ledger holds exactly the blocks' RAM (no read-ahead left behind).
    fn check_accounts(&self, pf: &Prefetcher) {
        assert_eq!(pf.reserved_bytes(), 0);
        assert_eq!(
            self.budget.used(self.pool).0,
            self.kv.pool().storage_bytes()
        );
        self.kv.check_invariants();
    }
}

fn resident_bytes(kv: &KvCache, s: SeqId) -> Vec<Vec<u8>> {
    kv.seq_blocks(s)
        .unwrap()
        .iter()
        .map(|&id| match kv.pool().view(id).unwrap() {
            KvBlock::Quant(_, b) => b.to_vec(),
            _ => panic!("promotion keeps the block's format"),
        })
        .collect()
}

#[test]
fn read_ahead_blocks_come_back_identical_and_accounted() {
    let mut f = Fixture::new();
    assert!(f.kv.pool().tier_counts()[Tier::Disk as usize] == 4);
    let payload = layout().block_bytes_in(KvFormat::Q4) + 3;

    let mut pf = f.prefetcher();
    assert_eq!(f.kv.seq_prefetch(f.s, &mut pf).unwrap(), 4);
    pf.wait_all();
    // Read ahead, waiting in memory: in the ledger, beside the (empty) RAM of the blocks.
    assert_eq!(pf.reserved_bytes(), 4 * payload);
    assert_eq!(
        f.budget.used(f.pool).0,
        f.kv.pool().storage_bytes() + 4 * payload
    );

    f.kv.seq_prepare_with(f.s, Some(&f.store), Some(&mut pf))
        .unwrap();
    let st = pf.stats();
    assert_eq!((st.requested, st.hits, st.misses, st.refused), (4, 4, 0, 0));
    assert_eq!(resident_bytes(&f.kv, f.s), f.before);
    f.check_accounts(&pf);
}

#[test]
fn a_damaged_file_read_ahead_is_lost_and_cut_never_used() {
    let mut f = Fixture::new();
    // Flip one byte in the third block's file.
    let file = f
        .dir
        .path()
        .join(format!("{DIGEST:016x}"))
        .join(format!("{:016x}.kvb", 3u64));
    let mut b = std::fs::read(&file).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&file, b).unwrap();

    let mut pf = f.prefetcher();
    f.kv.seq_prefetch(f.s, &mut pf).unwrap();
    let e =
        f.kv.seq_prepare_with(f.s, Some(&f.store), Some(&mut pf))
            .unwrap_err();
    assert!(matches!(e, KvError::Lost(..)), "{e}");
    // Cut back to before the damaged block; what is kept is exactly what was written.
    assert_eq!(f.kv.seq_len(f.s).unwrap(), 2 * BT);
    assert_eq!(resident_bytes(&f.kv, f.s), f.before[..2].to_vec());
    pf.clear();
    f.check_accounts(&pf);
}

#[test]
fn without_room_read_ahead_is_refused_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap());
    let payload = layout().block_bytes_in(KvFormat::Q4) + 3;
    let (budget, pool) = ledger(1 << 20);
    let (mut kv, s, before) = spilled(&budget, pool, &store, 4);
    // Something else holds all but two and a half blocks' payloads.
    let hog = budget
        .reserve(
            pool,
            Bytes((1 << 20) - budget.used(pool).0 - 5 * payload / 2),
        )
        .unwrap();
    let mut pf = Prefetcher::new(store.clone(), budget.reserve(pool, Bytes(0)).unwrap()).unwrap();
    assert_eq!(kv.seq_prefetch(s, &mut pf).unwrap(), 2);
    assert_eq!(pf.stats().refused, 2);
    // Two come back from the read-ahead; the third has no room: refused, not lost.
    let e = kv
        .seq_prepare_with(s, Some(&store), Some(&mut pf))
        .unwrap_err();
    assert!(matches!(e, KvError::OverBudget(_)), "{e}");
    assert_eq!(kv.seq_len(s).unwrap(), 4 * BT);
    assert_eq!(pf.stats().hits, 2);
    assert!(budget.used(pool).0 <= 1 << 20);
    // With the room back, the rest loads from disk, every block as it was written.
    drop(hog);
    kv.seq_prepare_with(s, Some(&store), Some(&mut pf)).unwrap();
    assert_eq!(pf.stats().misses, 2);
    assert_eq!(resident_bytes(&kv, s), before);
    assert_eq!(budget.used(pool).0, kv.pool().storage_bytes());
    kv.check_invariants();
}
