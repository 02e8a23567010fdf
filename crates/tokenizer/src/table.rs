//! Compact tables: token texts in one buffer, a text-to-id index over them, and the hash
//! used for the merge table.
//!
//! ```text
//!   bytes: |<|im_start|>|Ġt|he|...            all token texts, back to back
//!   ends:  [12, 15, 17, ...]                   ends[i] = end of token i in `bytes`
//!   slots: [EMPTY, 7, EMPTY, 2, ...]           open addressing, linear probing, ids
//! ```

use std::hash::{BuildHasherDefault, Hasher};

/// Byte strings indexed by id, stored back to back.
///
/// # Invariants
/// `ends` is non-decreasing and its last entry is `bytes.len()`.
#[derive(Default, Debug, Clone)]
pub(crate) struct Strings {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl Strings {
    pub(crate) fn with_capacity(count: usize, bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(count),
        }
    }

    /// Appends a string. The caller keeps the total under 4 GiB (checked when building).
    pub(crate) fn push(&mut self, s: &[u8]) {
        self.bytes.extend_from_slice(s);
        self.ends
            .push(u32::try_from(self.bytes.len()).unwrap_or(u32::MAX));
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The string with index `i`; empty if out of range.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> &[u8] {
        let Some(&end) = self.ends.get(i) else {
            return &[];
        };
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..end as usize]
    }

    pub(crate) fn heap_bytes(&self) -> u64 {
        (self.bytes.capacity() + self.ends.capacity() * 4) as u64
    }
}

const EMPTY: u32 = u32::MAX;

/// FNV-1a over the concatenation of `parts`, so a pair of adjacent symbols can be looked
/// up without building their concatenation.
#[inline]
fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    // Fold the high bits in: the slot index uses the low bits only.
    h ^ (h >> 29)
}

#[inline]
fn equals_parts(s: &[u8], parts: &[&[u8]]) -> bool {
    let mut rest = s;
    for part in parts {
        match rest.split_at_checked(part.len()) {
            Some((head, tail)) if head == *part => rest = tail,
            _ => return false,
        }
    }
    rest.is_empty()
}

/// Text-to-id index over a [`Strings`] table.
///
/// # Invariants
/// `slots.len()` is a power of two, at least twice the number of ids stored, so probing
/// always reaches an empty slot.
#[derive(Debug, Clone)]
pub(crate) struct TextIndex {
    slots: Vec<u32>,
}

impl TextIndex {
    /// Indexes every non-empty string. Returns the first duplicate as `(first, second)`.
    pub(crate) fn build(strings: &Strings) -> Result<Self, (usize, usize)> {
        let cap = (strings.len() * 2).next_power_of_two().max(16);
        let mut index = Self {
            slots: vec![EMPTY; cap],
        };
        let mask = cap - 1;
        for id in 0..strings.len() {
            let s = strings.get(id);
            if s.is_empty() {
                continue;
            }
            let mut slot = hash_parts(&[s]) as usize & mask;
            loop {
                match index.slots[slot] {
                    EMPTY => {
                        index.slots[slot] = id as u32;
                        break;
                    }
                    other if strings.get(other as usize) == s => return Err((other as usize, id)),
                    _ => slot = (slot + 1) & mask,
                }
            }
        }
        Ok(index)
    }

    /// The id whose text is the concatenation of `parts`.
    #[inline]
    pub(crate) fn find(&self, strings: &Strings, parts: &[&[u8]]) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut slot = hash_parts(parts) as usize & mask;
        loop {
            match self.slots[slot] {
                EMPTY => return None,
                id if equals_parts(strings.get(id as usize), parts) => return Some(id),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    pub(crate) fn heap_bytes(&self) -> u64 {
        (self.slots.capacity() * 4) as u64
    }
}

/// Hasher for `u64` keys that are two packed `u32` ids: one 128-bit multiply, folded.
#[derive(Default, Clone, Copy)]
pub(crate) struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b) ^ self.0.rotate_left(8));
        }
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        let m = u128::from(x ^ self.0) * u128::from(0x9E37_79B9_7F4A_7C15_u64);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

/// Map keyed by packed id pairs.
pub(crate) type PairMap<V> = std::collections::HashMap<u64, V, BuildHasherDefault<PairHasher>>;

/// Packs an ordered pair of ids into one key.
#[inline]
pub(crate) fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// Heap bytes of a hash map with `capacity` entries of `entry_bytes` each: the buckets
/// plus one control byte per bucket (hashbrown's layout, with buckets rounded up to a
/// power of two at 7/8 load).
pub(crate) fn hash_map_heap_bytes(capacity: usize, entry_bytes: usize) -> u64 {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity * 8 / 7).next_power_of_two();
    (buckets * (entry_bytes + 1) + 16) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_finds_split_lookups_and_reports_duplicates() {
        let mut s = Strings::default();
        for t in ["ab", "a", "", "abc", "b"] {
            s.push(t.as_bytes());
        }
        let index = TextIndex::build(&s).unwrap();
        assert_eq!(index.find(&s, &[b"a", b"bc"]), Some(3));
        assert_eq!(index.find(&s, &[b"ab"]), Some(0));
        assert_eq!(index.find(&s, &[b"a", b"b"]), Some(0));
        assert_eq!(index.find(&s, &[b"b", b"a"]), None);
        assert_eq!(index.find(&s, &[b""]), None);
        assert_eq!(s.get(2), b"");
        assert_eq!(s.get(9), b"");
        s.push(b"a");
        assert_eq!(TextIndex::build(&s).unwrap_err(), (1, 5));
    }
}
