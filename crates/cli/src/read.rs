//! Reading files a user names (prompts, texts to score) with a cap on the bytes read.
//!
//! `std::fs::read` on `/dev/zero` or a multi-gigabyte log grows until memory runs out;
//! here at most `max_bytes + 1` bytes are read (`Read::take`), and the caller decides what
//! a longer file means. Profiles have their own capped reader in `budget`.

use std::io::Read;
use std::path::Path;

use anyhow::Context;

use crate::exit::{CliError, input};

/// Whether a capped read reached the end of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rest {
    /// The whole file was read.
    None,
    /// The file goes on past the cap; what was read is its first `max_bytes` bytes.
    More,
}

/// The first `max_bytes` bytes of `path` (all of it if shorter), and whether more follow.
pub fn read_capped(path: &Path, max_bytes: u64) -> std::io::Result<(Vec<u8>, Rest)> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        bytes.truncate(usize::try_from(max_bytes).unwrap_or(usize::MAX));
        return Ok((bytes, Rest::More));
    }
    Ok((bytes, Rest::None))
}

/// `bytes` as text, dropping an incomplete UTF-8 character at the end (a cut made by a
/// capped read); `None` if invalid UTF-8 appears anywhere else.
pub fn utf8_prefix(mut bytes: Vec<u8>) -> Result<String, std::string::FromUtf8Error> {
    if let Err(e) = std::str::from_utf8(&bytes)
        && e.error_len().is_none()
    {
        bytes.truncate(e.valid_up_to());
    }
    String::from_utf8(bytes)
}

/// The prompt in `path`, read only as far as a prompt of `ctx` tokens can reach: no token
/// stands for more than [`tokenizer::Tokenizer::longest_token_bytes`] bytes of text, so a
/// longer file is refused (exit 2) once that many bytes are read, however long it is.
pub fn prompt_file(
    path: &Path,
    ctx: usize,
    tokenizer: &tokenizer::Tokenizer,
) -> Result<String, CliError> {
    let per_token = tokenizer.longest_token_bytes();
    let max_bytes = (ctx as u64).saturating_mul(per_token as u64);
    let (bytes, rest) = read_capped(path, max_bytes)
        .with_context(|| format!("cannot read prompt file {}", path.display()))
        .map_err(input)?;
    if rest == Rest::More {
        return Err(input(anyhow::anyhow!(
            "prompt file {} is over {max_bytes} bytes: more than --ctx {ctx} tokens hold (a \
             token stands for at most {per_token} bytes); raise --ctx or shorten the prompt",
            path.display()
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        input(anyhow::anyhow!(
            "prompt file {} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn finding6_an_endless_file_is_read_only_to_the_cap() {
        let (bytes, rest) = read_capped(Path::new("/dev/zero"), 4096).unwrap();
        assert_eq!((bytes.len(), rest), (4096, Rest::More));
    }

    #[test]
    fn short_files_are_read_whole_and_cut_characters_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        std::fs::write(&path, "héllo").unwrap();
        assert_eq!(
            read_capped(&path, 6).unwrap(),
            ("héllo".as_bytes().to_vec(), Rest::None)
        );
        let (cut, rest) = read_capped(&path, 2).unwrap();
        assert_eq!(rest, Rest::More);
        assert_eq!(utf8_prefix(cut).unwrap(), "h");
        assert!(utf8_prefix(vec![b'a', 0xff, b'b']).is_err());
    }
}
