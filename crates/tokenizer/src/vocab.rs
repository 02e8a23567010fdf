//! Building a [`Tokenizer`] from a [`VocabSpec`], and what it can tell about its tokens.

use crate::bpe::Bpe;
use crate::bytelevel;
use crate::error::VocabError;
use crate::spec::{ModelKind, PreTokenizer, TokenType, VocabSpec};
use crate::table::{Strings, TextIndex};
use crate::{SpecialTokens, TokenId};

/// Most tokens a vocabulary may have (the largest real ones have about 260,000).
pub const MAX_TOKENS: usize = 1 << 24;
/// Most merge rules a vocabulary may have.
pub const MAX_MERGES: usize = 1 << 24;
/// Longest token text, in bytes.
pub const MAX_TOKEN_BYTES: usize = 1 << 16;

/// Token texts that end generation whatever the metadata says (llama.cpp's list). Such a
/// token is treated as a control token.
const END_OF_GENERATION_TEXTS: [&str; 7] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
];

/// Text to token ids and back, for one vocabulary.
///
/// Immutable after construction and `Sync`: one instance serves every thread.
///
/// # Invariants
/// - `texts`, `pieces` and `types` have one entry per token; `scores` too, or is empty.
/// - `index` finds every non-empty token text, and no two tokens share a text.
/// - `bpe` is `Some` exactly for [`ModelKind::BytePairGpt2`].
/// - `matched_specials` holds ids of control, unknown and user-defined tokens with
///   non-empty text, longest text first (ties by id).
/// - every id in `special` and `end_of_generation` is below the vocabulary size.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pub(crate) kind: ModelKind,
    pub(crate) pre: PreTokenizer,
    /// Token texts as the vocabulary spells them (byte-level chars for BPE, `▁` for SPM).
    pub(crate) texts: Strings,
    pub(crate) index: TextIndex,
    /// The bytes each token decodes to.
    pub(crate) pieces: Strings,
    pub(crate) types: Vec<TokenType>,
    pub(crate) scores: Vec<f32>,
    pub(crate) bpe: Option<Bpe>,
    /// SentencePiece: the token of each byte (`<0xNN>`), if any.
    pub(crate) byte_tokens: Vec<Option<u32>>,
    pub(crate) matched_specials: Vec<u32>,
    pub(crate) special: SpecialTokens,
    pub(crate) end_of_generation: Vec<TokenId>,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    pub(crate) add_space_prefix: bool,
    pub(crate) dead_merges: usize,
}

fn check_count(field: &'static str, count: usize, limit: usize) -> Result<(), VocabError> {
    if count > limit {
        Err(VocabError::TooMany {
            field,
            count,
            limit,
        })
    } else {
        Ok(())
    }
}

fn check_len(field: &'static str, expected: usize, actual: usize) -> Result<(), VocabError> {
    if actual != 0 && actual != expected {
        return Err(VocabError::LengthMismatch {
            field,
            expected,
            actual,
        });
    }
    Ok(())
}

