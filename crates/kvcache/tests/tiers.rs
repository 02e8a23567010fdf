//! The cache in tiers against a reference model: random appends, forks, prefix shares,
//! demotions, promotions, compression, spills, reloads, persistence and reclaim keep every
//! invariant, the ledger equal to the bytes held, and every block's contents within its
//! format's error bound of what was written. Plus: a crash in the middle of a disk write
//! never yields a block that is used without a valid checksum.

use budget::{BudgetBuilder, Bytes, Policy};
use kvcache::policy::{Rates, Weights};
use kvcache::{
    BlockId, BlockStore, Compression, KvBlock, KvCache, KvError, KvFormat, KvLayout, ReuseRule,
    SeqId, Tier,
};
use proptest::prelude::*;
use std::collections::HashMap;

const BT: usize = 16;
const DIGEST: u64 = 0xD16E57;

fn layout() -> KvLayout {
    KvLayout::new(2, 1, 32, BT).unwrap()
}

/// The value a "model" writes for `token` at `pos` (a function of the prefix's last
/// token and position, so equal prefixes have equal KV, as in a real model).
fn value(token: u32, pos: usize, layer: usize, kv: usize, d: usize) -> f32 {
    let x = (token as f32 * 0.37 + pos as f32 * 0.11 + layer as f32 * 1.3 + kv as f32 * 0.7).sin()
        + (d as f32 * 0.21 + token as f32).cos() * 0.5;
    half::f16::from_f32(x).to_f32()
}

fn append(kv: &mut KvCache, seq: SeqId, toks: &[u32], from: usize) -> Result<(), KvError> {
    let l = *kv.layout();
    kv.seq_reserve(seq, from + toks.len())?;
    for (i, &t) in toks.iter().enumerate() {
        let pos = from + i;
        for layer in 0..l.n_layers() {
            let k: Vec<u16> = (0..32)
                .map(|d| half::f16::from_f32(value(t, pos, layer, 0, d)).to_bits())
                .collect();
            let v: Vec<u16> = (0..32)
                .map(|d| half::f16::from_f32(value(t, pos, layer, 1, d)).to_bits())
                .collect();
            kv.write(seq, layer, pos, &k, &v)?;
        }
    }
    Ok(())
}

/// Largest allowed RMS error of a block in `f` (values lie in [-1.5, 1.5]).
fn tolerance(f: KvFormat) -> f32 {
    match f {
        // Values are f16 already, so an f16 block is exact; a promoted one is bounded by
        // the coarsest format it passed through (the caller's `coarsest`), not here.
        KvFormat::F16 => 0.0,
        KvFormat::Q8 => 3.0 / 255.0 / 2.0 + 0.01,
        KvFormat::Q4 => 3.0 / 15.0 / 2.0 + 0.01,
        KvFormat::Q2 => 0.5 + 0.01, // range 3 over 3 steps, half a step
    }
}

