//! Inputs to documents to paragraphs, read in slices: files and folders (recursive, with
//! include/exclude globs) or JSONL on stdin; plain text, Markdown, HTML, JSONL and PDF
//! ([`crate::pdf`], page by page).
//!
//! Nothing here (PDF aside) holds more than one paragraph of one document at a time: lines are read
//! through a buffered reader with a cap on their length, and a paragraph that outgrows
//! [`MAX_PARA_BYTES`] is handed on in pieces.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Longest paragraph handed on in one piece; longer ones are cut (at a line end where
/// possible) and the chunker splits them further.
pub const MAX_PARA_BYTES: usize = 16 * 1024;
/// Longest line read at once (a longer line is read in pieces of this size).
const MAX_LINE_BYTES: usize = 64 * 1024;

/// A run of text from one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Para {
    pub text: String,
    /// Byte range in the source (file or stdin stream) that the text came from.
    pub start: u64,
    pub end: u64,
    /// Whether `text` is the source's bytes as they are (offsets inside it map to the
    /// source); false for extracted text (HTML, JSON strings).
    pub exact: bool,
    /// A new document starts here (the chunker never joins two documents).
    pub doc_start: bool,
    /// The document's name: a path, `path#line` for JSONL, `-#line` for stdin.
    pub source: String,
}

/// The kinds of document read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Html,
    Jsonl,
    Pdf,
}

impl Kind {
    /// The kind a file's name says (unknown extensions are read as text).
    pub fn of(path: &Path) -> Kind {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "html" | "htm" | "xhtml" => Kind::Html,
            "jsonl" | "ndjson" => Kind::Jsonl,
            "pdf" => Kind::Pdf,
            _ => Kind::Text,
        }
    }
}

/// Where documents come from.
#[derive(Clone, Debug)]
pub enum Input {
    Path(PathBuf),
    Stdin,
}

/// Include/exclude filters for files found in folders (`*`, `?`, `**`).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl Filter {
    /// Whether a file found under a folder is taken; `rel` is its path below that folder.
    pub fn takes(&self, rel: &str) -> bool {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let hit = |g: &String| {
            if g.contains('/') {
                glob(g, rel)
            } else {
                glob(g, name)
            }
        };
        (self.include.is_empty() || self.include.iter().any(hit)) && !self.exclude.iter().any(hit)
    }
}

/// Glob match: `*` any run without `/`, `**` any run, `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') if p.get(1) == Some(&'*') => {
                let rest = p[2..].strip_prefix(&['/']).unwrap_or(&p[2..]);
                (0..=t.len()).any(|i| go(rest, &t[i..]) || go(&p[2..], &t[i..]))
            }
            Some('*') => (0..=t.len())
                .take_while(|&i| i == 0 || t[i - 1] != '/')
                .any(|i| go(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && t[0] != '/' && go(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(&p, &t)
}

/// Every file the inputs name, folders walked recursively in name order (so two runs see
/// the same order). Folders are listed one at a time: memory follows one folder's width,
/// not the corpus.
pub fn walk(
    inputs: &[Input],
    filter: &Filter,
    mut each: impl FnMut(&Input) -> bool,
    mut problem: impl FnMut(&Path, &io::Error),
) {
    fn dir(
        root: &Path,
        d: &Path,
        filter: &Filter,
        each: &mut dyn FnMut(&Input) -> bool,
        problem: &mut dyn FnMut(&Path, &io::Error),
    ) -> bool {
        let mut names: Vec<PathBuf> = match std::fs::read_dir(d) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                problem(d, &e);
                return true;
            }
        };
        names.sort();
        for p in names {
            if p.is_dir() {
                if !dir(root, &p, filter, each, problem) {
                    return false;
                }
                continue;
            }
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy();
            if filter.takes(&rel) && !each(&Input::Path(p.clone())) {
                return false;
            }
        }
        true
    }
    for i in inputs {
        let go_on = match i {
            Input::Path(p) if p.is_dir() => dir(p, p, filter, &mut each, &mut problem),
            other => each(other),
        };
        if !go_on {
            return;
        }
    }
}

