//! What the store remembers about each block between runs: how often and how recently it
//! was read, and which block it continues — the facts an eviction score needs when the
//! directory outgrows its cap (the score itself is the caller's): [`Entry`], and the
//! store's methods that keep and list them, and find the directories beside it.
//!
//! Kept in one file per directory, `USAGE`, rewritten whole (temp file, fsync, rename) by
//! the handle that holds the lock. It is advisory: a missing, damaged or foreign file is
//! read as empty and every block then counts as never read, last used at its file's
//! modification time, with no known parent. Nothing in it is trusted to read a block.
//!
//! ```text
//! offset  size  field (little-endian)
//!      0     8  magic "LLMKVUSE"
//!      8     2  version (1)
//!     10     2  reserved, 0
//!     12     4  entry count n            (<= MAX_ENTRIES)
//!     16  40·n  entries: key u64, parent u64, last use u64 (ms since the Unix epoch),
//!               uses u32, depth u32, flags u32 (bit 0: parent is set), reserved u32
//!  16+40n     8  xxh3-64 of every byte before it
//! ```

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use xxhash_rust::xxh3::xxh3_64;

use crate::store::{Access, USAGE_NAME, parse_block_name, parse_hex16};
use crate::{BlockStore, DiskError, fsx};

const MAGIC: [u8; 8] = *b"LLMKVUSE";
const VERSION: u16 = 1;
const HEAD: usize = 16;
const ENTRY: usize = 40;
/// Caps the file at 40 MiB, so a forged count cannot make a read allocate more.
const MAX_ENTRIES: usize = 1 << 20;

/// Where a block sits in its chain, as the writer said when it stored it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// The key of the block this one continues (`None` for the first block of a chain).
    pub parent: Option<u64>,
    /// Blocks before this one in its chain (0 for the first).
    pub depth: u32,
}

/// One block's record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BlockUse {
    pub(crate) uses: u32,
    /// Milliseconds since the Unix epoch; 0 = unknown (the file's mtime stands in).
    pub(crate) last_use_ms: u64,
    pub(crate) link: Link,
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One block file and what the store remembers of it ([`BlockStore::entries`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: u64,
    /// The file's size (header included).
    pub file_bytes: u64,
    /// Successful reads recorded by writing handles (0 when the usage file was lost).
    pub uses: u32,
    /// Last read or write, in ms since the Unix epoch (the file's mtime when unrecorded).
    pub last_use_ms: u64,
    /// Where the block sits in its chain, as given to [`BlockStore::link`].
    pub link: Link,
}

impl BlockStore {
    /// Records where `key`'s block sits in its chain, for eviction
    /// ([`entries`](Self::entries)); kept in the usage file. Ignored by a read-only handle.
    pub fn link(&self, key: u64, link: Link) {
        if self.access == Access::Exclusive {
            let mut st = self.state();
            st.usage.entry(key).or_default().link = link;
            st.usage_dirty = true;
        }
    }

    /// Every block file with its size and what the store remembers of its use, in key
    /// order; the facts an eviction score needs. Not verified.
    pub fn entries(&self) -> Result<Vec<Entry>, DiskError> {
        let mut found = Vec::new();
        self.for_each_entry(|name, entry| {
            let Some(key) = parse_block_name(name) else {
                return;
            };
            // DirEntry::metadata does not follow symlinks; a file removed meanwhile, or a
            // name that is not a file, is no block.
            let Ok(meta) = entry.metadata() else { return };
            if !meta.is_file() {
                return;
            }
            let mtime_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            found.push((key, meta.len(), mtime_ms));
        })?;
        let st = self.state();
        let mut out: Vec<Entry> = found
            .into_iter()
            .map(|(key, file_bytes, mtime_ms)| {
                let u = st.usage.get(&key).copied().unwrap_or_default();
                Entry {
                    key,
                    file_bytes,
                    uses: u.uses,
                    last_use_ms: if u.last_use_ms == 0 {
                        mtime_ms
                    } else {
                        u.last_use_ms
                    },
                    link: u.link,
                }
            })
            .collect();
        out.sort_unstable_by_key(|e| e.key);
        Ok(out)
    }

    /// Exclusive handles on the other digests' directories beside this one (same root)
    /// that no other handle holds now, for trimming the whole root to one cap. Locked or
    /// unreadable ones are skipped; nothing is waited for.
    pub fn siblings(&self) -> Vec<BlockStore> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| parse_hex16(e.file_name().to_str()?))
            .filter(|&digest| digest != self.model_digest())
            .filter_map(|digest| Self::open(&self.root, digest, self.compression()).ok())
            .collect()
    }

    /// Writes the usage file (reads, last uses and chain links; see the `usage` module)
    /// if it changed, keeping only keys that still have a file. Done on drop as well; an
    /// error here loses bookkeeping only, never a block. A read-only handle writes nothing.
    pub fn save_usage(&self) -> Result<(), DiskError> {
        if self.access != Access::Exclusive || !self.state().usage_dirty {
            return Ok(());
        }
        let keys: HashSet<u64> = self.keys()?.into_iter().collect();
        let bytes = {
            let mut st = self.state();
            st.usage.retain(|k, _| keys.contains(k));
            st.usage_dirty = false;
            encode(&st.usage)
        };
        let temp = self.temp_path("usage");
        let path = self.dir.join(USAGE_NAME);
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .and_then(|()| {
                fs::rename(&temp, &path).or_else(|e| {
                    fsx::remove_squatter(&path).map_err(|_| e)?;
                    fs::rename(&temp, &path)
                })
            });
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            self.state().usage_dirty = true;
            return Err(DiskError::io("write usage file", &path, e));
        }
        Ok(())
    }
}

