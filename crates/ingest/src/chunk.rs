//! Paragraphs to chunks of about `chunk_tokens` tokens (the model's tokenizer), cut on
//! paragraph, then sentence, then word boundaries, each chunk starting with up to
//! `overlap` tokens of the one before. Chunks never span two documents.

use std::collections::VecDeque;

use crate::source::Para;

/// How chunks are sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkConfig {
    pub chunk_tokens: usize,
    pub overlap: usize,
}

/// A chunk of one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    pub source: String,
    /// Byte range in the source covered by the chunk.
    pub start: u64,
    pub end: u64,
    /// Tokens (the sum over its pieces; joining may change it by a few).
    pub tokens: usize,
    /// xxh3-128 of the text.
    pub hash: u128,
}

struct Unit {
    text: String,
    start: u64,
    end: u64,
    tokens: usize,
    /// Starts a paragraph (joined with a blank line, not a space).
    para: bool,
}

/// Builds chunks from paragraphs; see the module docs.
pub struct Chunker<'a> {
    cfg: ChunkConfig,
    count: &'a dyn Fn(&str) -> usize,
    window: VecDeque<Unit>,
    window_tokens: usize,
    /// The window holds units no chunk has carried yet.
    fresh: bool,
    source: String,
}

impl<'a> Chunker<'a> {
    /// `count` gives the tokens of a piece of text.
    pub fn new(cfg: ChunkConfig, count: &'a dyn Fn(&str) -> usize) -> Self {
        Chunker {
            cfg: ChunkConfig {
                chunk_tokens: cfg.chunk_tokens.max(1),
                overlap: cfg.overlap.min(cfg.chunk_tokens / 2),
            },
            count,
            window: VecDeque::new(),
            window_tokens: 0,
            fresh: false,
            source: String::new(),
        }
    }

    /// Takes one paragraph; finished chunks go to `out`.
    pub fn push(&mut self, para: Para, out: &mut dyn FnMut(Chunk)) {
        if para.doc_start || para.source != self.source {
            self.finish(out);
            self.source.clone_from(&para.source);
        }
        let tokens = (self.count)(&para.text);
        if tokens <= self.cfg.chunk_tokens {
            self.add(
                Unit {
                    text: para.text,
                    start: para.start,
                    end: para.end,
                    tokens,
                    para: true,
                },
                out,
            );
            return;
        }
        let mut first = true;
        for (off, piece) in split_sentences(&para.text) {
            let t = (self.count)(piece);
            let pieces = if t <= self.cfg.chunk_tokens {
                vec![(off, piece, t)]
            } else {
                self.split_words(off, piece)
            };
            for (o, p, t) in pieces {
                let (start, end) = if para.exact {
                    (para.start + o as u64, para.start + (o + p.len()) as u64)
                } else {
                    (para.start, para.end)
                };
                self.add(
                    Unit {
                        text: p.to_string(),
                        start,
                        end,
                        tokens: t,
                        para: std::mem::take(&mut first),
                    },
                    out,
                );
            }
        }
    }

    /// Ends the current document: its last chunk goes to `out`.
    pub fn finish(&mut self, out: &mut dyn FnMut(Chunk)) {
        if self.fresh {
            self.emit(out);
        }
        self.window.clear();
        self.window_tokens = 0;
        self.fresh = false;
    }

    /// Word-boundary pieces of a sentence longer than a chunk, each within a chunk.
    fn split_words<'s>(&self, base: usize, s: &'s str) -> Vec<(usize, &'s str, usize)> {
        let mut out = Vec::new();
        let mut begin = 0;
        let mut last_cut = 0;
        let bounds: Vec<usize> = s
            .char_indices()
            .filter(|(_, c)| c.is_whitespace())
            .map(|(i, _)| i)
            .chain(std::iter::once(s.len()))
            .collect();
        // Grow a piece word by word; counting only each new word keeps it linear.
        let mut tokens = 0;
        for &b in &bounds {
            let word = &s[last_cut..b];
            let t = (self.count)(word);
            if tokens + t > self.cfg.chunk_tokens && last_cut > begin {
                push_trimmed_piece(&mut out, s, base, begin, last_cut, tokens);
                begin = last_cut;
                tokens = 0;
            }
            // A single word longer than a chunk is cut by characters.
            if t > self.cfg.chunk_tokens {
                let mut from = last_cut;
                let step = (word.len() / t.max(1)).max(1) * self.cfg.chunk_tokens;
                while from < b {
                    let mut to = (from + step).min(b);
                    while !s.is_char_boundary(to) {
                        to += 1;
                    }
                    let p = &s[from..to];
                    out.push((base + from, p, (self.count)(p)));
                    from = to;
                }
                begin = b;
                last_cut = b;
                tokens = 0;
                continue;
            }
            tokens += t;
            last_cut = b;
        }
        push_trimmed_piece(&mut out, s, base, begin, s.len(), tokens);
        out
    }

    fn add(&mut self, u: Unit, out: &mut dyn FnMut(Chunk)) {
        if self.fresh && self.window_tokens + u.tokens > self.cfg.chunk_tokens {
            self.emit(out);
            // Keep a tail of at most `overlap` tokens that leaves room for the new unit.
            let keep_max = self
                .cfg
                .overlap
                .min(self.cfg.chunk_tokens.saturating_sub(u.tokens));
            let mut kept = 0;
            let mut n = 0;
            for w in self.window.iter().rev() {
                if kept + w.tokens > keep_max {
                    break;
                }
                kept += w.tokens;
                n += 1;
            }
            while self.window.len() > n {
                self.window.pop_front();
            }
            self.window_tokens = kept;
            if let Some(f) = self.window.front_mut() {
                f.para = true;
            }
        }
        self.window_tokens += u.tokens;
        self.window.push_back(u);
        self.fresh = true;
    }

    fn emit(&mut self, out: &mut dyn FnMut(Chunk)) {
        let mut text = String::new();
        for (i, u) in self.window.iter().enumerate() {
            if i > 0 {
                text.push_str(if u.para { "\n\n" } else { " " });
            }
            text.push_str(&u.text);
        }
        let (Some(first), Some(last)) = (self.window.front(), self.window.back()) else {
            return;
        };
        let hash = xxhash_rust::xxh3::xxh3_128(text.as_bytes());
        out(Chunk {
            start: first.start,
            end: last.end,
            tokens: self.window_tokens,
            source: self.source.clone(),
            text,
            hash,
        });
        self.fresh = false;
    }
}