/// Opens an input as a stream of paragraphs.
pub fn open(input: &Input) -> io::Result<Box<dyn Iterator<Item = io::Result<Para>>>> {
    match input {
        Input::Stdin => Ok(Box::new(JsonlReader::new(
            Lines::new(Box::new(io::stdin().lock())),
            "-".into(),
        ))),
        Input::Path(p) => {
            let name = p.display().to_string();
            let kind = Kind::of(p);
            if kind == Kind::Pdf {
                return Ok(Box::new(crate::pdf::PdfReader::open(p)?));
            }
            let mut f = BufReader::with_capacity(64 * 1024, File::open(p)?);
            if f.fill_buf()?.iter().take(8192).any(|&b| b == 0) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "binary file (NUL bytes), not text",
                ));
            }
            let lines = Lines::new(Box::new(f));
            Ok(match kind {
                Kind::Html => Box::new(HtmlReader::new(lines, name)),
                Kind::Jsonl => Box::new(JsonlReader::new(lines, name)),
                _ => Box::new(TextReader::new(lines, name)),
            })
        }
    }
}

/// Lines with their offsets, each at most [`MAX_LINE_BYTES`] (longer ones come in pieces).
pub struct Lines {
    r: Box<dyn BufRead>,
    pos: u64,
    buf: Vec<u8>,
}

impl Lines {
    pub fn new(r: Box<dyn BufRead>) -> Self {
        Lines {
            r,
            pos: 0,
            buf: Vec::new(),
        }
    }

    /// The next line (with its `\n`) and its start offset; `None` at the end.
    fn next_line(&mut self) -> io::Result<Option<(u64, &[u8])>> {
        self.buf.clear();
        let start = self.pos;
        let n = (&mut self.r)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        self.pos += n as u64;
        Ok(Some((start, &self.buf)))
    }
}

/// Plain text and Markdown: paragraphs are runs of non-blank lines, kept byte for byte.
pub struct TextReader {
    lines: Lines,
    name: String,
    first: bool,
    done: bool,
}

impl TextReader {
    pub fn new(lines: Lines, name: String) -> Self {
        TextReader {
            lines,
            name,
            first: true,
            done: false,
        }
    }
}

impl Iterator for TextReader {
    type Item = io::Result<Para>;
    fn next(&mut self) -> Option<io::Result<Para>> {
        if self.done {
            return None;
        }
        let mut text: Vec<u8> = Vec::new();
        let mut start = 0;
        loop {
            let (at, line) = match self.lines.next_line() {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(None) => {
                    self.done = true;
                    break;
                }
                Ok(Some(l)) => l,
            };
            let blank = line.iter().all(u8::is_ascii_whitespace);
            if blank {
                if text.is_empty() {
                    continue;
                }
                break;
            }
            if text.is_empty() {
                start = at;
            }
            text.extend_from_slice(line);
            if text.len() >= MAX_PARA_BYTES {
                break;
            }
        }
        if text.is_empty() {
            return None;
        }
        let end = start + text.len() as u64;
        // Trailing newlines are not part of the paragraph's text or range.
        let trimmed = text.trim_ascii_end().len();
        text.truncate(trimmed);
        let para = Para {
            text: String::from_utf8_lossy(&text).into_owned(),
            start,
            end: end.min(start + trimmed as u64),
            exact: true,
            doc_start: std::mem::take(&mut self.first),
            source: self.name.clone(),
        };
        Some(Ok(para))
    }
}

/// JSONL: every line an object whose `text` field is one document (lines without one
/// are skipped). A line longer than the line cap is not a record and is skipped.
pub struct JsonlReader {
    lines: Lines,
    name: String,
    line_no: u64,
    /// Paragraphs of the current record still to hand on.
    pending: std::collections::VecDeque<Para>,
    done: bool,
    /// Bytes of an over-long line being skipped.
    skipping: bool,
}

impl JsonlReader {
    pub fn new(lines: Lines, name: String) -> Self {
        JsonlReader {
            lines,
            name,
            line_no: 0,
            pending: Default::default(),
            done: false,
            skipping: false,
        }
    }
}

impl Iterator for JsonlReader {
    type Item = io::Result<Para>;
    fn next(&mut self) -> Option<io::Result<Para>> {
        loop {
            if let Some(p) = self.pending.pop_front() {
                return Some(Ok(p));
            }
            if self.done {
                return None;
            }
            let (at, line) = match self.lines.next_line() {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Ok(Some(l)) => l,
            };
            let whole = line.ends_with(b"\n");
            let was_skipping = std::mem::replace(&mut self.skipping, !whole);
            if was_skipping {
                continue;
            }
            self.line_no += 1;
            if !whole && line.len() >= MAX_LINE_BYTES {
                continue;
            }
            let end = at + line.len() as u64;
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            let Some(text) = v.get("text").and_then(|t| t.as_str()) else {
                continue;
            };
            let source = format!("{}#{}", self.name, self.line_no);
            let mut first = true;
            for piece in text.split("\n\n").map(str::trim).filter(|s| !s.is_empty()) {
                self.pending.push_back(Para {
                    text: piece.to_string(),
                    start: at,
                    end,
                    exact: false,
                    doc_start: std::mem::take(&mut first),
                    source: source.clone(),
                });
            }
        }
    }
}

