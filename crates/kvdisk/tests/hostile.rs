//! Damaged and hostile bytes: every damaged block file is reported corrupt and deleted,
//! never returned; the codecs never panic on arbitrary input.

mod common;

use std::fs;

use common::{CODECS, Rng, payload};
use kvdisk::{BlockStore, Compression, Corruption, DiskError, HEADER_LEN};
use proptest::prelude::*;

const DIGEST: u64 = 0x0123_4567_89ab_cdef;
const KEY: u64 = 0x2a;

/// A store holding one block of `len` bytes for KEY, and that block file's bytes.
fn one_block(root: &std::path::Path, c: Compression, len: usize) -> (BlockStore, Vec<u8>) {
    let store = BlockStore::open(root, DIGEST, c).unwrap();
    store.put(KEY, &payload(KEY, 3, len)).unwrap();
    let bytes = fs::read(store.block_path(KEY)).unwrap();
    (store, bytes)
}

/// Writes `bytes` as KEY's file and asserts `get` reports it corrupt and deletes it.
fn assert_rejected(store: &BlockStore, bytes: &[u8], what: &str) -> Corruption {
    let path = store.block_path(KEY);
    fs::write(&path, bytes).unwrap();
    match store.get(KEY) {
        Err(DiskError::Corrupt { path: p, what: c }) => {
            assert_eq!(p, path, "{what}: error names the file");
            assert!(!path.exists(), "{what}: corrupt file was not removed");
            c
        }
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    }
}

#[test]
fn every_flipped_byte_is_caught() {
    let root = tempfile::tempdir().unwrap();
    for c in CODECS {
        // 9 KiB: one noisy and one low-entropy stretch, so the payload really compresses.
        let (store, good) = one_block(root.path(), c, 9 * 1024);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= [0x01, 0x80, 0xff, 0x10][i % 4];
            let what = assert_rejected(&store, &bad, &format!("{c}: byte {i} flipped"));
            if i < HEADER_LEN {
                assert!(
                    !matches!(what, Corruption::PayloadChecksum { .. }),
                    "byte {i}: {what}"
                );
            } else {
                assert!(
                    matches!(what, Corruption::PayloadChecksum { .. }),
                    "byte {i}: {what}"
                );
            }
        }
    }
}

#[test]
fn every_truncation_and_any_appended_bytes_are_caught() {
    let root = tempfile::tempdir().unwrap();
    for c in CODECS {
        let (store, good) = one_block(root.path(), c, 9 * 1024);
        for n in 0..good.len() {
            assert_rejected(&store, &good[..n], &format!("{c}: truncated to {n}"));
        }
        for extra in [&[0u8][..], b"garbage", &good[..], &vec![0; 1 << 16]] {
            let bad = [&good[..], extra].concat();
            let what = assert_rejected(&store, &bad, &format!("{c}: {} appended", extra.len()));
            assert!(matches!(what, Corruption::FileLength { .. }), "{what}");
        }
        // The untouched file still reads.
        fs::write(store.block_path(KEY), &good).unwrap();
        assert!(store.get(KEY).unwrap().is_some());
    }
}

#[test]
fn a_block_under_another_keys_name_or_model_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = BlockStore::open(root.path(), DIGEST, Compression::Lz4).unwrap();
    store.put(1, &payload(1, 0, 5000)).unwrap();
    store.put(2, &payload(2, 0, 5000)).unwrap();
    fs::rename(store.block_path(1), store.block_path(2)).unwrap();
    assert_eq!(store.get(1).unwrap(), None);
    let err = store.get(2).unwrap_err();
    assert!(
        matches!(
            err,
            DiskError::Corrupt {
                what: Corruption::Key {
                    expected: 2,
                    found: 1
                },
                ..
            }
        ),
        "{err}"
    );
    assert!(!store.contains(2), "the misplaced file is gone");

    // The same file copied into another model's directory.
    store.put(3, &payload(3, 0, 5000)).unwrap();
    let other = BlockStore::open(root.path(), DIGEST ^ 1, Compression::Lz4).unwrap();
    assert_eq!(
        other.get(3).unwrap(),
        None,
        "another model does not see our blocks"
    );
    fs::copy(store.block_path(3), other.block_path(3)).unwrap();
    let err = other.get(3).unwrap_err();
    assert!(
        matches!(
            err,
            DiskError::Corrupt {
                what: Corruption::ModelDigest { .. },
                ..
            }
        ),
        "{err}"
    );
    // Our own copy is untouched.
    assert_eq!(store.get(3).unwrap(), Some(payload(3, 0, 5000)));
}

