//! The plain description of a vocabulary, as GGUF metadata states it.

use crate::error::VocabError;

/// A vocabulary as the `tokenizer.ggml.*` keys of a GGUF file describe it.
///
/// The engine fills this from GGUF metadata (field names follow the key names); this
/// crate does not read files, so it stays independent of the GGUF reader. Absent keys are
/// `None` or empty, and [`Tokenizer::from_spec`](crate::Tokenizer::from_spec) applies the
/// same defaults llama.cpp does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VocabSpec {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name, e.g. `"smollm"`, `"llama-bpe"`,
    /// `"qwen2"`, `"gpt-2"`, `"default"`. Only read for `"gpt2"` models.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token texts, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: one per token (see [`TokenType`]); empty means all
    /// normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"` rules, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores`: one per token (SentencePiece); empty means all zero.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`.
    pub eom_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unknown_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece only).
    pub add_space_prefix: Option<bool>,
}

/// The tokenization algorithm, from `tokenizer.ggml.model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ModelKind {
    /// `"gpt2"`: byte-level BPE with ranked merges (GPT-2, Llama 3, Qwen2, SmolLM).
    BytePairGpt2,
    /// `"llama"`: SentencePiece BPE with scores, `▁` for spaces, `<0xNN>` byte fallback.
    SentencePiece,
}

impl ModelKind {
    /// Parses the `tokenizer.ggml.model` value.
    pub fn from_gguf(model: &str) -> Result<Self, VocabError> {
        match model {
            "gpt2" => Ok(Self::BytePairGpt2),
            "llama" => Ok(Self::SentencePiece),
            other => Err(VocabError::UnknownModel {
                model: other.to_owned(),
            }),
        }
    }
}

/// How text is cut into words before BPE runs on each, from `tokenizer.ggml.pre`.
///
/// Each variant reproduces the splitting of the pre-tokenizer regexes llama.cpp uses for
/// the names it lists; the names themselves are llama.cpp's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PreTokenizer {
    /// `"default"` or absent: punctuation runs, then the GPT-2 regex, then number runs,
    /// then groups of three ASCII digits.
    Default,
    /// `"gpt-2"` and relatives: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
    /// ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// `"smollm"`, `"starcoder"` and relatives: every `\p{N}` is its own word, then the
    /// GPT-2 regex on what lies between. No prefix space is added.
    DigitsThenGpt2,
    /// `"llama-bpe"` (Llama 3) and relatives: the Llama 3 regex, numbers in groups of up
    /// to three digits; a word that is a whole token skips the merges.
    Llama3,
    /// `"qwen2"` and relatives: the Llama 3 regex with one digit per word.
    Qwen2,
}

impl PreTokenizer {
    /// Parses the `tokenizer.ggml.pre` value (`None` when the key is absent).
    pub fn from_gguf(pre: Option<&str>) -> Result<Self, VocabError> {
        let Some(pre) = pre else {
            return Ok(Self::Default);
        };
        Ok(match pre {
            "default" => Self::Default,
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v1-en"
            | "jina-v2-es" | "jina-v2-de" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo"
            | "jais" => Self::Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => Self::DigitsThenGpt2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => Self::Llama3,
            "qwen2" | "stablelm2" | "megrez" => Self::Qwen2,
            other => {
                return Err(VocabError::UnknownPreTokenizer {
                    pre: other.to_owned(),
                });
            }
        })
    }

    /// Whether a word that is itself a token is emitted without running the merges
    /// (llama.cpp's `ignore_merges`, set for Llama 3 vocabularies).
    pub(crate) fn ignores_merges(self) -> bool {
        self == Self::Llama3
    }

    /// Whether the model asks for a BOS token when the GGUF does not say.
    pub(crate) fn default_add_bos(self) -> bool {
        self == Self::Llama3
    }
}

/// What a token is, from `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenType {
    /// 0: not stated. Renders as nothing.
    Undefined,
    /// 1: ordinary text.
    Normal,
    /// 2: the unknown token. Parsed in text and rendered only on request.
    Unknown,
    /// 3: control (`<|im_start|>`, BOS, EOS). Parsed in text and rendered only on request.
    Control,
    /// 4: user-defined: always recognized in text and always rendered as its text.
    UserDefined,
    /// 5: unused slot. Renders as nothing.
    Unused,
    /// 6: a raw byte (`<0x0A>` in SentencePiece vocabularies).
    Byte,
}

impl TokenType {
    /// Maps the GGUF integer; `None` for values outside 0..=6.
    pub fn from_gguf(value: i32) -> Option<Self> {
        Some(match value {
            0 => Self::Undefined,
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }

    /// Whether the text of this token is matched as a whole in input text, given the
    /// caller's choice. User-defined tokens are always matched, as in llama.cpp and
    /// Hugging Face `tokenizers`.
    pub(crate) fn matched_in_text(self, special: crate::Special) -> bool {
        match self {
            Self::UserDefined => true,
            Self::Control | Self::Unknown => special == crate::Special::Parse,
            _ => false,
        }
    }

    /// Whether decoding shows this token's piece under `render`.
    pub(crate) fn rendered(self, render: crate::Render) -> bool {
        match self {
            Self::Control | Self::Unknown => render == crate::Render::WithControl,
            _ => true,
        }
    }
}