/// HTML: text outside tags, `script`/`style` contents dropped, block elements end
/// paragraphs, common entities decoded, whitespace collapsed.
pub struct HtmlReader {
    lines: Lines,
    name: String,
    first: bool,
    done: bool,
    /// Text of the paragraph being built, and its source range.
    text: String,
    start: Option<u64>,
    end: u64,
    state: HtmlState,
    /// Tag or entity being read.
    tag: String,
    entity: String,
    /// Inside `script` or `style`: the closing tag that ends it.
    skip_until: Option<&'static str>,
    ready: std::collections::VecDeque<Para>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HtmlState {
    Text,
    Tag,
    Entity,
    Comment,
}

const BLOCK_TAGS: &[&str] = &[
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "table",
    "section",
    "article",
    "pre",
    "blockquote",
    "header",
    "footer",
    "title",
    "hr",
    "dd",
    "dt",
    "main",
    "nav",
    "aside",
    "td",
    "th",
    "body",
    "head",
    "html",
];

impl HtmlReader {
    pub fn new(lines: Lines, name: String) -> Self {
        HtmlReader {
            lines,
            name,
            first: true,
            done: false,
            text: String::new(),
            start: None,
            end: 0,
            state: HtmlState::Text,
            tag: String::new(),
            entity: String::new(),
            skip_until: None,
            ready: Default::default(),
        }
    }

    fn push_char(&mut self, c: char, at: u64) {
        if self.skip_until.is_some() {
            return;
        }
        if c.is_whitespace() {
            if !self.text.is_empty() && !self.text.ends_with(' ') {
                self.text.push(' ');
            }
            return;
        }
        if self.start.is_none() {
            self.start = Some(at);
        }
        self.end = at + c.len_utf8() as u64;
        self.text.push(c);
        if self.text.len() >= MAX_PARA_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let t = self.text.trim();
        if let Some(start) = self.start
            && !t.is_empty()
        {
            self.ready.push_back(Para {
                text: t.to_string(),
                start,
                end: self.end,
                exact: false,
                doc_start: std::mem::take(&mut self.first),
                source: self.name.clone(),
            });
        }
        self.text.clear();
        self.start = None;
    }

    fn end_tag(&mut self) {
        let tag = std::mem::take(&mut self.tag);
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if let Some(until) = self.skip_until {
            if closing && name == until {
                self.skip_until = None;
            }
            return;
        }
        if !closing && !tag.ends_with('/') {
            if name == "script" {
                self.skip_until = Some("script");
            } else if name == "style" {
                self.skip_until = Some("style");
            }
        }
        if BLOCK_TAGS.contains(&name.as_str()) {
            self.flush();
        }
    }

