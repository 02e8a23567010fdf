//! The public BlockStore API on well-behaved input.

mod common;

use std::sync::Arc;

use common::{CODECS, payload, verify_payload};
use kvdisk::{BlockStore, Compression, DiskError, HEADER_LEN, MAX_RAW_BYTES};

const DIGEST: u64 = 0x00c0_ffee_1234_5678;

#[test]
fn put_then_get_returns_the_exact_bytes_for_every_codec_and_size() {
    let root = tempfile::tempdir().unwrap();
    for (i, c) in CODECS.into_iter().enumerate() {
        let store = BlockStore::open(root.path(), DIGEST, c).unwrap();
        for (j, len) in [0usize, 1, 24, 4095, 70_000, 1 << 20]
            .into_iter()
            .enumerate()
        {
            let key = (i * 100 + j) as u64;
            let raw = if len < 24 {
                vec![0x5a; len]
            } else {
                payload(key, 1, len)
            };
            let on_disk = store.put(key, &raw).unwrap();
            let file_len = std::fs::metadata(store.block_path(key)).unwrap().len();
            assert_eq!(on_disk, file_len, "{c}: put reports the file's size");
            assert!(on_disk >= HEADER_LEN as u64);
            assert_eq!(store.get(key).unwrap(), Some(raw), "{c}, {len} bytes");
        }
    }
}

#[test]
fn overwrite_remove_contains_keys_and_bytes_on_disk_agree() {
    let root = tempfile::tempdir().unwrap();
    let store = BlockStore::open(root.path(), DIGEST, Compression::Lz4).unwrap();
    assert_eq!(store.keys().unwrap(), Vec::<u64>::new());
    assert_eq!(store.bytes_on_disk().unwrap(), 0);
    let mut total = 0;
    for key in [u64::MAX, 7, 0, 1 << 40] {
        total += store.put(key, &payload(key, 0, 10_000)).unwrap();
    }
    assert_eq!(store.keys().unwrap(), vec![0, 7, 1 << 40, u64::MAX]);
    assert_eq!(store.bytes_on_disk().unwrap(), total);

    let old = store.put(7, &payload(7, 0, 10_000)).unwrap();
    let new = store.put(7, &payload(7, 1, 50_000)).unwrap();
    assert_eq!(
        verify_payload(7, &store.get(7).unwrap().unwrap()),
        1,
        "overwrite wins"
    );
    assert_eq!(store.bytes_on_disk().unwrap(), total - old + new);

    assert!(store.contains(7));
    store.remove(7).unwrap();
    assert!(!store.contains(7));
    assert_eq!(store.get(7).unwrap(), None);
    store.remove(7).unwrap(); // absent is fine
    assert_eq!(store.keys().unwrap(), vec![0, 1 << 40, u64::MAX]);

    // Foreign files in the directory are not blocks.
    for name in ["notes.txt", "000000000000000A.kvb", "1.kvb"] {
        std::fs::write(store.dir().join(name), b"x").unwrap();
    }
    assert_eq!(store.keys().unwrap(), vec![0, 1 << 40, u64::MAX]);
}

#[test]
fn files_written_with_one_codec_are_read_by_a_store_using_another() {
    let root = tempfile::tempdir().unwrap();
    for (key, writer) in (1u64..).zip(CODECS) {
        let store = BlockStore::open(root.path(), DIGEST, writer).unwrap();
        store.put(key, &payload(key, 0, 30_000)).unwrap();
    }
    let reader = BlockStore::open(root.path(), DIGEST, Compression::None).unwrap();
    for (key, writer) in (1u64..).zip(CODECS) {
        let got = reader
            .get(key)
            .unwrap()
            .unwrap_or_else(|| panic!("{writer}: missing"));
        verify_payload(key, &got);
    }
}