/// Parses `<0xNN>`.
fn byte_token_value(text: &[u8]) -> Option<u8> {
    let hex = text.strip_prefix(b"<0x")?.strip_suffix(b">")?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

impl Tokenizer {
    /// Validates `spec` and builds the tables.
    ///
    /// Defaults for absent keys follow llama.cpp: BPE adds BOS only for Llama 3
    /// pre-tokenizers, SentencePiece adds BOS and a prefix space, and SentencePiece ids
    /// default to BOS 1, EOS 2, unknown 0 when the vocabulary has them.
    pub fn from_spec(spec: &VocabSpec) -> Result<Self, VocabError> {
        let kind = ModelKind::from_gguf(&spec.model)?;
        let pre = match kind {
            ModelKind::BytePairGpt2 => PreTokenizer::from_gguf(spec.pre.as_deref())?,
            ModelKind::SentencePiece => PreTokenizer::Default,
        };
        let n = spec.tokens.len();
        if n == 0 {
            return Err(VocabError::EmptyVocab);
        }
        check_count("tokenizer.ggml.tokens", n, MAX_TOKENS)?;
        check_count("tokenizer.ggml.merges", spec.merges.len(), MAX_MERGES)?;
        check_len("tokenizer.ggml.token_type", n, spec.token_types.len())?;
        check_len("tokenizer.ggml.scores", n, spec.scores.len())?;

        let mut total_bytes = 0usize;
        for (index, t) in spec.tokens.iter().enumerate() {
            if t.len() > MAX_TOKEN_BYTES {
                return Err(VocabError::TokenTooLong {
                    index,
                    len_bytes: t.len(),
                    limit_bytes: MAX_TOKEN_BYTES,
                });
            }
            total_bytes += t.len();
        }
        // Offsets into the text buffers are `u32`.
        check_count("token text bytes", total_bytes, u32::MAX as usize)?;
        let merge_bytes: usize = spec.merges.iter().map(String::len).sum();
        check_count(
            "tokenizer.ggml.merges bytes",
            merge_bytes,
            (u32::MAX / 2) as usize,
        )?;
        let mut texts = Strings::with_capacity(n, total_bytes);
        for t in &spec.tokens {
            texts.push(t.as_bytes());
        }
        let index =
            TextIndex::build(&texts).map_err(|(first, second)| VocabError::DuplicateToken {
                text: spec.tokens[first].clone(),
                first,
                second,
            })?;

        let mut types = Vec::with_capacity(n);
        for i in 0..n {
            let value = spec.token_types.get(i).copied().unwrap_or(1);
            let ty = TokenType::from_gguf(value)
                .ok_or(VocabError::InvalidTokenType { index: i, value })?;
            types.push(ty);
        }

        let special = special_ids(spec, kind, n)?;
        let end_of_generation = end_of_generation(&special, &index, &texts, &mut types);

        let add_bos = spec.add_bos.unwrap_or(match kind {
            ModelKind::BytePairGpt2 => pre.default_add_bos(),
            ModelKind::SentencePiece => true,
        });
        let add_eos = spec.add_eos.unwrap_or(false);
        if add_bos && special.bos.is_none() {
            return Err(VocabError::MissingSpecialId { role: "bos" });
        }
        if add_eos && special.eos.is_none() {
            return Err(VocabError::MissingSpecialId { role: "eos" });
        }
        let add_space_prefix =
            kind == ModelKind::SentencePiece && spec.add_space_prefix.unwrap_or(true);

        let (bpe, dead_merges) = match kind {
            ModelKind::BytePairGpt2 => {
                if spec.merges.is_empty() {
                    return Err(VocabError::MissingMerges);
                }
                let (bpe, dead) = Bpe::build(&texts, &index, &spec.merges)?;
                (Some(bpe), dead)
            }
            ModelKind::SentencePiece => (None, 0),
        };

        let mut byte_tokens = Vec::new();
        if kind == ModelKind::SentencePiece {
            byte_tokens = (0..=255u8)
                .map(|b| {
                    let hex = format!("<0x{b:02X}>");
                    index.find(&texts, &[hex.as_bytes()]).or_else(|| {
                        // llama.cpp falls back to the byte itself as a token text.
                        b.is_ascii().then(|| index.find(&texts, &[&[b]])).flatten()
                    })
                })
                .collect();
        }

        let pieces = build_pieces(kind, &texts, &types);
        let mut matched_specials: Vec<u32> = (0..n as u32)
            .filter(|&id| {
                matches!(
                    types[id as usize],
                    TokenType::Control | TokenType::Unknown | TokenType::UserDefined
                ) && !texts.get(id as usize).is_empty()
            })
            .collect();
        matched_specials.sort_by_key(|&id| (std::cmp::Reverse(texts.get(id as usize).len()), id));
        matched_specials.shrink_to_fit();

        let tok = Self {
            kind,
            pre,
            texts,
            index,
            pieces,
            types,
            scores: spec.scores.clone(),
            bpe,
            byte_tokens,
            matched_specials,
            special,
            end_of_generation,
            add_bos,
            add_eos,
            add_space_prefix,
            dead_merges,
        };
        #[cfg(debug_assertions)]
        tok.check_invariants();
        Ok(tok)
    }

    /// Checks the documented invariants.
    ///
    /// # Panics
    /// If one does not hold: that is a bug in this crate.
    pub fn check_invariants(&self) {
        let n = self.texts.len();
        assert_eq!(self.pieces.len(), n);
        assert_eq!(self.types.len(), n);
        assert!(self.scores.is_empty() || self.scores.len() == n);
        assert_eq!(self.bpe.is_some(), self.kind == ModelKind::BytePairGpt2);
        for pair in self.matched_specials.windows(2) {
            assert!(
                self.texts.get(pair[0] as usize).len() >= self.texts.get(pair[1] as usize).len()
            );
        }
        let ids = [
            self.special.bos,
            self.special.eos,
            self.special.eot,
            self.special.eom,
            self.special.unknown,
            self.special.padding,
        ];
        for id in ids
            .into_iter()
            .flatten()
            .chain(self.end_of_generation.iter().copied())
        {
            assert!((id.0 as usize) < n);
        }
        for id in [0, n / 2, n - 1] {
            let text = self.texts.get(id);
            if !text.is_empty() {
                assert_eq!(self.index.find(&self.texts, &[text]), Some(id as u32));
            }
        }
    }

    /// The most bytes of input text one token can stand for: its longest decoded piece
    /// (a special token's text included), and at least 4, one UTF-8 character, which an
    /// unknown token may replace. A text of more than `n` times this many bytes encodes to
    /// more than `n` tokens, so a caller can refuse a prompt longer than its context after
    /// reading only that many bytes.
    pub fn longest_token_bytes(&self) -> usize {
        (0..self.pieces.len())
            .map(|i| self.pieces.get(i).len())
            .fold(4, usize::max)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// The tokenization algorithm.
    pub fn model_kind(&self) -> ModelKind {
        self.kind
    }

    /// The pre-tokenizer (meaningful for byte-level BPE only).
    pub fn pre_tokenizer(&self) -> PreTokenizer {
        self.pre
    }

    /// The special-token ids the vocabulary declares.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Whether [`BosEos::Add`](crate::BosEos::Add) prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether [`BosEos::Add`](crate::BosEos::Add) appends EOS.
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    /// Tokens that end generation: EOS, EOT, EOM and the well-known end-of-turn texts,
    /// sorted by id.
    pub fn end_of_generation(&self) -> &[TokenId] {
        &self.end_of_generation
    }

    /// Whether generating `id` ends the turn.
    pub fn is_end_of_generation(&self, id: TokenId) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }

    /// The id of the token whose text (as the vocabulary spells it) is `text`.
    pub fn token_id(&self, text: &str) -> Option<TokenId> {
        if text.is_empty() {
            return None;
        }
        self.index
            .find(&self.texts, &[text.as_bytes()])
            .map(TokenId)
    }

    /// The token's text as the vocabulary spells it (`Ġthe`, `▁the`, `<|im_end|>`).
    pub fn token_text(&self, id: TokenId) -> Option<&str> {
        let i = id.0 as usize;
        if i >= self.vocab_size() {
            return None;
        }
        // Texts were copied from `String`s, so they are UTF-8.
        std::str::from_utf8(self.texts.get(i)).ok()
    }

    /// The token's type.
    pub fn token_type(&self, id: TokenId) -> Option<TokenType> {
        self.types.get(id.0 as usize).copied()
    }

    /// The token that stands for byte `b` on its own: the byte's GPT-2 alphabet char in
    /// byte-level BPE, `<0xNN>` in SentencePiece. `None` if the vocabulary has none, in
    /// which case byte-level BPE drops the byte (unless a merge absorbs it).
    pub fn byte_token(&self, b: u8) -> Option<TokenId> {
        let id = match &self.bpe {
            Some(bpe) => bpe.byte_token(b),
            None => self.byte_tokens.get(b as usize).copied().flatten(),
        };
        id.map(TokenId)
    }

    /// Merge rules that can never apply because a part is neither a token nor the result
    /// of another rule (0 for a well-formed vocabulary).
    pub fn dead_merges(&self) -> usize {
        self.dead_merges
    }

    /// Number of merge rules in use (0 for SentencePiece).
    pub fn merge_count(&self) -> usize {
        self.bpe.as_ref().map_or(0, Bpe::rule_count)
    }

    /// Heap bytes held by the tokenizer's tables: token texts, decoded pieces, types,
    /// scores, the text index, the merge table and the special-token lists. Computed from
    /// capacities (hash-map buckets included); a test checks it against a counting
    /// allocator. The allocator's own rounding is not included, and neither are the
    /// transient buffers of an encode call, which are freed when it returns.
    pub fn table_bytes(&self) -> u64 {
        self.texts.heap_bytes()
            + self.pieces.heap_bytes()
            + self.index.heap_bytes()
            + (self.types.capacity() * std::mem::size_of::<TokenType>()) as u64
            + (self.scores.capacity() * 4) as u64
            + self.bpe.as_ref().map_or(0, Bpe::heap_bytes)
            + (self.byte_tokens.capacity() * std::mem::size_of::<Option<u32>>()) as u64
            + (self.matched_specials.capacity() * 4) as u64
            + (self.end_of_generation.capacity() * 4) as u64
    }
}

fn special_ids(spec: &VocabSpec, kind: ModelKind, n: usize) -> Result<SpecialTokens, VocabError> {
    let check = |role: &'static str, id: Option<u32>| match id {
        Some(id) if id as usize >= n => Err(VocabError::SpecialIdOutOfRange {
            role,
            id,
            vocab_size: n,
        }),
        other => Ok(other.map(TokenId)),
    };
    let spm_default =
        |id: u32| (kind == ModelKind::SentencePiece && (id as usize) < n).then_some(id);
    Ok(SpecialTokens {
        bos: check("bos", spec.bos_id.or_else(|| spm_default(1)))?,
        eos: check("eos", spec.eos_id.or_else(|| spm_default(2)))?,
        eot: check("eot", spec.eot_id)?,
        eom: check("eom", spec.eom_id)?,
        unknown: check("unknown", spec.unknown_id.or_else(|| spm_default(0)))?,
        padding: check("padding", spec.padding_id)?,
    })
}

