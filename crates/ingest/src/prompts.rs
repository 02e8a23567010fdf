//! The prompt file: a `[question]` and a `[judge]` section with placeholders, and its
//! version (a hash of its text: any change starts chunks over). A judge without
//! `{chunk}` follows the pair in the conversation that wrote it ([`Prompts::judge_follows`]).

/// The built-in prompts.
pub const DEFAULT: &str = include_str!("../prompts/default.txt");

/// Parsed prompts.
#[derive(Clone, Debug)]
pub struct Prompts {
    pub question: String,
    pub judge: String,
    /// xxh3-64 of the file's text, 16 hex digits.
    pub version: String,
}

/// Why a prompt file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("prompt file: {0}")]
pub struct PromptError(String);

impl Prompts {
    pub fn parse(text: &str) -> Result<Prompts, PromptError> {
        let mut question = None;
        let mut judge = None;
        let mut cur: Option<&mut Option<String>> = None;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            match line.trim() {
                "[question]" => cur = Some(&mut question),
                "[judge]" => cur = Some(&mut judge),
                _ => {
                    let Some(c) = cur.as_mut() else {
                        if line.trim().is_empty() {
                            continue;
                        }
                        return Err(PromptError(format!(
                            "text before the first section: {line:?}"
                        )));
                    };
                    let s = c.get_or_insert_with(String::new);
                    if !s.is_empty() {
                        s.push('\n');
                    }
                    s.push_str(line);
                }
            }
        }
        let need = |s: Option<String>, name: &str, keys: &[&str]| {
            let s = s
                .map(|s| s.trim().to_string())
                .ok_or_else(|| PromptError(format!("no [{name}] section")))?;
            if s.is_empty() {
                return Err(PromptError(format!("[{name}] is empty")));
            }
            for k in keys {
                if !s.contains(k) {
                    return Err(PromptError(format!("[{name}] lacks {k}")));
                }
            }
            Ok(s)
        };
        Ok(Prompts {
            question: need(question, "question", &["{chunk}"])?,
            judge: match judge {
                Some(j) if j.contains("{chunk}") => {
                    need(Some(j), "judge", &["{chunk}", "{question}", "{answer}"])?
                }
                j => need(j, "judge", &[])?,
            },
            version: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes())),
        })
    }

    /// Whether the judge is a follow-up message after the generated pair (no `{chunk}`)
    /// rather than a prompt of its own.
    pub fn judge_follows(&self) -> bool {
        !self.judge.contains("{chunk}")
    }

    pub fn default_prompts() -> Prompts {
        Prompts::parse(DEFAULT).expect("the built-in prompts parse")
    }
}

/// Words in an [`anchor`].
const ANCHOR_WORDS: usize = 8;

/// The opening words of part `index` (from 0) of `count` of `chunk`, for the `{anchor}`
/// placeholder: the chunk cut into `count` spans of about equal bytes, each moved on to
/// the next sentence or line start (else the next word) in its span, so that a chunk's
/// questions are sent to different passages instead of all asking about its first
/// sentence. Double quotes become single ones (the anchor is quoted in the prompt). Empty
/// for a chunk without words.
pub fn anchor(chunk: &str, index: usize, count: usize) -> String {
    let count = count.max(1);
    let mut at = chunk.len() * index.min(count - 1) / count;
    while !chunk.is_char_boundary(at) {
        at += 1;
    }
    if at > 0 {
        // The next sentence or line after `at`, if the span has one.
        let end = (chunk.len() * (index + 1) / count).min(chunk.len());
        let rest = &chunk[at..];
        let next = rest
            .char_indices()
            .zip(rest.chars().skip(1))
            .find(|&((_, c), n)| c == '\n' || (matches!(c, '.' | '?' | '!' | ';') && n == ' '))
            .map(|((i, c), _)| at + i + c.len_utf8());
        at = match next.filter(|&n| n < end) {
            Some(n) => n,
            // No sentence starts in the span: the next whole word.
            None => rest
                .find(char::is_whitespace)
                .map_or(chunk.len(), |i| at + i),
        };
    }
    if chunk[at..].trim().is_empty() {
        // A chunk too short for its parts: its opening.
        at = 0;
    }
    chunk[at..]
        .split_whitespace()
        .take(ANCHOR_WORDS)
        .collect::<Vec<_>>()
        .join(" ")
        .replace('"', "'")
}

/// `template` with `{key}` replaced by values; `{chunk}` is replaced last so that text
/// in the chunk that looks like a placeholder stays as it is.
pub fn fill(template: &str, vars: &[(&str, &str)], chunk: &str) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s.replacen("{chunk}", chunk, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prompts_parse_with_the_chunk_first_and_a_follow_up_judge() {
        let p = Prompts::default_prompts();
        assert!(p.question.starts_with("Document:\n{chunk}\n"));
        // What differs between a chunk's questions comes after everything they share.
        assert!(p.question.find("{anchor}").unwrap() > p.question.find("Reply").unwrap());
        assert!(p.judge_follows());
        assert!(Prompts::parse("[question]\n{chunk}\n").is_err());
    }

    #[test]
    fn anchors_open_sentences_spread_over_the_chunk() {
        let chunk = "first part of it. Second sentence here is long enough; third \
                     clause follows. Fourth \"quoted\" sentence starts here and goes on.\nLast \
                     line of the chunk, with more words than the anchor takes at all.";
        let a: Vec<String> = (0..3).map(|i| anchor(chunk, i, 3)).collect();
        assert_eq!(a[0], "first part of it. Second sentence here is");
        assert!(
            a[1].starts_with("clause follows.") || a[1].starts_with("Fourth"),
            "{a:?}"
        );
        assert_eq!(a[2], "line of the chunk, with more words than");
        assert!(a.iter().all(|s| !s.contains('"')));
        // Distinct passages, whatever the count, and no panic on multi-byte text.
        assert_ne!(a[0], a[1]);
        assert_ne!(a[1], a[2]);
        for n in 1..8 {
            for i in 0..n {
                anchor("ünïcödé — text. Ещё одна фраза здесь.", i, n);
            }
        }
        assert_eq!(anchor("", 0, 3), "");
        assert_eq!(anchor("one", 2, 3), "one");
    }

    #[test]
    fn a_judge_with_the_chunk_is_a_prompt_of_its_own_and_needs_the_pair() {
        let own = "[question]\n{chunk} Q\n[judge]\n{chunk}\nQ: {question}\nA: {answer}\n";
        let p = Prompts::parse(own).unwrap();
        assert!(!p.judge_follows());
        let filled = fill(&p.judge, &[("question", "Q?"), ("answer", "{chunk}")], "C");
        assert_eq!(filled, "C\nQ: Q?\nA: {chunk}");
        let err = Prompts::parse("[question]\n{chunk}\n[judge]\n{chunk} {question}\n");
        assert!(err.unwrap_err().to_string().contains("lacks {answer}"));
        let empty = Prompts::parse("[question]\n{chunk}\n[judge]\n\n").unwrap_err();
        assert_eq!(empty.to_string(), "prompt file: [judge] is empty");
    }
}
