//! Near-duplicate questions (and answers) across a run: MinHash signatures of word
//! 3-shingles, banded for locality-sensitive hashing. Memory is bounded: at most
//! `capacity` texts are remembered (the oldest forgotten first).

use std::collections::{HashMap, VecDeque};

/// Hash functions in a signature.
const HASHES: usize = 32;
/// Bands of `HASHES / BANDS` rows; two questions collide when one band matches whole.
const BANDS: usize = 8;
const ROWS: usize = HASHES / BANDS;

/// See the module docs.
pub struct Dedup {
    /// Band key → how many remembered questions have it.
    bands: HashMap<u64, u32>,
    order: VecDeque<[u64; BANDS]>,
    capacity: usize,
}

/// The question's words, lowercased, without articles: "What does a 'covered work'
/// mean?" and "What does 'covered work' mean?" are the same question.
fn normalize(q: &str) -> Vec<String> {
    crate::ground::words(q)
        .into_iter()
        .filter(|w| !matches!(w.as_str(), "a" | "an" | "the"))
        .collect()
}

fn signature(q: &str) -> [u64; HASHES] {
    let words = normalize(q);
    let mut sig = [u64::MAX; HASHES];
    let n = words.len();
    let shingles = n.saturating_sub(2).max(usize::from(n > 0));
    for i in 0..shingles {
        let s = words[i..(i + 3).min(n)].join(" ");
        let base = xxhash_rust::xxh3::xxh3_64(s.as_bytes());
        for (k, m) in sig.iter_mut().enumerate() {
            let h = xxhash_rust::xxh3::xxh3_64_with_seed(&base.to_le_bytes(), k as u64);
            *m = (*m).min(h);
        }
    }
    sig
}

fn band_keys(q: &str) -> [u64; BANDS] {
    let sig = signature(q);
    let mut keys = [0u64; BANDS];
    for (b, key) in keys.iter_mut().enumerate() {
        let mut bytes = Vec::with_capacity(8 * ROWS + 1);
        bytes.push(b as u8);
        for r in 0..ROWS {
            bytes.extend_from_slice(&sig[b * ROWS + r].to_le_bytes());
        }
        *key = xxhash_rust::xxh3::xxh3_64(&bytes);
    }
    keys
}

impl Dedup {
    pub fn new(capacity: usize) -> Dedup {
        Dedup {
            bands: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether `q` is a near duplicate of a remembered question; if not, remembers it.
    pub fn check_and_add(&mut self, q: &str) -> bool {
        let keys = band_keys(q);
        if keys.iter().any(|k| self.bands.contains_key(k)) {
            return true;
        }
        self.add_keys(keys);
        false
    }

    /// Whether `q` is a near duplicate of a remembered text (remembering nothing).
    pub fn contains(&self, q: &str) -> bool {
        band_keys(q).iter().any(|k| self.bands.contains_key(k))
    }

    /// Remembers `q` without asking (rebuilding the state of an earlier run).
    pub fn add(&mut self, q: &str) {
        self.add_keys(band_keys(q));
    }

    fn add_keys(&mut self, keys: [u64; BANDS]) {
        if self.order.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            for k in old {
                if let Some(c) = self.bands.get_mut(&k) {
                    *c -= 1;
                    if *c == 0 {
                        self.bands.remove(&k);
                    }
                }
            }
        }
        for k in keys {
            *self.bands.entry(k).or_insert(0) += 1;
        }
        self.order.push_back(keys);
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_duplicates_are_caught_and_different_questions_kept() {
        let mut d = Dedup::new(100);
        assert!(!d.check_and_add("What does the license allow users to do with the code?"));
        assert!(d.check_and_add("What does the License allow users to do with the code"));
        assert!(!d.check_and_add("Who holds the copyright of the software?"));
        assert!(!d.check_and_add("Which court has jurisdiction over disputes?"));
        // Two questions of one chunk that differ by an article (a real pair, both kept
        // before articles were ignored).
        assert!(!d.check_and_add("What does a 'covered work' mean?"));
        assert!(d.check_and_add("What does 'covered work' mean?"));
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = Dedup::new(10);
        for i in 0..1000 {
            d.check_and_add(&format!("question number {i} about topic {}", i * 7));
        }
        assert_eq!(d.len(), 10);
        assert!(d.bands.len() <= 10 * BANDS);
    }
}