#[test]
fn a_block_the_codec_cannot_shrink_is_stored_uncompressed() {
    let root = tempfile::tempdir().unwrap();
    let mut rng = common::Rng(3);
    let noise: Vec<u8> = (0..100_000).map(|_| rng.next_u64() as u8).collect();
    for c in CODECS {
        let store = BlockStore::open(root.path(), DIGEST, c).unwrap();
        let on_disk = store.put(1, &noise).unwrap();
        assert_eq!(on_disk, (HEADER_LEN + noise.len()) as u64, "{c}");
        let file = std::fs::read(store.block_path(1)).unwrap();
        assert_eq!(file[10], 0, "{c}: header says compression none");
        assert_eq!(store.get(1).unwrap().as_deref(), Some(&noise[..]), "{c}");
    }
}

#[test]
fn model_digests_get_separate_directories() {
    let root = tempfile::tempdir().unwrap();
    let a = BlockStore::open(root.path(), 1, Compression::Lz4).unwrap();
    let b = BlockStore::open(root.path(), 2, Compression::Lz4).unwrap();
    assert_ne!(a.dir(), b.dir());
    assert!(a.dir().ends_with("0000000000000001"));
    a.put(5, &payload(5, 0, 100)).unwrap();
    assert_eq!(b.get(5).unwrap(), None);
    assert!(!b.contains(5));
}

#[test]
fn a_second_handle_on_the_same_directory_is_refused_until_the_first_drops() {
    let root = tempfile::tempdir().unwrap();
    let first = BlockStore::open(root.path(), DIGEST, Compression::Lz4).unwrap();
    let second = BlockStore::open(root.path(), DIGEST, Compression::Lz4);
    assert!(
        matches!(second, Err(DiskError::Locked { .. })),
        "{second:?}"
    );
    drop(first);
    BlockStore::open(root.path(), DIGEST, Compression::Lz4).unwrap();
}

#[test]
fn oversized_payloads_are_refused_without_touching_the_directory() {
    let root = tempfile::tempdir().unwrap();
    let store = BlockStore::open(root.path(), DIGEST, common::SHRINKING).unwrap();
    // calloc'd and never touched: costs no real memory.
    let huge = vec![0u8; MAX_RAW_BYTES + 1];
    let err = store.put(1, &huge).unwrap_err();
    assert!(matches!(err, DiskError::TooLarge { .. }), "{err}");
    assert_eq!(store.keys().unwrap(), Vec::<u64>::new());
    assert!(common::temp_files(store.dir()).is_empty());
}

#[test]
fn concurrent_puts_and_gets_only_ever_see_whole_payloads() {
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(BlockStore::open(root.path(), DIGEST, Compression::Lz4).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for round in 0..40u64 {
                    let key = round % 3; // all threads fight over three keys
                    store
                        .put(key, &payload(key, t * 1000 + round, 20_000))
                        .unwrap();
                    if let Some(got) = store.get((round + 1) % 3).unwrap() {
                        verify_payload((round + 1) % 3, &got);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.keys().unwrap(), vec![0, 1, 2]);
    assert!(common::temp_files(store.dir()).is_empty());
}

/// Issue 13, item 9: a second run on the same directory exited at once. A second handle
/// now waits for the lock a moment and then shares the directory read-only: it reads
/// and verifies, writes and removes nothing.
#[test]
fn item9_a_second_handle_waits_for_the_lock_then_shares_read_only() {
    use kvdisk::Access;
    use std::time::{Duration, Instant};
    let root = tempfile::tempdir().unwrap();
    let first = BlockStore::open(root.path(), DIGEST, Compression::None).unwrap();
    assert_eq!(first.access(), Access::Exclusive);
    first.put(1, &payload(1, 0, 3000)).unwrap();
    let t = Instant::now();
    let shared = BlockStore::open_or_share(
        root.path(),
        DIGEST,
        Compression::None,
        Duration::from_millis(300),
    )
    .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300), "it waited first");
    assert_eq!(shared.access(), Access::ReadOnly);
    assert_eq!(shared.get(1).unwrap(), Some(payload(1, 0, 3000)));
    assert!(matches!(
        shared.put(2, &payload(2, 0, 10)),
        Err(DiskError::ReadOnly { .. })
    ));
    assert!(matches!(shared.remove(1), Err(DiskError::ReadOnly { .. })));
    // A damaged file is reported, and left for the writer.
    std::fs::write(first.block_path(3), b"not a block").unwrap();
    assert!(matches!(shared.get(3), Err(DiskError::Corrupt { .. })));
    assert!(first.block_path(3).exists());
    drop(shared);
    assert!(
        first.block_path(3).exists(),
        "dropping a shared handle cleans nothing"
    );

    // The lock freed while waiting: the waiter becomes the writer.
    let root2 = root.path().to_path_buf();
    let waiter = std::thread::spawn(move || {
        BlockStore::open_or_share(&root2, DIGEST, Compression::None, Duration::from_secs(10))
            .unwrap()
            .access()
    });
    std::thread::sleep(Duration::from_millis(100));
    drop(first);
    assert_eq!(waiter.join().unwrap(), Access::Exclusive);
}

