//! Text to ids: special-token partition, pre-tokenization, BPE per word.

use std::collections::HashMap;
use std::ops::Range;

use crate::bytelevel::BYTE_TO_CHAR;
use crate::pretok::Splitter;
use crate::spec::ModelKind;
use crate::{BosEos, Special, TokenId, Tokenizer, bpe, spm};

/// A piece of the input: text still to encode, or a special token found in it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// Words up to this long are remembered for the rest of one encode call: natural text
/// repeats its words, and a hit skips BPE, whose merge-table lookups are cache misses
/// (this halves the time to encode a 144 KB licence text).
const CACHED_WORD_BYTES: usize = 48;

/// At most this many distinct words are remembered per call, bounding the cache's memory
/// (about 60 bytes a word) on huge inputs.
const CACHED_WORDS: usize = 1 << 16;

/// Words longer than this are encoded in chunks of this many bytes, which keeps symbol
/// indices in `u32`. Only a single run of over 1 GiB without a word break reaches it.
const MAX_WORD_BYTES: usize = 1 << 30;

impl Tokenizer {
    /// Encodes `text` into token ids.
    ///
    /// `bos_eos` adds the BOS/EOS tokens the vocabulary asks for; `special` says whether
    /// the texts of control tokens (`<|im_start|>`) in `text` become those tokens or are
    /// encoded as ordinary text. User-defined tokens are always recognized.
    ///
    /// Working memory during the call is a few times the size of `text` (word boundaries
    /// and the ids); nothing is kept afterwards.
    ///
    /// Never fails and never panics: every string has an encoding. Byte-level BPE drops a
    /// byte that the vocabulary has no token for, as llama.cpp does (SmolLM2 cannot express
    /// the control bytes 0x04, 0x06, 0x13, 0x14, 0x16 and 0x1D, nor characters U+40000 to
    /// U+BFFFF); SentencePiece uses the unknown token for a byte without a `<0xNN>` token.
    pub fn encode(&self, text: &str, bos_eos: BosEos, special: Special) -> Vec<TokenId> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        self.encode_into(text, bos_eos, special, &mut out);
        out
    }

    /// Like [`encode`](Self::encode), appending to `out`.
    pub fn encode_into(
        &self,
        text: &str,
        bos_eos: BosEos,
        special: Special,
        out: &mut Vec<TokenId>,
    ) {
        let add = bos_eos == BosEos::Add;
        if add && self.add_bos {
            out.extend(self.special.bos);
        }
        let fragments = self.partition(text, special);
        match self.kind {
            ModelKind::BytePairGpt2 => self.encode_bpe(text, &fragments, out),
            ModelKind::SentencePiece => {
                let mut scratch = spm::Scratch::default();
                let mut after_special = true;
                for fragment in &fragments {
                    match fragment {
                        Fragment::Token(id) => {
                            out.push(TokenId(*id));
                            after_special = true;
                        }
                        Fragment::Text(range) => {
                            let prefix = self.add_space_prefix && after_special;
                            self.spm_fragment(&text[range.clone()], prefix, &mut scratch, out);
                            after_special = false;
                        }
                    }
                }
            }
        }
        if add && self.add_eos {
            out.extend(self.special.eos);
        }
    }

    /// Byte-level BPE over the fragments: split text into words, encode each (or reuse
    /// the ids of an identical earlier word), and pass special tokens through.
    fn encode_bpe(&self, text: &str, fragments: &[Fragment], out: &mut Vec<TokenId>) {
        let mut words = Splitter::default();
        let mut scratch = bpe::Scratch::default();
        let mut ids = Vec::new();
        let mut spelled = String::new();
        let mut cache: HashMap<&str, Range<usize>> = HashMap::new();
        let mut cached_ids: Vec<u32> = Vec::new();
        for fragment in fragments {
            let range = match fragment {
                Fragment::Token(id) => {
                    out.push(TokenId(*id));
                    continue;
                }
                Fragment::Text(range) => range.clone(),
            };
            let fragment = &text[range];
            for word in words.split(self.pre, fragment) {
                let word = &fragment[word.clone()];
                let cacheable = word.len() <= CACHED_WORD_BYTES;
                if let Some(hit) = cache.get(word).filter(|_| cacheable) {
                    out.extend(cached_ids[hit.clone()].iter().map(|&id| TokenId(id)));
                    continue;
                }
                ids.clear();
                self.bpe_word(word, &mut scratch, &mut spelled, &mut ids);
                out.extend(ids.iter().map(|&id| TokenId(id)));
                if cacheable && cache.len() < CACHED_WORDS {
                    let start = cached_ids.len();
                    cached_ids.extend_from_slice(&ids);
                    cache.insert(word, start..cached_ids.len());
                }
            }
        }
    }

    fn bpe_word(
        &self,
        word: &str,
        scratch: &mut bpe::Scratch,
        spelled: &mut String,
        ids: &mut Vec<u32>,
    ) {
        let Some(bpe) = &self.bpe else { return };
        if self.pre.ignores_merges() {
            spelled.clear();
            spelled.extend(word.bytes().map(|b| BYTE_TO_CHAR[b as usize]));
            if let Some(id) = self.index.find(&self.texts, &[spelled.as_bytes()]) {
                ids.push(id);
                return;
            }
        }
        for chunk in word.as_bytes().chunks(MAX_WORD_BYTES) {
            bpe.encode_word(chunk, scratch, ids);
        }
    }

    /// Splits `text` at the special tokens it contains, longest token text first, as
    /// llama.cpp does (so of two overlapping candidates the longer wins, wherever it is).
    fn partition(&self, text: &str, special: Special) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(0..text.len()));
        let mut next = Vec::new();
        for &id in &self.matched_specials {
            if !self.types[id as usize].matched_in_text(special) {
                continue;
            }
            let pattern = self.texts.get(id as usize);
            // Token texts came from `String`s, so this is UTF-8 and matches land on char
            // boundaries.
            let Ok(pattern) = std::str::from_utf8(pattern) else {
                continue;
            };
            if !text.contains(pattern) {
                continue;
            }
            next.clear();
            for fragment in &fragments {
                let Fragment::Text(range) = fragment else {
                    next.push(fragment.clone());
                    continue;
                };
                let mut start = range.start;
                for (at, _) in text[range.clone()].match_indices(pattern) {
                    let at = range.start + at;
                    if at > start {
                        next.push(Fragment::Text(start..at));
                    }
                    next.push(Fragment::Token(id));
                    start = at + pattern.len();
                }
                if start < range.end {
                    next.push(Fragment::Text(start..range.end));
                }
            }
            std::mem::swap(&mut fragments, &mut next);
        }
        fragments
    }
}
