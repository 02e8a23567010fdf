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
