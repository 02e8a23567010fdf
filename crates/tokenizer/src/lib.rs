//! Turns text into the token ids of a GGUF model's vocabulary and back.
//!
//! The vocabulary comes in as a [`VocabSpec`], a plain copy of the `tokenizer.ggml.*`
//! metadata (the engine fills it from the GGUF reader; this crate reads no files). Two
//! algorithms are implemented, matching llama.cpp token for token:
//!
//! - byte-level BPE (`"gpt2"`): the model's [`PreTokenizer`] cuts text into words
//!   (SmolLM2's `smollm` isolates every digit, then applies the GPT-2 regex without a
//!   prefix space), each word's bytes map to GPT-2's byte alphabet, and ranked merges
//!   combine them;
//! - SentencePiece BPE (`"llama"`): score-ordered merges over chars, `▁` for spaces, a
//!   prefix space, and `<0xNN>` byte fallback.
//!
//! Main types:
//! - [`Tokenizer`]: built once by [`Tokenizer::from_spec`], then shared (`Sync`);
//!   [`encode`](Tokenizer::encode), [`decode`](Tokenizer::decode) and
//!   [`table_bytes`](Tokenizer::table_bytes) for the memory ledger.
//! - [`StreamDecoder`]: decoding one generated token at a time, holding back a
//!   character split across tokens.
//! - [`Special`], [`BosEos`], [`Render`]: the caller's choices, as enums.
//!
//! ```
//! use tokenizer::{BosEos, Render, Special, Tokenizer, VocabSpec};
//!
//! // A toy byte-level vocabulary: the letters, "Ġ" (the space byte), two merges and
//! // one control token.
//! let tokens = ["<|im_end|>", "h", "i", "Ġ", "hi", "Ġhi"];
//! let spec = VocabSpec {
//!     model: "gpt2".into(),
//!     pre: Some("smollm".into()),
//!     tokens: tokens.iter().map(|t| t.to_string()).collect(),
//!     token_types: vec![3, 1, 1, 1, 1, 1],
//!     merges: vec!["h i".into(), "Ġ hi".into()],
//!     eos_id: Some(0),
//!     ..VocabSpec::default()
//! };
//! let tok = Tokenizer::from_spec(&spec)?;
//! let ids = tok.encode("hi hi<|im_end|>", BosEos::Add, Special::Parse);
//! assert_eq!(ids.iter().map(|id| id.0).collect::<Vec<_>>(), [4, 5, 0]);
//! assert_eq!(tok.decode(&ids, Render::Text)?, "hi hi");
//! assert!(tok.is_end_of_generation(ids[2]));
//!
//! let mut stream = tok.stream_decoder(Render::Text);
//! let mut text = String::new();
//! for &id in &ids {
//!     text.extend(stream.push(id)?);
//! }
//! assert_eq!(text, "hi hi");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bpe;
mod bytelevel;
mod decode;
mod encode;
mod error;
mod pretok;
mod spec;
mod spm;
mod table;
mod vocab;

pub use decode::StreamDecoder;
pub use error::{DecodeError, VocabError};
pub use spec::{ModelKind, PreTokenizer, TokenType, VocabSpec};
pub use vocab::{MAX_MERGES, MAX_TOKEN_BYTES, MAX_TOKENS, Tokenizer};

/// A token id: an index into the vocabulary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct TokenId(pub u32);

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether special-token texts in the input become those tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    /// `<|im_start|>` in the text becomes the control token: for chat templates the
    /// engine renders itself.
    Parse,
    /// Control-token texts are encoded as ordinary characters: for user-supplied text,
    /// so it cannot inject turn markers. User-defined tokens are still recognized.
    AsText,
}

/// Whether to frame the encoding with the BOS/EOS tokens the vocabulary asks for
/// (`add_bos_token`, `add_eos_token`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BosEos {
    /// Add them when the vocabulary says so: for the start of a prompt.
    Add,
    /// Never add them: for text appended to an existing sequence.
    Omit,
}

/// Whether decoding shows control and unknown tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Render {
    /// Control and unknown tokens render as nothing: for text shown to a user.
    Text,
    /// They render as their text (`<|im_end|>`): for logs and debugging.
    WithControl,
}

/// Special-token ids a vocabulary declares; `None` where it declares none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: Option<TokenId>,
    /// End of sequence.
    pub eos: Option<TokenId>,
    /// End of turn.
    pub eot: Option<TokenId>,
    /// End of message (tool calls).
    pub eom: Option<TokenId>,
    /// Unknown.
    pub unknown: Option<TokenId>,
    /// Padding.
    pub padding: Option<TokenId>,
}
