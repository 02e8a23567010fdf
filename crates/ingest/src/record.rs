//! Output records: one JSON line per question/answer pair in the chosen format, each with
//! its provenance; and the chunk records of a run that does not generate.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `{"messages": [{"role": "user", …}, {"role": "assistant", …}], "meta": …}`
    Messages,
    /// `{"instruction", "input", "output", "meta"}`
    Alpaca,
    /// `{"conversations": [{"from": "human", …}, {"from": "gpt", …}], "meta": …}`
    Sharegpt,
    /// `{"question", "answer", "meta"}`
    Raw,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Messages => "messages",
            Format::Alpaca => "alpaca",
            Format::Sharegpt => "sharegpt",
            Format::Raw => "raw",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        [
            Format::Messages,
            Format::Alpaca,
            Format::Sharegpt,
            Format::Raw,
        ]
        .into_iter()
        .find(|f| f.name() == s)
    }
}

/// Where a record came from and how it was made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// The record's id: hash of chunk hash, question index, model digest, prompt version.
    pub id: String,
    pub source: String,
    /// Byte range in the source.
    pub bytes: [u64; 2],
    pub chunk_hash: String,
    pub model_digest: String,
    pub prompt_version: String,
    pub question_index: u32,
    pub judge_score: u32,
    /// Share of the answer's words its chunk states ([`crate::ground`]), 0..=1.
    pub grounding: f32,
}

/// One question/answer pair in `format`.
pub fn qa_line(format: Format, question: &str, answer: &str, meta: &Meta) -> String {
    let v = match format {
        Format::Messages => json!({
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ],
            "meta": meta,
        }),
        Format::Alpaca => json!({
            "instruction": question, "input": "", "output": answer, "meta": meta,
        }),
        Format::Sharegpt => json!({
            "conversations": [
                {"from": "human", "value": question},
                {"from": "gpt", "value": answer},
            ],
            "meta": meta,
        }),
        Format::Raw => json!({"question": question, "answer": answer, "meta": meta}),
    };
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// A chunk's record (runs without generation).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkRecord {
    pub id: String,
    pub kind: String,
    pub source: String,
    pub bytes: [u64; 2],
    pub chunk_hash: String,
    pub tokens: u64,
}

/// Checks that `line` is a valid record of `format` (the schema of each format, and
/// provenance complete); returns the question, the answer and the meta.
pub fn validate(format: Format, line: &str) -> Result<(String, String, Meta), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let meta: Meta = serde_json::from_value(v.get("meta").cloned().unwrap_or(Value::Null))
        .map_err(|e| format!("meta: {e}"))?;
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let pair = |arr: &Value, key: &str, val: &str, who: [&str; 2]| -> Option<(String, String)> {
        let a = arr.as_array()?;
        if a.len() != 2 || a[0][key] != who[0] || a[1][key] != who[1] {
            return None;
        }
        Some((text(&a[0][val])?, text(&a[1][val])?))
    };
    let obj = v.as_object().ok_or("not an object")?;
    let (q, a) = match format {
        Format::Messages => {
            (obj.len() == 2).then_some(()).ok_or("extra keys")?;
            pair(&v["messages"], "role", "content", ["user", "assistant"])
        }
        Format::Sharegpt => {
            (obj.len() == 2).then_some(()).ok_or("extra keys")?;
            pair(&v["conversations"], "from", "value", ["human", "gpt"])
        }
        Format::Alpaca => (obj.len() == 4 && v["input"] == "")
            .then(|| Some((text(&v["instruction"])?, text(&v["output"])?)))
            .flatten(),
        Format::Raw => (obj.len() == 3)
            .then(|| Some((text(&v["question"])?, text(&v["answer"])?)))
            .flatten(),
    }
    .ok_or_else(|| format!("not a {} record", format.name()))?;
    if meta.id.len() != 32 || meta.chunk_hash.len() != 32 || meta.bytes[0] > meta.bytes[1] {
        return Err("bad provenance".into());
    }
    Ok((q, a, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_validates() {
        let meta = Meta {
            id: "0".repeat(32),
            source: "a.txt".into(),
            bytes: [0, 10],
            chunk_hash: "1".repeat(32),
            model_digest: "2".repeat(16),
            prompt_version: "3".repeat(16),
            question_index: 0,
            judge_score: 8,
            grounding: 0.9,
        };
        for f in [
            Format::Messages,
            Format::Alpaca,
            Format::Sharegpt,
            Format::Raw,
        ] {
            let l = qa_line(f, "Q \"x\"?", "A", &meta);
            assert!(l.ends_with('\n') && !l[..l.len() - 1].contains('\n'));
            let (q, a, m) = validate(f, &l).unwrap();
            assert_eq!((q.as_str(), a.as_str(), m), ("Q \"x\"?", "A", meta.clone()));
            assert_eq!(Format::parse(f.name()), Some(f));
        }
        let l = qa_line(Format::Raw, "Q", "A", &meta);
        assert!(validate(Format::Alpaca, &l).is_err());
    }
}
