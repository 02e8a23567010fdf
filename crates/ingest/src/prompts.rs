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
        assert!(p.question.find("{index}").unwrap() > p.question.find("Reply").unwrap());
        assert!(p.judge_follows());
        assert!(Prompts::parse("[question]\n{chunk}\n").is_err());
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