    fn feed(&mut self, at: u64, line: &[u8]) {
        let s = String::from_utf8_lossy(line);
        let mut off = at;
        for c in s.chars() {
            let here = off;
            off += c.len_utf8() as u64;
            match self.state {
                HtmlState::Text => match c {
                    '<' => {
                        self.state = HtmlState::Tag;
                        self.tag.clear();
                    }
                    '&' if self.skip_until.is_none() => {
                        self.state = HtmlState::Entity;
                        self.entity.clear();
                    }
                    _ => self.push_char(c, here),
                },
                HtmlState::Tag => {
                    if c == '>' {
                        self.state = HtmlState::Text;
                        self.end_tag();
                    } else {
                        if self.tag.len() < 256 {
                            self.tag.push(c);
                        }
                        if self.tag == "!--" {
                            self.state = HtmlState::Comment;
                            self.tag.clear();
                        }
                    }
                }
                HtmlState::Comment => {
                    self.tag.push(c);
                    if self.tag.len() > 3 {
                        self.tag.remove(0);
                    }
                    if self.tag.ends_with("-->") {
                        self.state = HtmlState::Text;
                        self.tag.clear();
                    }
                }
                HtmlState::Entity => {
                    if c == ';' || self.entity.len() > 10 || !(c.is_alphanumeric() || c == '#') {
                        let e = std::mem::take(&mut self.entity);
                        self.state = HtmlState::Text;
                        match (c, entity(&e)) {
                            (';', Some(ch)) => self.push_char(ch, here),
                            _ => {
                                self.push_char('&', here);
                                for ch in e.chars() {
                                    self.push_char(ch, here);
                                }
                                if c == '<' {
                                    self.state = HtmlState::Tag;
                                    self.tag.clear();
                                } else if c != ';' {
                                    self.push_char(c, here);
                                } else {
                                    self.push_char(';', here);
                                }
                            }
                        }
                    } else {
                        self.entity.push(c);
                    }
                }
            }
        }
    }
}

fn entity(e: &str) -> Option<char> {
    Some(match e {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "mdash" => '—',
        "ndash" => '–',
        "hellip" => '…',
        "copy" => '©',
        _ => {
            let n = e.strip_prefix('#')?;
            let v = match n.strip_prefix(['x', 'X']) {
                Some(h) => u32::from_str_radix(h, 16).ok()?,
                None => n.parse().ok()?,
            };
            char::from_u32(v)?
        }
    })
}

impl Iterator for HtmlReader {
    type Item = io::Result<Para>;
    fn next(&mut self) -> Option<io::Result<Para>> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Some(Ok(p));
            }
            if self.done {
                return None;
            }
            match self.lines.next_line() {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(None) => {
                    self.done = true;
                    self.flush();
                }
                Ok(Some((at, line))) => {
                    let line = line.to_vec();
                    self.feed(at, &line);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paras(r: impl Iterator<Item = io::Result<Para>>) -> Vec<Para> {
        r.map(Result::unwrap).collect()
    }

    fn lines(s: &str) -> Lines {
        Lines::new(Box::new(io::Cursor::new(s.as_bytes().to_vec())))
    }

    #[test]
    fn text_paragraphs_keep_their_byte_ranges() {
        let s = "First line\nsame para.\n\n\nSecond para.\n";
        let p = paras(TextReader::new(lines(s), "t".into()));
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].text, "First line\nsame para.");
        assert_eq!(&s[p[0].start as usize..p[0].end as usize], p[0].text);
        assert_eq!(&s[p[1].start as usize..p[1].end as usize], "Second para.");
        assert!(p[0].doc_start && !p[1].doc_start);
    }

    #[test]
    fn html_drops_script_and_style_and_decodes_entities() {
        let s = "<html><head><style>p{color:red}</style><script>var x = '<p>';</script></head>\n<body><p>Fish &amp; chips &lt;3</p><!-- note <p>hidden</p> --><div>Two\n  lines&#33;</div></body></html>";
        let p = paras(HtmlReader::new(lines(s), "h".into()));
        let t: Vec<&str> = p.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(t, ["Fish & chips <3", "Two lines!"]);
        assert!(s[p[0].start as usize..p[0].end as usize].starts_with("Fish"));
    }

    #[test]
    fn jsonl_takes_the_text_field_of_each_line() {
        let s = "{\"text\":\"A.\\n\\nB.\"}\nnot json\n{\"other\":1}\n{\"text\":\"C\"}\n";
        let p = paras(JsonlReader::new(lines(s), "j".into()));
        let t: Vec<(&str, &str, bool)> = p
            .iter()
            .map(|p| (p.text.as_str(), p.source.as_str(), p.doc_start))
            .collect();
        assert_eq!(
            t,
            [
                ("A.", "j#1", true),
                ("B.", "j#1", false),
                ("C", "j#4", true)
            ]
        );
    }

    #[test]
    fn globs() {
        assert!(glob("*.md", "a.md"));
        assert!(!glob("*.md", "d/a.md"));
        assert!(glob("**/*.md", "d/e/a.md"));
        assert!(glob("**/*.md", "a.md"));
        assert!(glob("a?c", "abc"));
        let f = Filter {
            include: vec!["*.txt".into()],
            exclude: vec!["skip*".into()],
        };
        assert!(f.takes("x/y.txt") && !f.takes("x/skip.txt") && !f.takes("y.md"));
    }

    #[test]
    fn long_paragraphs_come_in_pieces() {
        let s = format!("{}\n", "word ".repeat(20)).repeat(1000);
        let p = paras(TextReader::new(lines(&s), "t".into()));
        assert!(p.len() >= 5);
        assert!(p.iter().all(|p| p.text.len() <= MAX_PARA_BYTES + 101));
        assert_eq!(p.last().unwrap().end as usize, s.trim_end().len());
    }
}