/// Collects the end-of-generation ids and marks the well-known texts as control tokens.
fn end_of_generation(
    special: &SpecialTokens,
    index: &TextIndex,
    texts: &Strings,
    types: &mut [TokenType],
) -> Vec<TokenId> {
    let mut eog: Vec<TokenId> = [special.eos, special.eot, special.eom]
        .into_iter()
        .flatten()
        .collect();
    for text in END_OF_GENERATION_TEXTS {
        if let Some(id) = index.find(texts, &[text.as_bytes()]) {
            types[id as usize] = TokenType::Control;
            eog.push(TokenId(id));
        }
    }
    eog.sort_unstable();
    eog.dedup();
    eog
}

/// The bytes each token decodes to, before the caller's rendering choice is applied.
fn build_pieces(kind: ModelKind, texts: &Strings, types: &[TokenType]) -> Strings {
    let mut pieces = Strings::with_capacity(texts.len(), 0);
    let mut buf = Vec::new();
    for (id, &ty) in types.iter().enumerate() {
        let text = texts.get(id);
        buf.clear();
        match (ty, kind) {
            (TokenType::Control | TokenType::Unknown | TokenType::UserDefined, _) => {
                buf.extend_from_slice(text);
            }
            (TokenType::Normal, ModelKind::BytePairGpt2) => {
                bytelevel::decode_into(&String::from_utf8_lossy(text), &mut buf);
            }
            (TokenType::Normal, ModelKind::SentencePiece) => {
                let s = String::from_utf8_lossy(text).replace('\u{2581}', " ");
                buf.extend_from_slice(s.as_bytes());
            }
            (TokenType::Byte, ModelKind::SentencePiece) => match byte_token_value(text) {
                Some(b) => buf.push(b),
                None => buf.extend_from_slice(text),
            },
            // llama.cpp renders byte tokens of BPE vocabularies, unused and undefined
            // tokens as nothing.
            _ => {}
        }
        pieces.push(&buf);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_token_texts_parse() {
        assert_eq!(byte_token_value(b"<0x0A>"), Some(10));
        assert_eq!(byte_token_value(b"<0xff>"), Some(255));
        assert_eq!(byte_token_value(b"<0x1>"), None);
        assert_eq!(byte_token_value(b"0x0A"), None);
    }
}