pub(crate) fn encode(table: &HashMap<u64, BlockUse>) -> Vec<u8> {
    let mut rows: Vec<(&u64, &BlockUse)> = table.iter().take(MAX_ENTRIES).collect();
    rows.sort_unstable_by_key(|(k, _)| **k);
    let mut b = Vec::with_capacity(HEAD + rows.len() * ENTRY + 8);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for (key, u) in rows {
        b.extend_from_slice(&key.to_le_bytes());
        b.extend_from_slice(&u.link.parent.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&u.last_use_ms.to_le_bytes());
        b.extend_from_slice(&u.uses.to_le_bytes());
        b.extend_from_slice(&u.link.depth.to_le_bytes());
        b.extend_from_slice(&u32::from(u.link.parent.is_some()).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
    }
    let sum = xxh3_64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

/// The table in `bytes`, or `None` if they are not a sound usage file.
pub(crate) fn decode(bytes: &[u8]) -> Option<HashMap<u64, BlockUse>> {
    let body_len = bytes.len().checked_sub(8)?;
    let (body, sum) = bytes.split_at(body_len);
    if body.len() < HEAD || body[..8] != MAGIC || u16_at(body, 8) != VERSION {
        return None;
    }
    if u64::from_le_bytes(sum.try_into().ok()?) != xxh3_64(body) {
        return None;
    }
    let n = u32_at(body, 12) as usize;
    if n > MAX_ENTRIES || body.len() != HEAD + n * ENTRY {
        return None;
    }
    let mut table = HashMap::with_capacity(n);
    for row in body[HEAD..].chunks_exact(ENTRY) {
        let has_parent = u32_at(row, 32) & 1 == 1;
        let u = BlockUse {
            uses: u32_at(row, 24),
            last_use_ms: u64_at(row, 16),
            link: Link {
                parent: has_parent.then(|| u64_at(row, 8)),
                depth: u32_at(row, 28),
            },
        };
        table.insert(u64_at(row, 0), u);
    }
    Some(table)
}

/// Reads at most the largest sound usage file from `file`.
pub(crate) fn read_capped(file: &mut std::fs::File) -> Option<HashMap<u64, BlockUse>> {
    let cap = (HEAD + MAX_ENTRIES * ENTRY + 8) as u64;
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).ok()?;
    decode(&bytes)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HashMap<u64, BlockUse> {
        let mut t = HashMap::new();
        t.insert(
            7,
            BlockUse {
                uses: 3,
                last_use_ms: 1_700_000_000_000,
                link: Link {
                    parent: Some(0),
                    depth: 1,
                },
            },
        );
        t.insert(0, BlockUse::default());
        t
    }

    #[test]
    fn the_table_round_trips_and_any_damage_reads_as_none() {
        let b = encode(&sample());
        assert_eq!(decode(&b), Some(sample()));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x04;
            assert_eq!(decode(&bad), None, "byte {i} flipped");
        }
        for n in 0..b.len() {
            assert_eq!(decode(&b[..n]), None, "truncated to {n}");
        }
        assert_eq!(decode(&[b.as_slice(), b"x"].concat()), None);
    }
}
