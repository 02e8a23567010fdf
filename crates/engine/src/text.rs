//! A model together with its tokenizer, chat template and end-of-generation tokens, all
//! read from one GGUF file.

use gguf::{GgufFile, Value};
use tokenizer::{BosEos, Render, Special, StreamDecoder, TokenId, Tokenizer, VocabSpec};

use crate::LoadError;
use crate::chat::{self, Message, TemplateError};
use crate::config::meta_str;
use crate::model::Model;

/// A model ready for text in, text out.
pub struct TextModel<'m> {
    pub model: Model<'m>,
    pub tokenizer: Tokenizer,
    /// `tokenizer.chat_template`, if the file has one.
    pub chat_template: Option<String>,
    /// The ledger's account for the mapped file and the tokenizer tables.
    weights_res: Option<budget::Reservation>,
}

fn strings(file: &GgufFile<'_>, key: &str) -> Result<Vec<String>, LoadError> {
    match file.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter_bytes()?
            .map(|b| Ok(String::from_utf8_lossy(b).into_owned()))
            .collect(),
        Some(_) => Err(LoadError::BadValue {
            key: key.into(),
            why: "expected an array of strings".into(),
        }),
    }
}

fn opt_u32(file: &GgufFile<'_>, key: &str) -> Result<Option<u32>, LoadError> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| LoadError::BadValue {
                key: key.into(),
                why: "expected a token id".into(),
            }),
    }
}

fn opt_bool(file: &GgufFile<'_>, key: &str) -> Option<bool> {
    file.get(key).and_then(|v| v.as_bool())
}

/// Builds the tokenizer's description from the file's `tokenizer.ggml.*` keys.
pub fn vocab_spec(file: &GgufFile<'_>) -> Result<VocabSpec, LoadError> {
    let model = meta_str(file, "tokenizer.ggml.model")?.ok_or_else(|| LoadError::MissingKey {
        key: "tokenizer.ggml.model".into(),
    })?;
    let token_types = match file.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a.iter_i32()?.collect(),
        _ => Vec::new(),
    };
    let scores = match file.get("tokenizer.ggml.scores") {
        Some(Value::Array(a)) => a.iter_f32()?.collect(),
        _ => Vec::new(),
    };
    Ok(VocabSpec {
        model: model.into(),
        pre: meta_str(file, "tokenizer.ggml.pre")?.map(Into::into),
        tokens: strings(file, "tokenizer.ggml.tokens")?,
        token_types,
        merges: strings(file, "tokenizer.ggml.merges")?,
        scores,
        bos_id: opt_u32(file, "tokenizer.ggml.bos_token_id")?,
        eos_id: opt_u32(file, "tokenizer.ggml.eos_token_id")?,
        eot_id: opt_u32(file, "tokenizer.ggml.eot_token_id")?,
        eom_id: opt_u32(file, "tokenizer.ggml.eom_token_id")?,
        unknown_id: opt_u32(file, "tokenizer.ggml.unknown_token_id")?,
        padding_id: opt_u32(file, "tokenizer.ggml.padding_token_id")?,
        add_bos: opt_bool(file, "tokenizer.ggml.add_bos_token"),
        add_eos: opt_bool(file, "tokenizer.ggml.add_eos_token"),
        add_space_prefix: opt_bool(file, "tokenizer.ggml.add_space_prefix"),
    })
}

