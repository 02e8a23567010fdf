//! Pre-tokenization: cutting text into words that BPE then encodes one at a time.
//!
//! Each [`PreTokenizer`] is a sequence of stages; a stage cuts every segment the previous
//! stage produced, never across segment boundaries (so after the SmolLM digit stage, `" 7"`
//! is two words, `" "` and `"7"`). The GPT-2 and Llama 3 stages are hand-written matchers
//! of their regexes, which is several times faster than a backtracking regex engine and
//! reproduces llama.cpp's splitting exactly, including `\s+(?!\S)`: a run of whitespace
//! gives its last char to the word that follows it.
//!
//! Character classes follow Unicode general categories (`\p{L}`, `\p{N}`, `\p{P}`) and the
//! White_Space property (`\s`), as in llama.cpp's tables; the Unicode version may be newer
//! than llama.cpp's, which only matters for characters assigned since.

use std::ops::Range;

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

use crate::PreTokenizer;

const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 4;
const PUNCT: u8 = 8;

const fn ascii_flags() -> [u8; 128] {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        t[i] = if c.is_ascii_alphabetic() {
            LETTER
        } else if c.is_ascii_digit() {
            NUMBER
        } else if matches!(c, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ') {
            SPACE
        } else if matches!(
            c,
            b'!' | b'"'
                | b'#'
                | b'%'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b','
                | b'-'
                | b'.'
                | b'/'
                | b':'
                | b';'
                | b'?'
                | b'@'
                | b'['
                | b'\\'
                | b']'
                | b'_'
                | b'{'
                | b'}'
        ) {
            PUNCT
        } else {
            0
        };
        i += 1;
    }
    t
}

const ASCII_FLAGS: [u8; 128] = ascii_flags();

/// Class bits of a char: letter, number, whitespace, punctuation (at most one of the
/// first three is set).
fn flags(c: char) -> u8 {
    if c.is_ascii() {
        return ASCII_FLAGS[c as usize];
    }
    if c.is_whitespace() {
        return SPACE;
    }
    match c.general_category_group() {
        GeneralCategoryGroup::Letter => LETTER,
        GeneralCategoryGroup::Number => NUMBER,
        GeneralCategoryGroup::Punctuation => PUNCT,
        _ => 0,
    }
}

/// The class that a pattern isolates.
#[derive(Clone, Copy)]
enum Class {
    /// `\p{N}`
    Number,
    /// `[0-9]`
    AsciiDigit,
    /// `[\p{P}\$\+<=>\^~\|]`
    PunctLike,
}

