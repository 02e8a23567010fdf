//! Errors of building a tokenizer and of decoding ids.

use crate::TokenId;

/// Why a [`VocabSpec`](crate::VocabSpec) was rejected by
/// [`Tokenizer::from_spec`](crate::Tokenizer::from_spec).
///
/// Every variant names the field (GGUF key suffix) and, where there is one, the index of
/// the offending entry, so a bad file can be diagnosed from the message alone.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum VocabError {
    /// `tokenizer.ggml.model` is not one this crate implements.
    #[error("unsupported tokenizer model {model:?} (supported: \"gpt2\", \"llama\")")]
    UnknownModel {
        /// The value found.
        model: String,
    },
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not implement.
    #[error("unsupported pre-tokenizer {pre:?} for tokenizer model \"gpt2\"")]
    UnknownPreTokenizer {
        /// The value found.
        pre: String,
    },
    /// `tokenizer.ggml.tokens` is empty.
    #[error("the vocabulary has no tokens")]
    EmptyVocab,
    /// More entries (or bytes) than the hard cap allows.
    #[error("{field}: {count} exceeds the limit of {limit}")]
    TooMany {
        /// Which field, and what is counted.
        field: &'static str,
        /// Entries or bytes found.
        count: usize,
        /// The cap.
        limit: usize,
    },
    /// A per-token array does not have one entry per token.
    #[error("{field} has {actual} entries but there are {expected} tokens")]
    LengthMismatch {
        /// Which field (`token_type` or `scores`).
        field: &'static str,
        /// Number of tokens.
        expected: usize,
        /// Entries found.
        actual: usize,
    },
    /// A token text is longer than the hard cap.
    #[error("token {index} is {len_bytes} bytes long; the limit is {limit_bytes}")]
    TokenTooLong {
        /// Token index.
        index: usize,
        /// Its length.
        len_bytes: usize,
        /// The cap.
        limit_bytes: usize,
    },
    /// A `token_type` value outside 0..=6.
    #[error("token_type[{index}] = {value} is not a known token type (0..=6)")]
    InvalidTokenType {
        /// Token index.
        index: usize,
        /// The value found.
        value: i32,
    },
    /// Two tokens have the same text; text-to-id lookups would be ambiguous.
    #[error("tokens {first} and {second} have the same text {text:?}")]
    DuplicateToken {
        /// The text.
        text: String,
        /// Lower index.
        first: usize,
        /// Higher index.
        second: usize,
    },
    /// A merge rule without the separating space.
    #[error("merges[{index}] = {merge:?} is not two symbols separated by a space")]
    MalformedMerge {
        /// Merge index (its rank).
        index: usize,
        /// The rule as found.
        merge: String,
    },
    /// A byte-level BPE vocabulary without merge rules.
    #[error("tokenizer model \"gpt2\" needs tokenizer.ggml.merges, which is missing or empty")]
    MissingMerges,
    /// A special-token id that is not in the vocabulary.
    #[error("{role}_token_id = {id} is out of range for a vocabulary of {vocab_size} tokens")]
    SpecialIdOutOfRange {
        /// `bos`, `eos`, `eot`, `eom`, `unknown` or `padding`.
        role: &'static str,
        /// The id found.
        id: u32,
        /// Vocabulary size.
        vocab_size: usize,
    },
    /// `add_bos_token`/`add_eos_token` is set but the matching id is absent.
    #[error("add_{role}_token is set but {role}_token_id is missing")]
    MissingSpecialId {
        /// `bos` or `eos`.
        role: &'static str,
    },
}

/// Why ids could not be turned back into text.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The id is not in the vocabulary (e.g. a logit index past the vocabulary of a
    /// model whose output layer is padded).
    #[error("token id {id} is out of range for a vocabulary of {vocab_size} tokens")]
    UnknownId {
        /// The id.
        id: TokenId,
        /// Vocabulary size.
        vocab_size: usize,
    },
}