#[test]
fn a_forged_header_with_a_valid_checksum_cannot_force_a_huge_allocation() {
    let root = tempfile::tempdir().unwrap();
    let (store, good) = one_block(root.path(), Compression::Lz4, 1000);
    for (at, value) in [(32, 1u64 << 40), (40, 1u64 << 40), (40, u64::MAX), (32, 0)] {
        let mut bad = good.clone();
        bad[at..at + 8].copy_from_slice(&value.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&bad[..64]);
        bad[64..72].copy_from_slice(&sum.to_le_bytes());
        assert_rejected(&store, &bad, &format!("field at {at} forged to {value}"));
    }
    // Another format version is not read either.
    let mut bad = good.clone();
    bad[8] = 2;
    let what = assert_rejected(&store, &bad, "version 2");
    assert_eq!(what, Corruption::UnsupportedVersion { found: 2 });
}

#[test]
fn random_file_contents_are_always_rejected() {
    let root = tempfile::tempdir().unwrap();
    let (store, good) = one_block(root.path(), common::SHRINKING, 3000);
    let mut rng = Rng(7);
    for round in 0..500 {
        let len = rng.below(4 * HEADER_LEN as u64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if round % 2 == 0 {
            // Start with a valid header's prefix so checks past the magic are exercised.
            let keep = len.min(rng.below(HEADER_LEN as u64 + 1) as usize);
            bytes[..keep].copy_from_slice(&good[..keep]);
        }
        assert_rejected(&store, &bytes, &format!("round {round}"));
    }
}

/// An uncompressed block file of `len` bytes relabelled as zstd:1, with a valid header
/// checksum: what a build with zstd writes, as far as the header goes.
fn zstd_labelled_block(root: &std::path::Path, len: usize) -> (BlockStore, Vec<u8>) {
    let (store, mut bytes) = one_block(root, Compression::None, len);
    bytes[10] = 2;
    bytes[12..16].copy_from_slice(&1i32.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..64]);
    bytes[64..72].copy_from_slice(&sum.to_le_bytes());
    (store, bytes)
}

#[cfg(feature = "zstd")]
#[test]
fn a_zstd_header_over_bytes_that_are_not_zstd_is_corrupt() {
    let root = tempfile::tempdir().unwrap();
    let (store, bytes) = zstd_labelled_block(root.path(), 1000);
    let what = assert_rejected(&store, &bytes, "raw bytes labelled zstd");
    assert!(matches!(what, Corruption::Decode(_)), "{what}");
}

#[cfg(not(feature = "zstd"))]
#[test]
fn without_the_zstd_feature_a_zstd_block_is_reported_and_kept() {
    let root = tempfile::tempdir().unwrap();
    let (store, bytes) = zstd_labelled_block(root.path(), 1000);
    let path = store.block_path(KEY);
    fs::write(&path, &bytes).unwrap();
    for _ in 0..2 {
        match store.get(KEY) {
            Err(e @ DiskError::CodecNotBuilt { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("zstd:1") && text.contains("`zstd` feature"),
                    "{text}"
                );
                let DiskError::CodecNotBuilt { path: p, codec } = e else {
                    unreachable!()
                };
                assert_eq!((p, codec), (path.clone(), Compression::Zstd(1)));
            }
            other => panic!("expected CodecNotBuilt, got {other:?}"),
        }
        assert!(path.exists(), "a sound zstd file is kept");
    }
    // A damaged one is still corrupt: the header is checked first.
    let mut bad = bytes.clone();
    bad[20] ^= 1;
    assert_rejected(&store, &bad, "damaged zstd header");

    // A store set to zstd cannot write.
    let root = tempfile::tempdir().unwrap();
    let store = BlockStore::open(root.path(), DIGEST, Compression::Zstd(1)).unwrap();
    let err = store.put(KEY, &payload(KEY, 1, 1000)).unwrap_err();
    assert!(matches!(err, DiskError::Codec { .. }), "{err}");
    assert!(err.to_string().contains("`zstd` feature"), "{err}");
    assert_eq!(store.keys().unwrap(), Vec::<u64>::new());
    assert!(common::temp_files(store.dir()).is_empty());
}

