//! Opening a model file with errors a person can act on.

use std::path::Path;

use anyhow::Context;

use crate::exit::{CliError, input};

/// Maps `path`, failing with an input error (exit 2) when it is missing or unreadable.
pub fn map(path: &Path) -> Result<weights::MappedFile, CliError> {
    if !path.exists() {
        return Err(input(anyhow::anyhow!(
            "model file {} does not exist",
            path.display()
        )));
    }
    weights::MappedFile::open(path).map_err(input)
}

/// Parses the GGUF header and builds the text model; a bad file is an input error.
pub fn text_model<'m>(
    path: &Path,
    file: &'m weights::MappedFile,
) -> Result<engine::text::TextModel<'m>, CliError> {
    let gguf = gguf::GgufFile::parse(file.bytes())
        .with_context(|| format!("{} is not a usable GGUF file", path.display()))
        .map_err(input)?;
    engine::text::TextModel::from_gguf(&gguf)
        .with_context(|| format!("cannot load {}", path.display()))
        .map_err(input)
}