/// Checks that every readable block of `seq` holds what `toks` wrote, within the bound of
/// the coarsest format the block has been in (`coarsest`: precision lost stays lost, so a
/// 4-bit block re-encoded as int8 keeps 4-bit error).
fn check_contents(kv: &KvCache, seq: SeqId, toks: &[u32], coarsest: &HashMap<BlockId, KvFormat>) {
    let l = *kv.layout();
    let g = l.geom();
    let mut views = Vec::new();
    kv.block_views(seq, &mut views).unwrap();
    let n = kv.seq_len(seq).unwrap();
    assert!(n <= toks.len());
    let isa = kernels::Isa::detect();
    for (b, view) in views.iter().enumerate() {
        let nt = BT.min(n - b * BT);
        for layer in 0..l.n_layers() {
            let mut kf = vec![0.0f32; BT * 32];
            let mut vf = vec![0.0f32; BT * 32];
            let f = match *view {
                KvBlock::F16(d) => {
                    for t in 0..nt {
                        for i in 0..32 {
                            kf[t * 32 + i] =
                                half::f16::from_bits(d[l.k_base(layer) + t * 32 + i]).to_f32();
                            vf[t * 32 + i] =
                                half::f16::from_bits(d[l.v_base(layer) + t * 32 + i]).to_f32();
                        }
                    }
                    KvFormat::F16
                }
                KvBlock::Quant(f, d) => {
                    let ko = g.q_k_offset(f, layer, 0);
                    let vo = g.q_v_offset(f, layer, 0);
                    kernels::kvquant::dequantize_k(isa, f, &g, &d[ko..], nt, &mut kf);
                    kernels::kvquant::dequantize_v(isa, f, &g, &d[vo..], nt, &mut vf);
                    f
                }
                KvBlock::F16Layer(_) => panic!("the cache stores whole blocks"),
            };
            let mut se = 0.0f32;
            for t in 0..nt {
                let pos = b * BT + t;
                for i in 0..32 {
                    se += (kf[t * 32 + i] - value(toks[pos], pos, layer, 0, i)).powi(2);
                    se += (vf[t * 32 + i] - value(toks[pos], pos, layer, 1, i)).powi(2);
                }
            }
            let rms = (se / (2 * nt * 32) as f32).sqrt();
            let id = kv.seq_blocks(seq).unwrap()[b];
            let worst = coarsest.get(&id).map_or(f, |&c| c.max(f));
            assert!(
                rms <= tolerance(worst),
                "block {b} layer {layer} {f:?}: rms {rms}"
            );
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    New,
    Append(usize, usize, u8),
    Fork(usize),
    Share(usize, u8, usize),
    Demote(usize, usize, u8),
    Promote(usize, usize),
    Compress(usize, usize),
    Spill(usize, usize),
    Prepare(usize),
    Persist(usize, u8),
    Reload(usize, u8, usize),
    Park(usize),
    Reclaim(u32),
    Remove(usize),
}

/// A reuse of blocks in `KvFormat::ALL[f]`, on multiples of `align` blocks.
fn rule(f: u8, align: usize) -> ReuseRule {
    ReuseRule {
        digest: DIGEST,
        format: KvFormat::ALL[f as usize],
        align_tokens: align * BT,
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::New),
        (0..6usize, 1..40usize, 0..3u8).prop_map(|(s, n, v)| Op::Append(s, n, v)),
        (0..6usize).prop_map(Op::Fork),
        (0..6usize, 0..4u8, 1..4usize).prop_map(|(s, f, a)| Op::Share(s, f, a)),
        (0..6usize, 0..8usize, 1..4u8).prop_map(|(s, b, f)| Op::Demote(s, b, f)),
        (0..6usize, 0..8usize).prop_map(|(s, b)| Op::Promote(s, b)),
        (0..6usize, 0..8usize).prop_map(|(s, b)| Op::Compress(s, b)),
        (0..6usize, 0..8usize).prop_map(|(s, b)| Op::Spill(s, b)),
        (0..6usize).prop_map(Op::Prepare),
        (0..6usize, 0..4u8).prop_map(|(s, f)| Op::Persist(s, f)),
        (0..6usize, 0..4u8, 1..4usize).prop_map(|(s, f, a)| Op::Reload(s, f, a)),
        (0..6usize).prop_map(Op::Park),
        (0..40_000u32).prop_map(Op::Reclaim),
        (0..6usize).prop_map(Op::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn tiers_against_a_reference(ops in proptest::collection::vec(op(), 1..60)) {
        let l = layout();
        let fb = l.block_bytes();
        let budget = BudgetBuilder::new(Bytes(64 * fb))
            .pool("kv", Policy::Tiered, Bytes(64 * fb))
            .build()
            .unwrap();
        let kvp = budget.pool_id("kv").unwrap();
        let mut kv = KvCache::new(l, 40);
        kv.pool_mut().set_reservation(budget.reserve(kvp, Bytes(0)).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
        // Reference: each live sequence's tokens (its KV is a function of them).
        let mut model: Vec<(SeqId, Vec<u32>)> = Vec::new();
        // Each live block's coarsest format so far (quantization error is never undone).
        let mut coarsest: HashMap<BlockId, KvFormat> = HashMap::new();
        for op in ops {
            let m = model.len();
            match op {
                Op::New => model.push((kv.seq_new(), Vec::new())),
                Op::Append(i, n, vocab) if m > 0 => {
                    let (s, toks) = &mut model[i % m];
                    // Ready the sequence (its last block may be cold or shared).
                    if kv.seq_prepare(*s, Some(&store)).is_err() {
                        toks.truncate(kv.seq_len(*s).unwrap());
                    }
                    let len = kv.seq_len(*s).unwrap();
                    let last_ok = len.is_multiple_of(BT) || {
                        let id = kv.seq_blocks(*s).unwrap()[len / BT];
                        let meta = kv.pool().meta(id);
                        meta.ref_count == 1 && meta.tier == Tier::Hot
                    };
                    if !last_ok { continue; }
                    let new: Vec<u32> = (0..n).map(|j| (j as u32 * 7 + u32::from(vocab)) % 5).collect();
                    match append(&mut kv, *s, &new, len) {
                        Ok(()) => {
                            toks.extend(&new);
                            kv.seq_publish(*s, toks, DIGEST, KvFormat::F16).unwrap();
                        }
                        Err(KvError::NoRoom { .. } | KvError::OverBudget(_)) => {
                            // All or nothing: the length did not change.
                            prop_assert_eq!(kv.seq_len(*s).unwrap(), len);
                        }
                        Err(e) => prop_assert!(false, "append: {e}"),
                    }
                }
                Op::Fork(i) if m > 0 => {
                    let (s, toks) = model[i % m].clone();
                    if kv.seq_prepare(s, Some(&store)).is_ok()
                        && let Ok(f) = kv.seq_copy(s)
                    {
                        // A copied partial block carries its source's history.
                        let src = kv.seq_blocks(s).unwrap().last().copied();
                        let dst = kv.seq_blocks(f).unwrap().last().copied();
                        if let (Some(a), Some(b)) = (src, dst)
                            && let Some(&c) = coarsest.get(&a)
                        {
                            coarsest.insert(b, c);
                        }
                        model.push((f, toks));
                    }
                }
                Op::Share(i, f, align) if m > 0 => {
                    let toks = model[i % m].1.clone();
                    let s = kv.seq_new();
                    let r = rule(f, align);
                    let got = kv.seq_attach_prefix(s, &toks, toks.len(), &r).unwrap();
                    prop_assert_eq!(got % (align * BT), 0);
                    for &id in kv.seq_blocks(s).unwrap() {
                        prop_assert_eq!(kv.pool().meta(id).format, r.format);
                    }
                    model.push((s, toks[..got].to_vec()));
                }
                Op::Demote(i, b, f) if m > 0 => {
                    let s = model[i % m].0;
                    if let Some(&id) = kv.seq_blocks(s).unwrap().get(b) {
                        let to = KvFormat::ALL[f as usize];
                        let _ = kv.pool_mut().set_format(id, to);
                    }
                }
                Op::Promote(i, b) if m > 0 => {
                    let s = model[i % m].0;
                    if let Some(&id) = kv.seq_blocks(s).unwrap().get(b) {
                        let _ = kv.pool_mut().set_format(id, KvFormat::F16);
                    }
                }
                Op::Compress(i, b) if m > 0 => {
                    let s = model[i % m].0;
                    if let Some(&id) = kv.seq_blocks(s).unwrap().get(b) {
                        let _ = kv.pool_mut().compress(id, Compression::Lz4);
                    }
                }
                Op::Spill(i, b) if m > 0 => {
                    let s = model[i % m].0;
                    if let Some(&id) = kv.seq_blocks(s).unwrap().get(b) {
                        let key = 1_000_000 + u64::from(id.0);
                        let _ = kv.pool_mut().spill(id, &store, key);
                    }
                }
                Op::Prepare(i) if m > 0 => {
                    let (s, toks) = &mut model[i % m];
                    match kv.seq_prepare(*s, Some(&store)) {
                        Ok(()) => {}
                        Err(KvError::Lost(..)) => toks.truncate(kv.seq_len(*s).unwrap()),
                        Err(KvError::OverBudget(_)) => {}
                        Err(e) => prop_assert!(false, "prepare: {e}"),
                    }
                }
                Op::Persist(i, f) if m > 0 => {
                    let s = model[i % m].0;
                    let _ = kv.seq_persist(s, &store, KvFormat::ALL[f as usize]);
                }
                Op::Reload(i, f, align) if m > 0 => {
                    let toks = model[i % m].1.clone();
                    let s = kv.seq_new();
                    let r = rule(f, align);
                    match kv.seq_attach_from_disk(s, &toks, toks.len(), &r, &store) {
                        Ok(got) => {
                            prop_assert_eq!(got % (align * BT), 0);
                            for &id in kv.seq_blocks(s).unwrap() {
                                prop_assert_eq!(kv.pool().meta(id).format, r.format);
                            }
                            model.push((s, toks[..got].to_vec()));
                        }
                        Err(_) => { kv.seq_remove(s); }
                    }
                }
                Op::Park(i) if m > 0 => {
                    let s = model[i % m].0;
                    let r = kv.is_running(s);
                    kv.seq_set_running(s, !r).unwrap();
                }
                Op::Reclaim(short) => {
                    let before = kv.pool().storage_bytes();
                    let d = kv.reclaim(u64::from(short), Some(&store), Compression::None,
                        &Weights::default(), &Rates::default()).unwrap().decisions;
                    let freed: u64 = d.iter().map(|x| x.bytes_freed).sum();
                    prop_assert_eq!(before - kv.pool().storage_bytes(), freed);
                    for x in &d {
                        // Never a block of a running sequence.
                        prop_assert!(!kv.shared_with_running(x.block));
                    }
                    // Only the shortfall: all but the last step were still short.
                    if let Some(last) = d.last() {
                        prop_assert!(freed - last.bytes_freed < u64::from(short));
                    }
                }
                Op::Remove(i) if m > 0 => {
                    let (s, _) = model.remove(i % m);
                    kv.seq_remove(s);
                }
                _ => {}
            }
            kv.check_invariants();
            coarsest.retain(|id, _| kv.pool().meta(*id).ref_count > 0);
            for (s, _) in &model {
                for &id in kv.seq_blocks(*s).unwrap() {
                    let f = kv.pool().meta(id).format;
                    let c = coarsest.entry(id).or_insert(f);
                    *c = (*c).max(f);
                }
            }
            prop_assert_eq!(budget.used(kvp).0, kv.pool().storage_bytes());
            let counts = kv.pool().tier_counts();
            prop_assert_eq!(counts.iter().sum::<usize>(), kv.pool().used_blocks());
        }
        // Every sequence comes back readable and within its formats' bounds.
        for (s, toks) in &mut model {
            match kv.seq_prepare(*s, Some(&store)) {
                Ok(()) => {}
                Err(KvError::Lost(..)) => toks.truncate(kv.seq_len(*s).unwrap()),
                Err(KvError::OverBudget(_)) => continue,
                Err(e) => prop_assert!(false, "{e}"),
            }
            check_contents(&kv, *s, toks, &coarsest);
        }
        for (s, _) in model { kv.seq_remove(s); }
        prop_assert_eq!(kv.pool().used_blocks(), 0);
        kv.pool_mut().trim();
        prop_assert_eq!(budget.used(kvp).0, 0);
    }
}

/// `toks` appended to a fresh cache, published, and every full block put in `f`.
fn published_in(toks: &[u32], f: KvFormat) -> (KvCache, SeqId) {
    let mut kv = KvCache::new(layout(), 32);
    let s = kv.seq_new();
    append(&mut kv, s, toks, 0).unwrap();
    kv.seq_publish(s, toks, DIGEST, KvFormat::F16).unwrap();
    for id in kv.seq_blocks(s).unwrap().to_vec() {
        kv.pool_mut().set_format(id, f).unwrap();
    }
    (kv, s)
}

/// A crash at any point of writing a block file (simulated by stopping the write there),
/// then a restart: the reloaded prefix uses only blocks whose files verify, with exactly
/// the bytes written; a flipped byte or a truncated file is refused and removed.
#[test]
fn a_crash_during_a_disk_write_never_yields_an_unverified_block() {
    use kvdisk::Fault;
    let toks: Vec<u32> = (0..64).map(|i| (i * 3 % 7) as u32).collect();
    // Both payload kinds: f16 and quantized.
    for f in [KvFormat::F16, KvFormat::Q4] {
        let r = ReuseRule {
            digest: DIGEST,
            format: f,
            align_tokens: BT,
        };
        let (mut kv, s) = published_in(&toks, f);
        let keys: Vec<u64> = kv
            .seq_blocks(s)
            .unwrap()
            .iter()
            .map(|&b| kvcache::disk_key(kv.pool().meta(b).hash.unwrap(), f))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let st4 = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
        assert_eq!(kv.seq_persist(s, &st4, f).unwrap().written, 4);
        let payload = st4.get(keys[3]).unwrap().unwrap();
        let full_len = std::fs::metadata(st4.block_path(keys[3])).unwrap().len();
        let faults = [
            Fault::AfterTempBytes(0),
            Fault::AfterTempBytes(1),
            Fault::AfterTempBytes(71),
            Fault::AfterTempBytes(full_len / 2),
            Fault::AfterTempBytes(full_len - 1),
            Fault::BeforeTempSync,
            Fault::BeforeRename,
            Fault::BeforeDirSync,
        ];
        for fault in faults {
            let dir = tempfile::tempdir().unwrap();
            {
                let st = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
                // Blocks 0..3 made it; the write of block 3 "crashes" at `fault`.
                let (mut only3, s3) = published_in(&toks[..48], f);
                assert_eq!(only3.seq_persist(s3, &st, f).unwrap().written, 3);
                let r = st.put_with_fault(keys[3], &payload, fault);
                assert!(r.is_err(), "{fault:?} must stop the write");
            }
            // Restart: a new process opens the store and reuses what verifies.
            let st = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
            let mut fresh = KvCache::new(layout(), 32);
            let rs = fresh.seq_new();
            let got = fresh
                .seq_attach_from_disk(rs, &toks, toks.len(), &r, &st)
                .unwrap();
            // Before the rename the fourth block does not exist; after it, it is whole.
            let want = if matches!(fault, Fault::BeforeDirSync) {
                64
            } else {
                48
            };
            assert_eq!(got, want, "{f:?} {fault:?}");
            check_contents(&fresh, rs, &toks, &HashMap::new());
            for &id in fresh.seq_blocks(rs).unwrap() {
                assert_eq!(fresh.pool().meta(id).format, f);
            }
        }
        // Damaged files: refused (and removed), the prefix stops before them; and one
        // persist repairs every damaged file of the prefix, not only the first.
        let dir = tempfile::tempdir().unwrap();
        let st = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
        kv.seq_persist(s, &st, f).unwrap();
        drop(st);
        let st = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
        let p1 = st.block_path(keys[1]);
        let mut bytes = std::fs::read(&p1).unwrap();
        let at = bytes.len() - 5;
        bytes[at] ^= 0x40;
        std::fs::write(&p1, &bytes).unwrap();
        let p3 = st.block_path(keys[3]);
        let len = std::fs::metadata(&p3).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p3)
            .unwrap()
            .set_len(len - 9)
            .unwrap();
        let mut fresh = KvCache::new(layout(), 32);
        let rs = fresh.seq_new();
        assert_eq!(
            fresh.seq_attach_from_disk(rs, &toks, 64, &r, &st).unwrap(),
            16
        );
        assert!(!st.contains(keys[1]), "the corrupt file was removed");
        assert!(st.contains(keys[3]), "not read yet");
        assert_eq!(
            kv.seq_persist(s, &st, f).unwrap().written,
            2,
            "blocks 1 and 3 rewritten"
        );
        let mut again = KvCache::new(layout(), 32);
        let ra = again.seq_new();
        assert_eq!(
            again.seq_attach_from_disk(ra, &toks, 64, &r, &st).unwrap(),
            64
        );
        check_contents(&again, ra, &toks, &HashMap::new());
        // A sound file holding a block of another format never answers, even under
        // this format's key: refused and removed.
        let q2_key = kvcache::disk_key(
            kv.pool().meta(kv.seq_blocks(s).unwrap()[0]).hash.unwrap(),
            KvFormat::Q2,
        );
        st.put(q2_key, &st.get(keys[0]).unwrap().unwrap()).unwrap();
        let mut other = KvCache::new(layout(), 32);
        let ro = other.seq_new();
        let q2 = ReuseRule {
            format: KvFormat::Q2,
            ..r
        };
        assert_eq!(
            other.seq_attach_from_disk(ro, &toks, 64, &q2, &st).unwrap(),
            0
        );
        assert!(!st.contains(q2_key));
    }
    let toks: Vec<u32> = (0..64).map(|i| (i * 3 % 7) as u32).collect();
    let dir = tempfile::tempdir().unwrap();
    let st = BlockStore::open(dir.path(), DIGEST, Compression::None).unwrap();
    // A disk-tier block whose file is corrupted is reported lost, never read.
    let mut kv2 = KvCache::new(layout(), 32);
    let s2 = kv2.seq_new();
    append(&mut kv2, s2, &toks, 0).unwrap();
    let b1 = kv2.seq_blocks(s2).unwrap()[1];
    kv2.pool_mut().spill(b1, &st, 77).unwrap();
    assert_eq!(kv2.pool().meta(b1).tier, Tier::Disk);
    let p = st.block_path(77);
    let mut bytes = std::fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    assert!(matches!(
        kv2.seq_prepare(s2, Some(&st)),
        Err(KvError::Lost(..))
    ));
    assert_eq!(
        kv2.seq_len(s2).unwrap(),
        16,
        "cut back to before the lost block"
    );
    check_contents(&kv2, s2, &toks, &HashMap::new());
}

#[test]
fn a_mix_applied_on_several_threads_equals_one_applied_on_one() {
    use kvcache::TierMix;
    let mix = TierMix {
        sink_blocks: 1,
        sink_format: KvFormat::F16,
        hot_tokens: 2 * BT,
        warm_tokens: 2 * BT,
        cool_tokens: 3 * BT,
        cold_format: KvFormat::Q2,
    };
    let toks: Vec<u32> = (0..20 * BT as u32 + 5).map(|t| t * 7 % 101).collect();
    let l = layout();
    let budget = BudgetBuilder::new(Bytes(64 * l.block_bytes()))
        .pool("kv", Policy::Tiered, Bytes(64 * l.block_bytes()))
        .build()
        .unwrap();
    let kvp = budget.pool_id("kv").unwrap();
    let threads = kernels::pool::ThreadPool::new(3).unwrap();
    let mut caches = Vec::new();
    for parallel in [false, true] {
        let mut kv = KvCache::new(l, 32);
        kv.pool_mut()
            .set_reservation(budget.reserve(kvp, Bytes(0)).unwrap())
            .unwrap();
        let seq = kv.seq_new();
        // Two steps, as a prompt read in micro-batches is: blocks move down twice.
        for (from, to) in [(0, 9 * BT + 3), (9 * BT + 3, toks.len())] {
            append(&mut kv, seq, &toks[from..to], from).unwrap();
            let freed = kv
                .seq_apply_mix(seq, &mix, parallel.then_some(&threads))
                .unwrap();
            assert!(freed > 0);
        }
        kv.check_invariants();
        caches.push((kv, seq));
    }
    let [(one, s1), (many, s2)] = &caches[..] else {
        unreachable!()
    };
    assert_eq!(one.pool().storage_bytes(), many.pool().storage_bytes());
    assert_eq!(one.pool().tier_counts(), many.pool().tier_counts());
    assert_eq!(one.pool().tier_counts()[2], 20 - 1 - 2 - 2);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    one.block_views(*s1, &mut a).unwrap();
    many.block_views(*s2, &mut b).unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        match (x, y) {
            (KvBlock::F16(p), KvBlock::F16(q)) => assert_eq!(p, q),
            (KvBlock::Quant(f, p), KvBlock::Quant(g, q)) => assert!(f == g && p == q),
            _ => panic!("blocks differ in kind"),
        }
    }
}
