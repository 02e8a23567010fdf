//! Crash safety: a put stopped at every step, and a writer process SIGKILLed at random.
//!
//! After either, a reopened store must answer every key with the previous block, nothing,
//! or the complete new block — never a mix — and must have no temp file left.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{CODECS, Rng, payload, temp_files, verify_payload};
use kvdisk::{BlockStore, Compression, DiskError, Fault, HEADER_LEN};

const DIGEST: u64 = 0xdead_beef_0000_0001;

/// Held by each test for its whole run. The kill test forks writers; a child holds copies
/// of all the parent's descriptors until its exec closes them, so a lock the other test
/// just dropped could still be held there and its reopen would see `Locked`.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What a reader may see after a put that stopped at `fault`: the rename is the commit
/// point, so only `BeforeDirSync` (after it) shows the new block.
fn new_block_visible(fault: Fault) -> bool {
    fault == Fault::BeforeDirSync
}

#[test]
fn a_put_stopped_at_any_point_leaves_the_old_block_or_the_whole_new_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = tempfile::tempdir().unwrap();
    let key = 9;
    let neighbour = 10;
    let mut cases = 0;
    for (ci, c) in CODECS.into_iter().enumerate() {
        for had_previous in [false, true] {
            let new = payload(key, 2, 40_000);
            // The file the new put writes: needed to pick byte counts around its edges.
            let mut stored = Vec::new();
            kvdisk::compress(c, &new, &mut stored).unwrap();
            // put stores the payload raw when the codec does not shrink it.
            let file_len = (HEADER_LEN + stored.len().min(new.len())) as u64;
            let mut faults: Vec<Fault> = [
                0,
                1,
                HEADER_LEN as u64 - 1,
                HEADER_LEN as u64,
                HEADER_LEN as u64 + 1,
                file_len / 2,
                file_len - 1,
                file_len,
                file_len + 100,
            ]
            .map(Fault::AfterTempBytes)
            .to_vec();
            faults.extend([
                Fault::BeforeTempSync,
                Fault::BeforeRename,
                Fault::BeforeDirSync,
            ]);

            for fault in faults {
                cases += 1;
                // One digest (so one fresh directory) per case.
                let digest = DIGEST + cases;
                let store = BlockStore::open(root.path(), digest, c).unwrap();
                let old = payload(key, 1, 30_000);
                if had_previous {
                    store.put(key, &old).unwrap();
                }
                store.put(neighbour, &payload(neighbour, 1, 5_000)).unwrap();

                let err = store.put_with_fault(key, &new, fault).unwrap_err();
                assert!(
                    matches!(err, DiskError::InjectedFault(f) if f == fault),
                    "{err}"
                );

                let expected = if new_block_visible(fault) {
                    Some(new.clone())
                } else if had_previous {
                    Some(old.clone())
                } else {
                    None
                };
                let ctx = format!("codec {c} (#{ci}), previous {had_previous}, {fault:?}");
                assert_eq!(store.get(key).unwrap(), expected, "{ctx}");
                verify_payload(neighbour, &store.get(neighbour).unwrap().unwrap());
                if !new_block_visible(fault) {
                    assert_eq!(
                        temp_files(store.dir()).len(),
                        1,
                        "{ctx}: the crash's leftover"
                    );
                }

                // "Restart": the leftover is cleaned, the answers do not change, and the
                // store works normally again.
                let dir = store.dir().to_path_buf();
                drop(store);
                let store = BlockStore::open(root.path(), digest, c).unwrap();
                assert_eq!(temp_files(&dir), Vec::<String>::new(), "{ctx}");
                assert_eq!(store.get(key).unwrap(), expected, "{ctx} after reopen");
                let mut keys = vec![neighbour];
                if expected.is_some() {
                    keys.insert(0, key);
                }
                assert_eq!(store.keys().unwrap(), keys, "{ctx}");
                store.put(key, &new).unwrap();
                assert_eq!(store.get(key).unwrap(), Some(new.clone()), "{ctx}");
            }
        }
    }
    assert_eq!(cases, CODECS.len() as u64 * 2 * 12);
}

const CHILD_DIR: &str = "KVDISK_CRASH_CHILD_DIR";
const CHILD_CODEC: &str = "KVDISK_CRASH_CHILD_CODEC";
const CHILD_SEED: &str = "KVDISK_CRASH_CHILD_SEED";
const KEYS: u64 = 12;

/// Child mode: put large blocks of 12 keys forever, until the parent kills it.
fn child_loop(root: &Path) -> ! {
    let codec: Compression = std::env::var(CHILD_CODEC).unwrap().parse().unwrap();
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let store = BlockStore::open(root, DIGEST, codec).unwrap();
    let mut rng = Rng(seed);
    // Generations grow across rounds (the seed's high bits) so every put is new content.
    for generation in seed << 20.. {
        let key = rng.below(KEYS);
        let len = 64 * 1024 + rng.below(3 << 20) as usize;
        store.put(key, &payload(key, generation, len)).unwrap();
    }
    unreachable!("the generation counter does not run out before the parent kills us")
}

#[test]
fn writer_killed_at_random_moments_leaves_only_whole_blocks() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        child_loop(Path::new(&dir));
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = tempfile::tempdir().unwrap();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let dir = root.path().join(format!("{DIGEST:016x}"));
    let (mut verified, mut rounds_with_leftovers) = (0, 0);
    for round in 0..8u64 {
        let codec = CODECS[round as usize % CODECS.len()];
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "writer_killed_at_random_moments_leaves_only_whole_blocks",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, root.path())
            .env(CHILD_CODEC, codec.to_string())
            .env(CHILD_SEED, (round + 1).to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        // Wait until the child is writing (a file other than the lock appears in a fresh
        // directory, a temp file in a used one), then let it run on for a random while so
        // the kill lands at an arbitrary point of some put.
        let started = Instant::now();
        while !(dir.exists() && (!temp_files(&dir).is_empty() || round == 0 && entries(&dir) > 1)) {
            assert!(child.0.try_wait().unwrap().is_none(), "child exited early");
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "child never started writing"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.below(150_000)));
        if round % 2 == 1 {
            // Make sure this kill lands inside a put.
            while temp_files(&dir).is_empty() {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "child stopped writing"
                );
            }
        }
        child.0.kill().unwrap(); // SIGKILL
        let status = child.0.wait().unwrap();
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "child died by itself: {status}");
        }
        if !temp_files(&dir).is_empty() {
            rounds_with_leftovers += 1;
        }

        let store = BlockStore::open(root.path(), DIGEST, codec).unwrap();
        assert_eq!(
            temp_files(&dir),
            Vec::<String>::new(),
            "round {round}: open left temps"
        );
        for key in 0..KEYS {
            // A kill (unlike a power loss) cannot even produce a corrupt file: any error
            // here is a bug.
            match store.get(key) {
                Ok(Some(bytes)) => {
                    verify_payload(key, &bytes);
                    verified += 1;
                }
                Ok(None) => assert!(!store.keys().unwrap().contains(&key)),
                Err(e) => panic!("round {round}, key {key}: {e}"),
            }
        }
    }
    println!("verified {verified} blocks; {rounds_with_leftovers}/8 kills left a temp file");
    assert!(
        verified > 0,
        "no put ever completed: the test proved nothing"
    );
    assert!(rounds_with_leftovers > 0, "no kill landed inside a put");
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Kills the child if the parent's assertions fail before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