impl Class {
    fn contains(self, c: char) -> bool {
        match self {
            Self::Number => flags(c) & NUMBER != 0,
            Self::AsciiDigit => c.is_ascii_digit(),
            Self::PunctLike => {
                flags(c) & PUNCT != 0 || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Stage {
    /// Each char of the class is a word; what lies between is a word.
    IsolateEach(Class),
    /// Each maximal run of the class is a word.
    IsolateRuns(Class),
    /// Each group of exactly three chars of the class, from the left, is a word; one or two
    /// left over stay with the text that follows.
    IsolateTriples(Class),
    /// The GPT-2 regex.
    Gpt2,
    /// The Llama 3 regex with `\p{N}{1,max_digits}`.
    Llama3 { max_digits: usize },
}

fn stages(pre: PreTokenizer) -> &'static [Stage] {
    match pre {
        PreTokenizer::Default => &[
            Stage::IsolateRuns(Class::PunctLike),
            Stage::Gpt2,
            Stage::IsolateRuns(Class::Number),
            Stage::IsolateTriples(Class::AsciiDigit),
        ],
        PreTokenizer::Gpt2 => &[Stage::Gpt2],
        PreTokenizer::DigitsThenGpt2 => &[Stage::IsolateEach(Class::Number), Stage::Gpt2],
        PreTokenizer::Llama3 => &[Stage::Llama3 { max_digits: 3 }],
        PreTokenizer::Qwen2 => &[Stage::Llama3 { max_digits: 1 }],
    }
}

/// Reusable buffers for [`split`].
#[derive(Default)]
pub(crate) struct Splitter {
    words: Vec<Range<usize>>,
    scratch: Vec<Range<usize>>,
}

impl Splitter {
    /// Cuts `text` into words (byte ranges, in order, covering all of `text`).
    pub(crate) fn split(&mut self, pre: PreTokenizer, text: &str) -> &[Range<usize>] {
        self.words.clear();
        if !text.is_empty() {
            self.words.push(0..text.len());
        }
        for &stage in stages(pre) {
            std::mem::swap(&mut self.words, &mut self.scratch);
            self.words.clear();
            for seg in self.scratch.iter() {
                let mut cut = Cutter {
                    text,
                    end: seg.end,
                    prev: seg.start,
                    out: &mut self.words,
                };
                cut.run(stage, seg.start);
            }
        }
        &self.words
    }
}

/// Walks one segment and emits words; `prev` is where the next word starts.
struct Cutter<'a, 'o> {
    text: &'a str,
    end: usize,
    prev: usize,
    out: &'o mut Vec<Range<usize>>,
}

impl Cutter<'_, '_> {
    /// The char at `pos` if it lies inside the segment.
    #[inline]
    fn at(&self, pos: usize) -> Option<char> {
        if pos < self.end {
            self.text[pos..].chars().next()
        } else {
            None
        }
    }

    /// Class bits at `pos`, 0 outside the segment.
    #[inline]
    fn flags_at(&self, pos: usize) -> u8 {
        self.at(pos).map_or(0, flags)
    }

    /// Ends the current word at `end` (nothing if it would be empty).
    #[inline]
    fn emit(&mut self, end: usize) {
        if end > self.prev {
            self.out.push(self.prev..end);
        }
        self.prev = end;
    }

    /// Advances from `pos` over chars whose flags satisfy `keep`.
    #[inline]
    fn skip_while(&self, mut pos: usize, keep: impl Fn(u8) -> bool) -> usize {
        while let Some(c) = self.at(pos) {
            if !keep(flags(c)) {
                break;
            }
            pos += c.len_utf8();
        }
        pos
    }

    fn run(&mut self, stage: Stage, start: usize) {
        match stage {
            Stage::IsolateEach(class) => self.isolate(class, start, Some(1)),
            Stage::IsolateRuns(class) => self.isolate(class, start, None),
            Stage::IsolateTriples(class) => self.triples(class, start),
            Stage::Gpt2 => self.gpt2(start),
            Stage::Llama3 { max_digits } => self.llama3(start, max_digits),
        }
        let end = self.end;
        self.emit(end);
    }

    fn isolate(&mut self, class: Class, start: usize, max_chars: Option<usize>) {
        let mut pos = start;
        while let Some(c) = self.at(pos) {
            if !class.contains(c) {
                pos += c.len_utf8();
                continue;
            }
            self.emit(pos);
            let mut n = 0;
            while let Some(c) = self.at(pos) {
                if !class.contains(c) || max_chars.is_some_and(|m| n == m) {
                    break;
                }
                pos += c.len_utf8();
                n += 1;
            }
            self.emit(pos);
        }
    }

    fn triples(&mut self, class: Class, start: usize) {
        let mut pos = start;
        while let Some(c) = self.at(pos) {
            if !class.contains(c) {
                pos += c.len_utf8();
                continue;
            }
            // A run of the class: whole groups of three become words.
            let mut group_start = pos;
            let mut n = 0;
            while let Some(c) = self.at(pos).filter(|&c| class.contains(c)) {
                pos += c.len_utf8();
                n += 1;
                if n == 3 {
                    self.emit(group_start);
                    self.emit(pos);
                    group_start = pos;
                    n = 0;
                }
            }
        }
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` (ASCII case folded when `fold`); returns the end.
    fn contraction(&self, pos: usize, fold: bool) -> Option<usize> {
        let fix = |c: char| if fold { c.to_ascii_lowercase() } else { c };
        let c1 = fix(self.at(pos + 1)?);
        if matches!(c1, 's' | 't' | 'm' | 'd') {
            return Some(pos + 2);
        }
        let c2 = fix(self.at(pos + 1 + c1.len_utf8())?);
        matches!((c1, c2), ('r', 'e') | ('v', 'e') | ('l', 'l')).then_some(pos + 3)
    }

    /// Handles a whitespace run at `pos` the way `\s+(?!\S)|\s+` does: all of it when it
    /// ends the segment or is one char long, else all but its last char.
    fn whitespace(&mut self, pos: usize, len: usize) -> usize {
        let mut p = pos;
        let mut last = pos;
        let mut count = 0;
        while let Some(c) = self.at(p).filter(|&c| flags(c) & SPACE != 0) {
            last = p;
            p += c.len_utf8();
            count += 1;
        }
        let end = if count > 1 && p < self.end {
            last
        } else if count > 0 {
            p
        } else {
            pos + len
        };
        self.emit(end);
        end
    }

    fn gpt2(&mut self, start: usize) {
        let mut pos = start;
        while let Some(c) = self.at(pos) {
            if c == '\''
                && let Some(end) = self.contraction(pos, false)
            {
                self.emit(end);
                pos = end;
                continue;
            }
            // ` ?X+`: a single leading space joins a run of letters, digits or other.
            let (lead, f2) = if c == ' ' {
                (1, self.flags_at(pos + 1))
            } else {
                (0, flags(c))
            };
            let in_range = c != ' ' || pos + 1 < self.end;
            let keep: Option<fn(u8) -> bool> = if f2 & LETTER != 0 {
                Some(|f| f & LETTER != 0)
            } else if f2 & NUMBER != 0 {
                Some(|f| f & NUMBER != 0)
            } else if in_range && f2 & (SPACE | LETTER | NUMBER) == 0 {
                Some(|f| f & (SPACE | LETTER | NUMBER) == 0)
            } else {
                None
            };
            pos = match keep {
                Some(keep) => {
                    let end = self.skip_while(pos + lead, keep);
                    self.emit(end);
                    end
                }
                None => self.whitespace(pos, c.len_utf8()),
            };
        }
    }

    fn llama3(&mut self, start: usize, max_digits: usize) {
        let mut pos = start;
        while let Some(c) = self.at(pos) {
            let len = c.len_utf8();
            let f = flags(c);
            if c == '\''
                && let Some(end) = self.contraction(pos, true)
            {
                self.emit(end);
                pos = end;
                continue;
            }
            // `[^\r\n\p{L}\p{N}]?\p{L}+`
            if !(c == '\r' || c == '\n' || f & NUMBER != 0)
                && (f & LETTER != 0 || self.flags_at(pos + len) & LETTER != 0)
            {
                pos = self.skip_while(pos + len, |f| f & LETTER != 0);
                self.emit(pos);
                continue;
            }
            // `\p{N}{1,max_digits}`
            if f & NUMBER != 0 {
                let mut n = 0;
                while let Some(d) = self.at(pos).filter(|&d| flags(d) & NUMBER != 0) {
                    if n == max_digits {
                        break;
                    }
                    pos += d.len_utf8();
                    n += 1;
                }
                self.emit(pos);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
            let (lead, f2) = if c == ' ' {
                (1, self.flags_at(pos + 1))
            } else {
                (0, f)
            };
            if f2 & (SPACE | LETTER | NUMBER) == 0 {
                let mut p = self.skip_while(pos + lead, |f| f & (SPACE | LETTER | NUMBER) == 0);
                // `skip_while` stops outside the segment, where flags are 0, too.
                while let Some(r) = self.at(p).filter(|&r| r == '\r' || r == '\n') {
                    p += r.len_utf8();
                }
                self.emit(p);
                pos = p;
                continue;
            }
            // `\s*[\r\n]+`: the run up to its last line break, when it has one.
            let mut p = pos;
            let mut after_break = None;
            while let Some(w) = self.at(p).filter(|&w| flags(w) & SPACE != 0) {
                p += w.len_utf8();
                if w == '\r' || w == '\n' {
                    after_break = Some(p);
                }
            }
            pos = match after_break {
                Some(end) => {
                    self.emit(end);
                    end
                }
                None => self.whitespace(pos, len),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, text: &str) -> Vec<&str> {
        let mut s = Splitter::default();
        s.split(pre, text)
            .iter()
            .map(|r| &text[r.clone()])
            .collect()
    }

    #[test]
    fn gpt2_regex_cases() {
        let w = words(PreTokenizer::Gpt2, "Hello world's  end\n\n  x?! 123abc");
        assert_eq!(
            w,
            [
                "Hello", " world", "'s", " ", " end", "\n\n ", " x", "?!", " 123", "abc"
            ]
        );
        assert_eq!(words(PreTokenizer::Gpt2, "a  "), ["a", "  "]);
        assert_eq!(words(PreTokenizer::Gpt2, " "), [" "]);
        assert_eq!(words(PreTokenizer::Gpt2, "'S"), ["'", "S"]);
        assert_eq!(words(PreTokenizer::Gpt2, "\tx"), ["\t", "x"]);
    }

    #[test]
    fn smollm_isolates_each_digit_before_gpt2() {
        let w = words(PreTokenizer::DigitsThenGpt2, "approximately 311 million  7");
        assert_eq!(
            w,
            ["approximately", " ", "3", "1", "1", " million", "  ", "7"]
        );
        assert_eq!(words(PreTokenizer::DigitsThenGpt2, "x²٣"), ["x", "²", "٣"]);
    }

    #[test]
    fn llama3_and_qwen2_regex_cases() {
        let w = words(PreTokenizer::Llama3, "I'M 12345 ok,\n\n  (x)\r\n");
        assert_eq!(
            w,
            [
                "I", "'M", " ", "123", "45", " ok", ",\n\n", " ", " (", "x", ")\r\n"
            ]
        );
        let w = words(PreTokenizer::Qwen2, "ab 123");
        assert_eq!(w, ["ab", " ", "1", "2", "3"]);
        assert_eq!(words(PreTokenizer::Llama3, "a \n b"), ["a", " \n", " b"]);
    }

    #[test]
    fn default_isolates_punctuation_and_digit_triples() {
        let w = words(PreTokenizer::Default, "a+b 12345!");
        assert_eq!(w, ["a", "+", "b", " ", "123", "45", "!"]);
    }

    #[test]
    fn words_cover_the_text_exactly() {
        let text = "Ünïcödé 😀😀 漢字かな  \u{85}\u{a0} x1٣ 'll\r\n\t";
        for pre in [
            PreTokenizer::Default,
            PreTokenizer::Gpt2,
            PreTokenizer::DigitsThenGpt2,
            PreTokenizer::Llama3,
            PreTokenizer::Qwen2,
        ] {
            let mut s = Splitter::default();
            let mut next = 0;
            for r in s.split(pre, text) {
                assert_eq!(r.start, next, "{pre:?}");
                assert!(r.end > r.start, "{pre:?}");
                next = r.end;
            }
            assert_eq!(next, text.len(), "{pre:?}");
        }
    }
}