/// ChatML, for models that ship no template of their own.
const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turn format, for a Gemma vocabulary without a template (its pretrained base
/// files ship none): the model was trained with these turns.
const GEMMA_TURNS: &str = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = m['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// How a model's chat prompts are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatFormat {
    /// The file's own `tokenizer.chat_template`.
    Template,
    /// No template, but a vocabulary with Gemma's turn tokens: Gemma's turn format.
    GemmaTurns,
    /// No template, but ChatML's tokens: ChatML.
    ChatMl,
    /// No template and no known turn tokens: the text is used as it is (`--raw`).
    Raw,
}

/// Streams generated tokens out as text, holding back split characters.
pub struct TextStream<'t> {
    inner: StreamDecoder<'t>,
}

impl TextStream<'_> {
    /// Text completed by token `id` (empty while a character is still split).
    pub fn push(&mut self, id: u32) -> String {
        self.inner
            .push(TokenId(id))
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Whatever is still held back (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        self.inner.finish().unwrap_or_default()
    }
}

impl<'m> TextModel<'m> {
    /// Loads model, tokenizer and template from a parsed file.
    pub fn from_gguf(file: &GgufFile<'m>) -> Result<Self, LoadError> {
        let model = Model::from_gguf(file)?;
        let tokenizer = Tokenizer::from_spec(&vocab_spec(file)?)
            .map_err(|e| LoadError::Tokenizer(e.to_string()))?;
        if tokenizer.vocab_size() != model.cfg.vocab {
            return Err(LoadError::Tokenizer(format!(
                "{} tokens in the vocabulary but the model has {} embedding rows",
                tokenizer.vocab_size(),
                model.cfg.vocab
            )));
        }
        let chat_template = meta_str(file, "tokenizer.chat_template")?.map(Into::into);
        Ok(TextModel {
            model,
            tokenizer,
            chat_template,
            weights_res: None,
        })
    }

    /// Reserves the model's resident bytes in the ledger's `weights` pool: the mapped file
    /// (`file_bytes`, all of it resident while the model runs; file-backed pages count)
    /// and the tokenizer's tables.
    pub fn account(
        &mut self,
        accounts: &crate::memory::Accounts,
        file_bytes: u64,
    ) -> Result<(), budget::OutOfBudget> {
        let bytes = file_bytes + self.tokenizer.table_bytes();
        self.weights_res = Some(accounts.reserve(accounts.weights, bytes)?);
        Ok(())
    }

    /// Reserves only the tokenizer's tables in the `weights` pool (for a caller that
    /// reserved the mapped file itself, before reading it).
    pub fn account_tokenizer(
        &mut self,
        accounts: &crate::memory::Accounts,
    ) -> Result<(), budget::OutOfBudget> {
        let bytes = self.tokenizer.table_bytes();
        self.weights_res = Some(accounts.reserve(accounts.weights, bytes)?);
        Ok(())
    }

    /// Bytes reserved for the weights (0 before [`TextModel::account`]).
    pub fn weights_reserved(&self) -> u64 {
        self.weights_res.as_ref().map_or(0, |r| r.size().0)
    }

    /// Token ids of `text`, special tokens recognized, BOS/EOS as the model asks.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.tokenizer
            .encode(text, BosEos::Add, Special::Parse)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// The prompt for one user message through the model's chat template.
    pub fn chat_prompt(&self, user: &str) -> Result<String, TemplateError> {
        self.render_chat(&[Message::user(user)])
    }

    /// How [`TextModel::render_chat`] makes prompts for this model.
    pub fn chat_format(&self) -> ChatFormat {
        let has = |t: &str| self.tokenizer.token_id(t).is_some();
        if self.chat_template.is_some() {
            ChatFormat::Template
        } else if has("<start_of_turn>") && has("<end_of_turn>") {
            ChatFormat::GemmaTurns
        } else if has("<|im_start|>") && has("<|im_end|>") {
            ChatFormat::ChatMl
        } else {
            ChatFormat::Raw
        }
    }

    /// The prompt for a conversation through the model's chat template, the assistant's
    /// turn opened. Without a template: Gemma's turns or ChatML where the vocabulary has
    /// their tokens, else the messages' text as it is ([`ChatFormat::Raw`]).
    pub fn render_chat(&self, messages: &[Message]) -> Result<String, TemplateError> {
        let msgs: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        self.render_chat_json(&msgs, None)
    }

    /// [`TextModel::render_chat`] for messages shaped as JSON objects (OpenAI's shape:
    /// `role`, `content`, `tool_calls`, `tool_call_id`, …) and the `tools` offered, which
    /// only a template with tool support ([`TextModel::offers_tools`]) shows the model.
    pub fn render_chat_json(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String, TemplateError> {
        let tmpl = match self.chat_format() {
            ChatFormat::Template => self.chat_template.as_deref().unwrap_or(CHATML),
            ChatFormat::GemmaTurns => GEMMA_TURNS,
            ChatFormat::ChatMl => CHATML,
            ChatFormat::Raw => {
                let text: Vec<&str> = messages
                    .iter()
                    .map(|m| m["content"].as_str().unwrap_or(""))
                    .collect();
                return Ok(text.join("\n"));
            }
        };
        let (bos, eos) = self.bos_eos_text();
        chat::render_json(tmpl, messages, tools, &bos, &eos)
    }

    /// Whether the model's own chat template shows it the tools a request offers (the
    /// formats used without a template have no tools).
    pub fn offers_tools(&self) -> bool {
        let (bos, eos) = self.bos_eos_text();
        self.chat_format() == ChatFormat::Template
            && self
                .chat_template
                .as_deref()
                .is_some_and(|t| chat::offers_tools(t, &bos, &eos))
    }

    fn bos_eos_text(&self) -> (String, String) {
        let sp = self.tokenizer.special_tokens();
        let text = |id: Option<TokenId>| {
            id.and_then(|i| self.tokenizer.token_text(i))
                .unwrap_or_default()
                .to_string()
        };
        (text(sp.bos), text(sp.eos))
    }

    /// Whether `id` ends generation (EOS, EOT, `<|im_end|>`, …).
    pub fn is_eog(&self, id: u32) -> bool {
        self.tokenizer.is_end_of_generation(TokenId(id))
    }

    /// A streaming decoder for generated tokens (control tokens not rendered).
    pub fn stream_decoder(&self) -> TextStream<'_> {
        TextStream {
            inner: self.tokenizer.stream_decoder(Render::Text),
        }
    }
}
