//! A model that owns its mapping, so threads can share it: [`SharedModel`].
//!
//! [`TextModel`] borrows its weights from the mapped file (`'m`), which suits one command
//! that maps, runs and exits. A server or a pipeline keeps models alive across requests
//! and threads and unloads them when the ledger needs the room: for that the mapping and
//! the views into it must travel together. [`SharedModel`] holds both, behind an `Arc`.
//!
//! Loading reserves before it touches pages: the mapped file's bytes are reserved in the
//! ledger's `weights` pool right after the file is opened (mapping reads nothing), then
//! the header is parsed and the tokenizer built, whose tables are reserved as well.

use std::path::Path;
use std::sync::Arc;

use crate::LoadError;
use crate::memory::Accounts;
use crate::text::TextModel;

/// Why a shared model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SharedLoadError {
    #[error(transparent)]
    Map(#[from] weights::MapError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the model does not fit the budget: {0}")]
    OverBudget(#[from] budget::OutOfBudget),
}

/// A loaded model with its tokenizer, owning the mapping its weights are read from.
/// `Send + Sync`: share it with `Arc`.
pub struct SharedModel {
    // Declared before `file`: fields drop in order, so the views go before the mapping.
    text: TextModel<'static>,
    /// The ledger's account for the mapped file (the tokenizer's is in `text`).
    _file_res: Option<budget::Reservation>,
    file: weights::MappedFile,
}

impl SharedModel {
    /// Maps `path`, reserves its bytes in `accounts` (weights pool) before reading any of
    /// them, then parses it and builds the model and tokenizer.
    pub fn load(path: &Path, accounts: &Accounts) -> Result<Arc<Self>, SharedLoadError> {
        let file = weights::MappedFile::open(path)?;
        let file_res = accounts.reserve(accounts.weights, file.bytes().len() as u64)?;
        // The bytes live in a read-only mapping owned by `file`, which is moved into the
        // returned value together with every view made from them, never remapped, and
        // dropped after them (field order above). A moved `MappedFile` keeps its
        // mapping's address.
        // SAFETY: so the views never outlive the mapping (see above).
        let bytes: &'static [u8] = unsafe { std::mem::transmute::<&[u8], &[u8]>(file.bytes()) };
        let gguf = gguf::GgufFile::parse(bytes).map_err(LoadError::from)?;
        let mut text = TextModel::from_gguf(&gguf)?;
        text.account_tokenizer(accounts)?;
        Ok(Arc::new(SharedModel {
            text,
            _file_res: Some(file_res),
            file,
        }))
    }

    /// The model, tokenizer and chat template.
    pub fn text(&self) -> &TextModel<'static> {
        &self.text
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The mapping (for residency control and content digests).
    pub fn file(&self) -> &weights::MappedFile {
        &self.file
    }

    /// Bytes reserved for it in the ledger (file and tokenizer tables).
    pub fn reserved_bytes(&self) -> u64 {
        self.file.bytes().len() as u64 + self.text.weights_reserved()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_model_is_send_and_sync() {
        assert_send_sync::<SharedModel>();
    }
}
