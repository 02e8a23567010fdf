//! SentencePiece BPE (`tokenizer.ggml.model = "llama"`): spaces become `▁`, symbols start
//! as single chars, and the adjacent pair whose concatenation is the token with the
//! highest score merges first (leftmost among equal scores). A symbol that is not a token
//! at the end is spelled with byte tokens `<0xNN>`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::{TokenId, Tokenizer};

const NONE: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    /// Byte length, 0 once merged into its left neighbour.
    len: usize,
    prev: usize,
    next: usize,
}

#[derive(Clone, Copy)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    /// Higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Buffers reused across the fragments of one encode call.
#[derive(Default)]
pub(crate) struct Scratch {
    escaped: String,
    syms: Vec<Sym>,
    heap: BinaryHeap<Bigram>,
}

impl Tokenizer {
    fn spm_candidate(&self, s: &mut Scratch, left: usize, right: usize) {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (s.syms[left], s.syms[right]);
        let text = &s.escaped.as_bytes()[l.start..r.start + r.len];
        if let Some(id) = self.index.find(&self.texts, &[text]) {
            let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
            s.heap.push(Bigram {
                score,
                left,
                right,
                len: text.len(),
            });
        }
    }

    /// Encodes one text fragment, with a leading space when `prefix_space`.
    pub(crate) fn spm_fragment(
        &self,
        text: &str,
        prefix_space: bool,
        s: &mut Scratch,
        out: &mut Vec<TokenId>,
    ) {
        s.escaped.clear();
        if prefix_space {
            s.escaped.push('\u{2581}');
        }
        for c in text.chars() {
            s.escaped.push(if c == ' ' { '\u{2581}' } else { c });
        }
        s.syms.clear();
        s.heap.clear();
        let mut offsets = s.escaped.char_indices().map(|(i, _)| i).peekable();
        while let Some(start) = offsets.next() {
            let end = offsets.peek().copied().unwrap_or(s.escaped.len());
            let i = s.syms.len();
            s.syms.push(Sym {
                start,
                len: end - start,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if end == s.escaped.len() { NONE } else { i + 1 },
            });
        }
        for i in 1..s.syms.len() {
            self.spm_candidate(s, i - 1, i);
        }
        while let Some(b) = s.heap.pop() {
            let (l, r) = (s.syms[b.left], s.syms[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len || l.next != b.right {
                continue; // stale
            }
            s.syms[b.left].len += r.len;
            s.syms[b.right].len = 0;
            s.syms[b.left].next = r.next;
            if r.next != NONE {
                s.syms[r.next].prev = b.left;
            }
            self.spm_candidate(s, l.prev, b.left);
            self.spm_candidate(s, b.left, r.next);
        }
        let mut i = if s.syms.is_empty() { NONE } else { 0 };
        while i != NONE {
            let sym = s.syms[i];
            let text = &s.escaped.as_bytes()[sym.start..sym.start + sym.len];
            match self.index.find(&self.texts, &[text]) {
                Some(id) => out.push(TokenId(id)),
                None => {
                    for &byte in text {
                        let id = self.byte_tokens.get(byte as usize).copied().flatten();
                        out.extend(id.map(TokenId).or(self.special.unknown));
                    }
                }
            }
            i = sym.next;
        }
    }
}
