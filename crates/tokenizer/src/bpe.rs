//! Byte-level BPE: ranked merges applied to one word at a time.
//!
//! A word's bytes start as one symbol each (the token of the byte's char in the GPT-2
//! alphabet); the adjacent pair with the best (lowest) merge rank is replaced by the merged
//! symbol, leftmost first among equal ranks, until no pair has a rule. Candidate pairs sit
//! in a binary heap over a linked list of symbols, so a word of n bytes costs
//! O(n log n), not the O(n²) of rescanning after every merge; stale heap entries are
//! detected on pop by checking the pair still holds the rule's two symbols.
//!
//! Symbols are ids. A merge whose parts or result are not tokens (a malformed vocabulary)
//! still takes part through a "virtual" symbol numbered past the vocabulary; if one
//! survives to the output it is spelled out as byte tokens.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::bytelevel::{BYTE_TO_CHAR, char_to_byte};
use crate::error::VocabError;
use crate::table::{PairMap, Strings, TextIndex, hash_map_heap_bytes, pair_key};

const NONE: u32 = u32::MAX;

/// One merge rule, by symbol id.
#[derive(Clone, Copy, Debug)]
struct Rule {
    left: u32,
    right: u32,
    result: u32,
}

/// The merge tables of a byte-level BPE vocabulary.
///
/// # Invariants
/// - `rules[rank]` is the rule found under `pair_key(left, right)` in `ranks`.
/// - Symbol ids below `n_tokens` are tokens; id `n_tokens + i` is `virtuals[i]`.
/// - `initial[b]` is a symbol id for every byte.
#[derive(Debug, Clone)]
pub(crate) struct Bpe {
    ranks: PairMap<u32>,
    rules: Vec<Rule>,
    virtuals: Strings,
    initial: [u32; 256],
    n_tokens: u32,
}

/// Splits a merge line at its first space after the first byte, as llama.cpp does (so a
/// left symbol may itself be a space in vocabularies that are not byte-level).
fn split_rule(line: &str) -> Option<(&str, &str)> {
    let pos = line.bytes().skip(1).position(|b| b == b' ')? + 1;
    Some((&line[..pos], &line[pos + 1..]))
}

impl Bpe {
    /// Builds the tables from the `"left right"` merge lines, highest priority first.
    /// `dead_rules` counts rules that can never apply (a part is not producible).
    pub(crate) fn build(
        texts: &Strings,
        index: &TextIndex,
        merges: &[String],
    ) -> Result<(Self, usize), VocabError> {
        let n_tokens = texts.len() as u32;
        let mut virtuals = Strings::default();
        let mut virtual_ids: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut intern = |parts: &[&[u8]]| -> u32 {
            if let Some(id) = index.find(texts, parts) {
                return id;
            }
            let text = parts.concat();
            *virtual_ids.entry(text).or_insert_with_key(|t| {
                virtuals.push(t);
                n_tokens + virtuals.len() as u32 - 1
            })
        };
        let mut initial = [0u32; 256];
        for (b, slot) in initial.iter_mut().enumerate() {
            let c = BYTE_TO_CHAR[b];
            *slot = intern(&[c.encode_utf8(&mut [0; 4]).as_bytes()]);
        }
        // Results first, so a rule may use a symbol that a lower-priority rule produces.
        let mut split = Vec::with_capacity(merges.len());
        for (i, line) in merges.iter().enumerate() {
            let (l, r) = split_rule(line).ok_or_else(|| VocabError::MalformedMerge {
                index: i,
                merge: line.clone(),
            })?;
            let result = intern(&[l.as_bytes(), r.as_bytes()]);
            split.push((l, r, result));
        }
        let symbol = |s: &str| {
            index
                .find(texts, &[s.as_bytes()])
                .or_else(|| virtual_ids.get(s.as_bytes()).copied())
        };
        let mut ranks = PairMap::default();
        ranks.reserve(merges.len());
        let mut rules = Vec::with_capacity(merges.len());
        let mut dead = 0;
        for (l, r, result) in split {
            let (Some(left), Some(right)) = (symbol(l), symbol(r)) else {
                dead += 1;
                continue;
            };
            // The first (highest-priority) rule for a pair wins.
            if let std::collections::hash_map::Entry::Vacant(e) = ranks.entry(pair_key(left, right))
            {
                e.insert(rules.len() as u32);
                rules.push(Rule {
                    left,
                    right,
                    result,
                });
            }
        }
        rules.shrink_to_fit();
        Ok((
            Self {
                ranks,
                rules,
                virtuals,
                initial,
                n_tokens,
            },
            dead,
        ))
    }

    /// Heap bytes of the tables.
    pub(crate) fn heap_bytes(&self) -> u64 {
        hash_map_heap_bytes(self.ranks.capacity(), std::mem::size_of::<(u64, u32)>())
            + (self.rules.capacity() * std::mem::size_of::<Rule>()) as u64
            + self.virtuals.heap_bytes()
    }

    /// Number of merge rules in use.
    pub(crate) fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The token of byte `b` on its own, if the vocabulary has one.
    pub(crate) fn byte_token(&self, b: u8) -> Option<u32> {
        let id = self.initial[b as usize];
        (id < self.n_tokens).then_some(id)
    }

