//! Opening a model file with errors a person can act on.

use std::path::Path;

use anyhow::Context;

use crate::exit::{CliError, input};

/// Maps `path`, failing with an input error (exit 2) when it is missing, a directory or
/// unreadable.
pub fn map(path: &Path) -> Result<weights::MappedFile, CliError> {
    if !path.exists() {
        return Err(input(anyhow::anyhow!(
            "model file {} does not exist",
            path.display()
        )));
    }
    // Mapping a directory fails with ENODEV, "No such device", which names the wrong thing.
    if path.is_dir() {
        return Err(input(anyhow::anyhow!(
            "model {} is a directory, not a GGUF file",
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

/// The runtime error (exit 1) for logits that came out NaN or infinite at `position`:
/// names the first weight of `file` (in the order the forward pass reads them) that is
/// not finite, or says that every weight is.
pub fn non_finite(
    e: engine::sampler::NonFiniteLogits,
    path: &Path,
    file: &weights::MappedFile,
    position: usize,
) -> CliError {
    let culprit = match gguf::GgufFile::parse(file.bytes()) {
        Ok(gguf) => match engine::finite::first_non_finite_weight(&gguf) {
            Some(w) => format!("{w}: {} is corrupt", path.display()),
            None => "every weight is finite, so an activation overflowed".to_string(),
        },
        Err(_) => "the weights could not be scanned".to_string(),
    };
    CliError::Runtime(anyhow::anyhow!(
        "the model's output is not a number at position {position}: {e}; {culprit}"
    ))
}