#[cfg(feature = "zstd")]
fn codec() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        (-5i32..=19).prop_map(Compression::Zstd),
    ]
}

#[cfg(not(feature = "zstd"))]
fn codec() -> impl Strategy<Value = Compression> {
    prop_oneof![Just(Compression::None), Just(Compression::Lz4)]
}

/// Raw bytes from both ends of the compressibility range.
fn raw_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..20_000),
        prop::collection::vec(0u8..4, 0..60_000),
        (any::<u8>(), 0usize..100_000).prop_map(|(b, n)| vec![b; n]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn compress_then_decompress_is_the_identity(c in codec(), raw in raw_bytes()) {
        let mut stored = Vec::new();
        kvdisk::compress(c, &raw, &mut stored).unwrap();
        prop_assert!(stored.len() <= c.max_stored_len(raw.len()));
        let mut out = vec![1, 2, 3];
        kvdisk::decompress(c, &stored, raw.len(), &mut out).unwrap();
        prop_assert_eq!(out, raw);
    }

    #[test]
    fn decompressing_arbitrary_bytes_never_panics_or_overallocates(
        c in codec(),
        stored in prop::collection::vec(any::<u8>(), 0..4096),
        raw_len in 0usize..1 << 20,
    ) {
        let mut out = Vec::new();
        match kvdisk::decompress(c, &stored, raw_len, &mut out) {
            Ok(()) => prop_assert_eq!(out.len(), raw_len),
            Err(DiskError::Decode { .. }) => prop_assert!(out.is_empty()),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
        prop_assert!(out.capacity() <= raw_len.max(1) * 2, "capacity {}", out.capacity());
    }

    #[test]
    fn decompressing_a_damaged_stream_never_panics(
        c in codec(),
        raw in raw_bytes(),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut stored = Vec::new();
        kvdisk::compress(c, &raw, &mut stored).unwrap();
        if !stored.is_empty() {
            for (at, byte) in damage {
                let at = at.index(stored.len());
                stored[at] ^= byte;
            }
            stored.truncate(cut.index(stored.len() + 1).max(stored.len() / 2));
        }
        let mut out = Vec::new();
        // Damaged lz4 may still decode (it has no checksum): the length is all the codec
        // guarantees, the store's raw xxh3 catches the rest.
        if kvdisk::decompress(c, &stored, raw.len(), &mut out).is_ok() {
            prop_assert_eq!(out.len(), raw.len());
        }
    }
}

/// Runs `f` on a thread and fails the test if it has not returned within 10 s (a FIFO
/// opened for reading without O_NONBLOCK waits for a writer forever).
fn within_10s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what}: still running after 10 s"))
}