    #[inline]
    fn rank_of(&self, left: u32, right: u32) -> Option<u32> {
        self.ranks.get(&pair_key(left, right)).copied()
    }

    /// Encodes one word (raw bytes) and appends its ids. A byte that has no token of its
    /// own and is not merged away is dropped, as llama.cpp does (SmolLM2's vocabulary lacks
    /// six control bytes and the lead bytes 0xF1 and 0xF2, for instance); the unknown token
    /// is not used because byte-level vocabularies often alias it to `<|endoftext|>`.
    pub(crate) fn encode_word(&self, word: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        match word {
            [] => return,
            [b] => return self.emit(self.initial[*b as usize], out),
            _ => {}
        }
        let syms = &mut scratch.syms;
        let heap = &mut scratch.heap;
        syms.clear();
        heap.clear();
        let n = word.len() as u32;
        for (i, &b) in word.iter().enumerate() {
            let i = i as u32;
            syms.push(Sym {
                id: self.initial[b as usize],
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
            });
        }
        let push = |heap: &mut BinaryHeap<Reverse<u64>>, syms: &[Sym], left: u32, right: u32| {
            if left == NONE || right == NONE {
                return;
            }
            if let Some(rank) = self.rank_of(syms[left as usize].id, syms[right as usize].id) {
                heap.push(Reverse((u64::from(rank) << 32) | u64::from(left)));
            }
        };
        for i in 1..n {
            push(heap, syms, i - 1, i);
        }
        while let Some(Reverse(key)) = heap.pop() {
            let rule = self.rules[(key >> 32) as usize];
            let left = key as u32;
            let l = syms[left as usize];
            if l.id != rule.left || l.next == NONE || syms[l.next as usize].id != rule.right {
                continue; // stale: one side merged since this entry was pushed
            }
            let right = l.next;
            let after = syms[right as usize].next;
            syms[left as usize].id = rule.result;
            syms[left as usize].next = after;
            syms[right as usize].id = NONE;
            if after != NONE {
                syms[after as usize].prev = left;
            }
            push(heap, syms, l.prev, left);
            push(heap, syms, left, after);
        }
        let mut i = 0;
        while i != NONE {
            self.emit(syms[i as usize].id, out);
            i = syms[i as usize].next;
        }
    }

    fn emit(&self, id: u32, out: &mut Vec<u32>) {
        if id < self.n_tokens {
            out.push(id);
            return;
        }
        let text = self.virtuals.get((id - self.n_tokens) as usize);
        for c in String::from_utf8_lossy(text).chars() {
            out.extend(char_to_byte(c).and_then(|b| self.byte_token(b)));
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Sym {
    /// Symbol id, `NONE` once merged into its left neighbour.
    id: u32,
    prev: u32,
    next: u32,
}

/// Buffers reused across the words of one encode call.
#[derive(Default)]
pub(crate) struct Scratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<Reverse<u64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(tokens: &[&str], merges: &[&str]) -> (Bpe, usize) {
        let mut texts = Strings::default();
        for t in tokens {
            texts.push(t.as_bytes());
        }
        let index = TextIndex::build(&texts).unwrap();
        let merges: Vec<String> = merges.iter().map(|m| m.to_string()).collect();
        Bpe::build(&texts, &index, &merges).unwrap()
    }

    fn encode(bpe: &Bpe, word: &str) -> Vec<u32> {
        let mut out = Vec::new();
        bpe.encode_word(word.as_bytes(), &mut Scratch::default(), &mut out);
        out
    }

    #[test]
    fn merges_follow_rank_then_leftmost() {
        // ids:            0    1    2     3     4      5
        let (bpe, dead) = tables(&["a", "b", "ab", "aa", "aab", "Ġ"], &["a b", "a a", "a ab"]);
        assert_eq!(dead, 0);
        assert_eq!(encode(&bpe, "aab"), [4]); // "a" + "ab" after "a b"
        assert_eq!(encode(&bpe, "aaa"), [3, 0]); // leftmost pair first
        assert_eq!(encode(&bpe, "ba"), [1, 0]);
        assert_eq!(encode(&bpe, " a"), [5, 0]);
        assert_eq!(encode(&bpe, ""), Vec::<u32>::new());
    }

    #[test]
    fn missing_results_go_through_virtual_symbols() {
        // "x y" makes "xy", which is not a token, but "xy z" makes "xyz", which is.
        let (bpe, dead) = tables(&["x", "y", "z", "xyz"], &["x y", "xy z", "qq rr"]);
        assert_eq!(dead, 1); // "qq" and "rr" are neither tokens nor producible
        assert_eq!(encode(&bpe, "xyz"), [3]);
        assert_eq!(encode(&bpe, "xy"), [0, 1]); // a leftover virtual is spelled in bytes
        assert_eq!(bpe.byte_token(b'q'), None);
        assert_eq!(encode(&bpe, "q"), Vec::<u32>::new());
    }

    #[test]
    fn malformed_rule_is_an_error() {
        let mut texts = Strings::default();
        texts.push(b"a");
        let index = TextIndex::build(&texts).unwrap();
        let err = Bpe::build(&texts, &index, &["ab".to_string()]).unwrap_err();
        assert!(matches!(err, VocabError::MalformedMerge { index: 0, .. }));
    }
}