/// Adds `s[from..to]` without its surrounding whitespace, at its true offset.
fn push_trimmed_piece<'s>(
    out: &mut Vec<(usize, &'s str, usize)>,
    s: &'s str,
    base: usize,
    from: usize,
    to: usize,
    tokens: usize,
) {
    let piece = &s[from..to];
    let lead = piece.len() - piece.trim_start().len();
    let t = piece.trim();
    if !t.is_empty() {
        out.push((base + from + lead, t, tokens));
    }
}

/// Sentences of `s` with their byte offsets: cut after `.`, `!`, `?` followed by
/// whitespace, and at line ends.
fn split_sentences(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut begin = 0;
    let b = s.as_bytes();
    for i in 0..b.len() {
        let end_here = (matches!(b[i], b'.' | b'!' | b'?')
            && b.get(i + 1).is_some_and(|c| c.is_ascii_whitespace()))
            || b[i] == b'\n';
        if end_here {
            push_trimmed(&mut out, s, begin, i + 1);
            begin = i + 1;
        }
    }
    push_trimmed(&mut out, s, begin, s.len());
    out
}

fn push_trimmed<'s>(out: &mut Vec<(usize, &'s str)>, s: &'s str, from: usize, to: usize) {
    let piece = &s[from..to];
    let lead = piece.len() - piece.trim_start().len();
    let t = piece.trim();
    if !t.is_empty() {
        out.push((from + lead, t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per word: easy to reason about.
    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    fn para(text: &str, start: u64, doc_start: bool, source: &str) -> Para {
        Para {
            text: text.into(),
            start,
            end: start + text.len() as u64,
            exact: true,
            doc_start,
            source: source.into(),
        }
    }

    fn chunks(cfg: ChunkConfig, paras: Vec<Para>) -> Vec<Chunk> {
        let count = words;
        let mut c = Chunker::new(cfg, &count);
        let mut out = Vec::new();
        for p in paras {
            c.push(p, &mut |ch| out.push(ch));
        }
        c.finish(&mut |ch| out.push(ch));
        out
    }

    #[test]
    fn paragraphs_fill_chunks_with_overlap() {
        let cfg = ChunkConfig {
            chunk_tokens: 6,
            overlap: 2,
        };
        let out = chunks(
            cfg,
            vec![
                para("a b c", 0, true, "f"),
                para("d e", 10, false, "f"),
                para("g h i j", 20, false, "f"),
            ],
        );
        let t: Vec<&str> = out.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(t, ["a b c\n\nd e", "d e\n\ng h i j"]);
        assert_eq!((out[0].start, out[0].end), (0, 13));
        assert!(out.iter().all(|c| c.tokens <= 6));
    }

    #[test]
    fn long_paragraphs_split_on_sentences_then_words_with_exact_ranges() {
        let cfg = ChunkConfig {
            chunk_tokens: 4,
            overlap: 0,
        };
        let text = "One two. Three four five. Six seven eight nine ten eleven.";
        let out = chunks(cfg, vec![para(text, 100, true, "f")]);
        for c in &out {
            assert!(c.tokens <= 4, "{c:?}");
            let src = &text[(c.start - 100) as usize..(c.end - 100) as usize];
            assert!(src.starts_with(c.text.split(' ').next().unwrap()), "{c:?}");
        }
        let all: Vec<&str> = out.iter().flat_map(|c| c.text.split_whitespace()).collect();
        assert_eq!(all, text.split_whitespace().collect::<Vec<_>>());
    }

    #[test]
    fn documents_never_share_a_chunk() {
        let cfg = ChunkConfig {
            chunk_tokens: 100,
            overlap: 10,
        };
        let out = chunks(
            cfg,
            vec![para("a b", 0, true, "x"), para("c d", 0, true, "y")],
        );
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].source.as_str(), out[1].source.as_str()), ("x", "y"));
    }

    #[test]
    fn a_huge_word_is_cut() {
        let count = |s: &str| s.len().div_ceil(4);
        let mut c = Chunker::new(
            ChunkConfig {
                chunk_tokens: 8,
                overlap: 0,
            },
            &count,
        );
        let mut out = Vec::new();
        c.push(para(&"x".repeat(200), 0, true, "f"), &mut |ch| out.push(ch));
        c.finish(&mut |ch| out.push(ch));
        assert!(out.len() >= 6);
        assert!(out.iter().all(|c| c.tokens <= 8));
        assert_eq!(out.iter().map(|c| c.text.len()).sum::<usize>(), 200);
    }
}