/// Reads, last uses and chain links outlive the handle (the `USAGE` file), so a later run
/// can trim the directory by the eviction score; a damaged usage file reads as empty.
#[test]
fn usage_and_links_are_kept_across_handles_and_reported_by_entries() {
    use kvdisk::Link;
    let root = tempfile::tempdir().unwrap();
    {
        let store = BlockStore::open(root.path(), DIGEST, Compression::None).unwrap();
        for key in [10u64, 11, 12] {
            store.put(key, &payload(key, 0, 2000)).unwrap();
        }
        store.link(
            11,
            Link {
                parent: Some(10),
                depth: 1,
            },
        );
        store.link(
            12,
            Link {
                parent: Some(11),
                depth: 2,
            },
        );
        store.get(10).unwrap().unwrap();
        store.get(10).unwrap().unwrap();
        store.get(11).unwrap().unwrap();
        store.remove(12).unwrap();
    }
    let store = BlockStore::open(root.path(), DIGEST, Compression::None).unwrap();
    let e = store.entries().unwrap();
    assert_eq!(e.iter().map(|x| x.key).collect::<Vec<_>>(), vec![10, 11]);
    assert_eq!((e[0].uses, e[0].link), (2, Link::default()));
    assert_eq!(
        (e[1].uses, e[1].link),
        (
            1,
            Link {
                parent: Some(10),
                depth: 1
            }
        )
    );
    assert!(e[0].file_bytes > 2000 && e[0].last_use_ms > 0);
    // verify() reads an unknown file once, does not count it as a use.
    assert!(store.verify(10).unwrap());
    assert_eq!(store.entries().unwrap()[0].uses, 2);
    drop(store);
    let usage = root.path().join(format!("{DIGEST:016x}")).join("USAGE");
    let mut bytes = std::fs::read(&usage).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&usage, &bytes).unwrap();
    let store = BlockStore::open(root.path(), DIGEST, Compression::None).unwrap();
    let e = store.entries().unwrap();
    assert_eq!(e.len(), 2, "blocks survive a damaged usage file");
    assert!(
        e.iter()
            .all(|x| x.uses == 0 && x.link == Link::default() && x.last_use_ms > 0)
    );
}

#[test]
fn siblings_are_the_other_digests_not_held_elsewhere() {
    let root = tempfile::tempdir().unwrap();
    let a = BlockStore::open(root.path(), 1, Compression::None).unwrap();
    let b = BlockStore::open(root.path(), 2, Compression::None).unwrap();
    drop(BlockStore::open(root.path(), 3, Compression::None).unwrap());
    std::fs::create_dir(root.path().join("not-a-digest")).unwrap();
    let sib: Vec<u64> = a.siblings().iter().map(BlockStore::model_digest).collect();
    assert_eq!(sib, vec![3], "2 is held by b, 1 is a itself");
    drop(b);
    let mut sib: Vec<u64> = a.siblings().iter().map(BlockStore::model_digest).collect();
    sib.sort_unstable();
    assert_eq!(sib, vec![2, 3]);
}
