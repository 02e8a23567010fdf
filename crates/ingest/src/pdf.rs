//! PDF: the text of each page, page by page, through `lopdf`.
//!
//! The file is parsed whole (PDF's cross-reference table sits at its end), so the reader
//! reserves [`parsed_bytes`] of the `documents` pool for it before opening it and refuses a
//! PDF that would take more than half the pool. Text is extracted one page at a time and
//! handed on in paragraphs; each page is a document of its own for the chunker, named
//! `path#page=N`, its byte range the whole file (PDF text has no byte range of its own).
//! An encrypted, damaged or unreadable PDF is an error with its reason; a panic inside the
//! parser is caught and reported the same way.

use std::collections::VecDeque;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use crate::source::{MAX_PARA_BYTES, Para};

/// Memory a parsed PDF may take, per byte of file (objects, decoded streams).
const PARSED_FACTOR: u64 = 4;

/// Bytes of the `documents` pool a PDF of `file_len` bytes is given while it is read.
pub fn parsed_bytes(file_len: u64) -> u64 {
    file_len.saturating_mul(PARSED_FACTOR) + 64 * 1024
}

fn bad(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("PDF: {why}"))
}

/// Paragraphs of a PDF's pages, in page order.
pub struct PdfReader {
    doc: lopdf::Document,
    pages: std::vec::IntoIter<u32>,
    name: String,
    len: u64,
    ready: VecDeque<Para>,
    /// Some page had text (a PDF with none is reported, not passed over in silence).
    any_text: bool,
}

impl PdfReader {
    /// Opens and parses `path`; an encrypted or unparsable file is an error.
    pub fn open(path: &Path) -> io::Result<PdfReader> {
        let len = std::fs::metadata(path)?.len();
        let doc = catch_unwind(AssertUnwindSafe(|| lopdf::Document::load(path)))
            .map_err(|_| bad("the parser failed on this file"))?
            .map_err(|e| match e {
                lopdf::Error::IO(e) => e,
                e => bad(format!("damaged or not a PDF ({e})")),
            })?;
        if doc.is_encrypted() {
            return Err(bad("encrypted (no text without its password)"));
        }
        let pages: Vec<u32> = doc.get_pages().into_keys().collect();
        if pages.is_empty() {
            return Err(bad("no pages"));
        }
        Ok(PdfReader {
            doc,
            pages: pages.into_iter(),
            name: path.display().to_string(),
            len,
            ready: VecDeque::new(),
            any_text: false,
        })
    }

    /// Cuts a page's text into paragraphs (blank lines, or [`MAX_PARA_BYTES`] at a line end).
    fn page(&mut self, n: u32, text: &str) {
        let source = format!("{}#page={n}", self.name);
        let mut cur = String::new();
        let mut first = true;
        let mut push = |cur: &mut String, ready: &mut VecDeque<Para>| {
            let t = cur.trim();
            if !t.is_empty() {
                ready.push_back(Para {
                    text: t.to_string(),
                    start: 0,
                    end: self.len,
                    exact: false,
                    doc_start: std::mem::take(&mut first),
                    source: source.clone(),
                });
            }
            cur.clear();
        };
        for line in text.lines() {
            let line = line.trim_end();
            if line.trim().is_empty() || cur.len() + line.len() + 1 > MAX_PARA_BYTES {
                push(&mut cur, &mut self.ready);
            }
            // A line longer than a paragraph (no breaks in the page text) is cut at chars.
            let mut rest = line;
            while rest.len() > MAX_PARA_BYTES {
                let mut cut = MAX_PARA_BYTES;
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                cur.push_str(&rest[..cut]);
                push(&mut cur, &mut self.ready);
                rest = &rest[cut..];
            }
            if !cur.is_empty() {
                cur.push('\n');
            }
            cur.push_str(rest);
        }
        push(&mut cur, &mut self.ready);
    }
}

impl Iterator for PdfReader {
    type Item = io::Result<Para>;
    fn next(&mut self) -> Option<io::Result<Para>> {
        while self.ready.is_empty() {
            let Some(n) = self.pages.next() else {
                if std::mem::replace(&mut self.any_text, true) {
                    return None;
                }
                return Some(Err(bad(
                    "no text on any page (damaged, or pages that are only images)",
                )));
            };
            let doc = &self.doc;
            let text = catch_unwind(AssertUnwindSafe(|| doc.extract_text(&[n])));
            match text {
                Ok(Ok(text)) => {
                    self.page(n, &text);
                    self.any_text |= !self.ready.is_empty();
                }
                failed => {
                    // The rest of the file is skipped: the reason names the page.
                    self.pages = Vec::new().into_iter();
                    self.any_text = true;
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the parser failed".to_string(),
                    };
                    return Some(Err(bad(format!("page {n}: {why}"))));
                }
            }
        }
        self.ready.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/pdf")
            .join(name)
    }

    #[test]
    fn pages_come_as_paragraphs_named_by_page() {
        let p: Vec<Para> = PdfReader::open(&testdata("two-pages.pdf"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let got: Vec<(&str, &str, bool)> = p
            .iter()
            .map(|p| {
                let page = p.source.rsplit('#').next().unwrap();
                (p.text.as_str(), page, p.doc_start)
            })
            .collect();
        assert_eq!(
            got,
            [
                // An empty text line comes out of lopdf as no line: the page is one paragraph.
                (
                    "The documents pool holds every chunk in flight.\nA second paragraph on page one.",
                    "page=1",
                    true
                ),
                (
                    "Page two says the journal is synced before records count as done.",
                    "page=2",
                    true
                ),
            ],
            "{p:?}"
        );
    }

    #[test]
    fn truncated_and_random_files_are_errors_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let whole = std::fs::read(testdata("two-pages.pdf")).unwrap();
        let cut = dir.path().join("cut.pdf");
        std::fs::write(&cut, &whole[..whole.len() / 3]).unwrap();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let random = dir.path().join("random.pdf");
        std::fs::write(&random, noise).unwrap();
        for f in [&cut, &random] {
            // Either refused when opened, or an error while pages are read: never a panic,
            // never passed over in silence.
            match PdfReader::open(f) {
                Err(e) => assert!(e.to_string().starts_with("PDF: "), "{e}"),
                Ok(r) => {
                    let items: Vec<io::Result<Para>> = r.collect();
                    let err = items.iter().find_map(|p| p.as_ref().err());
                    assert!(err.is_some(), "{f:?} read as good: {items:?}");
                }
            }
        }
        let random_err = PdfReader::open(&random)
            .err()
            .expect("random bytes are not a PDF");
        assert!(random_err.to_string().contains("not a PDF"), "{random_err}");
    }
}
