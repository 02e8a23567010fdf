//! The prompt file: a `[question]` and a `[judge]` section with placeholders, and its
//! version (a hash of its text: any change starts chunks over).

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
            for k in keys {
                if !s.contains(k) {
                    return Err(PromptError(format!("[{name}] lacks {k}")));
                }
            }
            Ok(s)
        };
        Ok(Prompts {
            question: need(question, "question", &["{chunk}"])?,
            judge: need(judge, "judge", &["{chunk}", "{question}", "{answer}"])?,
            version: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes())),
        })
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
    fn default_prompts_parse_and_share_their_start() {
        let p = Prompts::default_prompts();
        let q = p.question.split("{chunk}").next().unwrap();
        let j = p.judge.split("{chunk}").next().unwrap();
        assert_eq!(q, j);
        assert!(Prompts::parse("[question]\n{chunk}\n").is_err());
        let filled = fill(&p.judge, &[("question", "Q?"), ("answer", "{chunk}")], "C");
        assert!(filled.contains("Q?") && filled.contains("Proposed answer: {chunk}"));
        assert!(filled.starts_with("Document:\nC\n"));
    }
}