#[cfg(unix)]
fn mkfifo(path: &std::path::Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

/// Issue 13, finding 5: a block name holding a FIFO hung the run (the open waited for a
/// writer); a directory or a symlink there failed it. Each is now a corrupt block: reported
/// at once, removed where that is safe, and the name written over by the next put.
#[cfg(unix)]
#[test]
fn finding5_a_fifo_directory_or_symlink_at_a_block_path_is_corrupt_and_never_hangs() {
    let root = tempfile::tempdir().unwrap();
    let store =
        std::sync::Arc::new(BlockStore::open(root.path(), DIGEST, Compression::None).unwrap());
    let target = root.path().join("elsewhere.kvb");
    fs::write(&target, payload(KEY, 0, 500)).unwrap();
    type Make<'a> = &'a dyn Fn(&std::path::Path);
    let squatters: [(&str, Make); 4] = [
        ("a FIFO", &|p| mkfifo(p)),
        ("a directory", &|p| fs::create_dir(p).unwrap()),
        ("a symbolic link", &|p| {
            std::os::unix::fs::symlink(&target, p).unwrap()
        }),
        ("a directory", &|p| {
            // Not empty: someone's data, left in place; the block stays unusable.
            fs::create_dir(p).unwrap();
            fs::write(p.join("keep"), b"x").unwrap();
        }),
    ];
    for (i, (kind, make)) in squatters.iter().enumerate() {
        let path = store.block_path(KEY);
        make(&path);
        assert!(!store.contains(KEY), "{kind}: not a block");
        let s = store.clone();
        let got = within_10s(kind, move || s.get(KEY));
        match got {
            Err(DiskError::Corrupt {
                what: Corruption::NotRegularFile { kind: k },
                ..
            }) => assert_eq!(k, *kind),
            other => panic!("{kind}: expected NotRegularFile, got {other:?}"),
        }
        let s = store.clone();
        assert!(!within_10s(kind, move || s.verify(KEY)).unwrap(), "{kind}");
        let s = store.clone();
        let put = within_10s(kind, move || s.put(KEY, &payload(KEY, 1, 700)));
        if i == 3 {
            assert!(matches!(put, Err(DiskError::Io { .. })), "{put:?}");
            assert!(path.join("keep").exists(), "someone's directory is kept");
            fs::remove_dir_all(&path).unwrap();
        } else {
            put.unwrap();
            assert_eq!(
                store.get(KEY).unwrap(),
                Some(payload(KEY, 1, 700)),
                "{kind}"
            );
            store.remove(KEY).unwrap();
        }
        assert!(common::temp_files(store.dir()).is_empty());
    }
    // The symlink's target was never touched.
    assert_eq!(fs::read(&target).unwrap(), payload(KEY, 0, 500));
}

/// A LOCK that is a FIFO or a directory fails the open at once instead of hanging it.
#[cfg(unix)]
#[test]
fn finding5_a_hostile_lock_file_fails_the_open_without_hanging() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(format!("{DIGEST:016x}"));
    fs::create_dir_all(&dir).unwrap();
    mkfifo(&dir.join("LOCK"));
    let r = root.path().to_path_buf();
    let opened = within_10s("LOCK FIFO", move || {
        BlockStore::open(&r, DIGEST, Compression::None)
    });
    assert!(matches!(opened, Err(DiskError::Io { .. })), "{opened:?}");
    fs::remove_file(dir.join("LOCK")).unwrap();
    fs::create_dir(dir.join("LOCK")).unwrap();
    let opened = BlockStore::open(root.path(), DIGEST, Compression::None);
    assert!(matches!(opened, Err(DiskError::Io { .. })), "{opened:?}");
}

/// A full file system fails the put with an I/O error and leaves no temp file; the store
/// still reads what it has.
#[test]
fn finding5_a_full_disk_fails_puts_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let store = BlockStore::open(root.path(), DIGEST, Compression::None).unwrap();
    store.put(1, &payload(1, 0, 1000)).unwrap();
    store.simulate_full_disk(1500);
    store.put(2, &payload(2, 0, 1000)).unwrap();
    let err = store.put(3, &payload(3, 0, 1000)).unwrap_err();
    match &err {
        DiskError::Io { cause, .. } => {
            assert_eq!(cause.kind(), std::io::ErrorKind::StorageFull, "{err}");
        }
        other => panic!("{other:?}"),
    }
    assert!(common::temp_files(store.dir()).is_empty());
    assert_eq!(store.keys().unwrap(), vec![1, 2]);
    assert_eq!(store.get(1).unwrap(), Some(payload(1, 0, 1000)));
}

/// A temp name that cannot be removed (a directory with contents) no longer fails every
/// later open of the directory: it is left, and the store works.
#[test]
fn finding5_a_temp_name_that_cannot_be_removed_does_not_stop_the_open() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(format!("{DIGEST:016x}"));
    fs::create_dir_all(dir.join("tmp-stuck")).unwrap();
    fs::write(dir.join("tmp-stuck").join("f"), b"x").unwrap();
    fs::write(dir.join("tmp-0000000000000001-1-0"), b"half a put").unwrap();
    let store = BlockStore::open(root.path(), DIGEST, Compression::None).unwrap();
    assert_eq!(
        common::temp_files(store.dir()),
        vec!["tmp-stuck".to_string()]
    );
    store.put(KEY, &payload(KEY, 0, 100)).unwrap();
    assert_eq!(store.get(KEY).unwrap(), Some(payload(KEY, 0, 100)));
}
