//! Ids to text, in one go or one token at a time.

use crate::error::DecodeError;
use crate::{Render, TokenId, Tokenizer};

impl Tokenizer {
    /// The bytes token `id` decodes to (its text for control tokens), regardless of
    /// rendering choice. May be part of a multi-byte character.
    pub fn token_bytes(&self, id: TokenId) -> Result<&[u8], DecodeError> {
        let i = id.0 as usize;
        if i >= self.vocab_size() {
            return Err(DecodeError::UnknownId {
                id,
                vocab_size: self.vocab_size(),
            });
        }
        Ok(self.pieces.get(i))
    }

    /// Appends the rendered bytes of `id`. `at_start` is true until the first non-empty
    /// piece; a SentencePiece vocabulary that adds a prefix space loses it there.
    fn append_piece(
        &self,
        id: TokenId,
        render: Render,
        at_start: &mut bool,
        out: &mut Vec<u8>,
    ) -> Result<(), DecodeError> {
        let mut piece = self.token_bytes(id)?;
        if piece.is_empty() || !self.types[id.0 as usize].rendered(render) {
            return Ok(());
        }
        if *at_start && self.add_space_prefix {
            piece = piece.strip_prefix(b" ").unwrap_or(piece);
        }
        *at_start = false;
        out.extend_from_slice(piece);
        Ok(())
    }

    /// Decodes `ids` to bytes exactly as the model produced them.
    pub fn decode_bytes(&self, ids: &[TokenId], render: Render) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        let mut at_start = true;
        for &id in ids {
            self.append_piece(id, render, &mut at_start, &mut out)?;
        }
        Ok(out)
    }

    /// Decodes `ids` to text. Byte sequences that are not UTF-8 (a model may emit half a
    /// character, or nonsense) become U+FFFD, one per maximal invalid subpart, as
    /// [`String::from_utf8_lossy`] does.
    pub fn decode(&self, ids: &[TokenId], render: Render) -> Result<String, DecodeError> {
        let bytes = self.decode_bytes(ids, render)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// A decoder for ids that arrive one at a time.
    pub fn stream_decoder(&self, render: Render) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            render,
            pending: Vec::new(),
            at_start: true,
        }
    }
}

/// Decodes a stream of ids into text, holding back a character whose bytes span tokens
/// until it is complete.
///
/// The concatenation of everything [`push`](Self::push) and [`finish`](Self::finish)
/// return equals [`Tokenizer::decode`] of all ids pushed, however the stream is split.
///
/// # Invariants
/// `pending` holds at most 3 bytes, and they are a proper prefix of a valid UTF-8
/// sequence (so more bytes may complete it).
#[derive(Debug, Clone)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    render: Render,
    pending: Vec<u8>,
    at_start: bool,
}

impl StreamDecoder<'_> {
    /// Adds one token; returns the text completed by it, if any.
    pub fn push(&mut self, id: TokenId) -> Result<Option<String>, DecodeError> {
        self.tokenizer
            .append_piece(id, self.render, &mut self.at_start, &mut self.pending)?;
        let mut text = String::new();
        let mut consumed = 0;
        loop {
            match std::str::from_utf8(&self.pending[consumed..]) {
                Ok(valid) => {
                    text.push_str(valid);
                    consumed = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid_len = e.valid_up_to();
                    let valid = &self.pending[consumed..consumed + valid_len];
                    // `valid_up_to` bytes are UTF-8 by definition.
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    consumed += valid_len;
                    match e.error_len() {
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            consumed += bad;
                        }
                        None => break, // an incomplete character: wait for more bytes
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        #[cfg(debug_assertions)]
        self.check_invariants();
        Ok((!text.is_empty()).then_some(text))
    }

    /// Ends the stream: an incomplete character left over becomes U+FFFD.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(text)
    }

    /// Bytes held back, waiting for the rest of a character.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Checks the documented invariants.
    ///
    /// # Panics
    /// If one does not hold: that is a bug in this crate.
    pub fn check_invariants(&self) {
        assert!(
            self.pending.len() <= 3,
            "{} bytes pending",
            self.pending.len()
        );
        if let Err(e) = std::str::from_utf8(&self.pending) {
            assert_eq!(e.valid_up_to(), 0);
            assert_eq!(
                e.error_len(),
                None,
                "pending bytes are invalid, not incomplete"
            );
        } else {
            assert!(self.pending.is_empty());
        }
    }
}
