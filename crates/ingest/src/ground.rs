//! Lexical checks of a generated pair: how much of an answer its chunk states word for
//! word ([`Grounding`]), and whether the answer says more than its question
//! ([`novelty`]).
//!
//! A small model's judge passes most answers, wrong ones among them; what it cannot fake
//! is the document's own wording. An answer's *grounding* is the share of its words that
//! lie in a run of three consecutive words found in the chunk (case and punctuation
//! ignored; an answer of one or two words must appear whole). Answers copied or lightly
//! rephrased from the chunk score near 1; answers the model made up score low, even when
//! they restate the question. The pipeline drops pairs under a threshold
//! (`Options::min_grounding`).

use std::collections::HashSet;

/// A chunk's word trigrams (and its whole word sequence, for answers under three words).
pub struct Grounding {
    trigrams: HashSet<u64>,
    /// The chunk's words joined by single spaces, with a space at each end.
    joined: String,
}

/// Lowercased alphanumeric runs of `text` (the words every lexical check here and in
/// `dedup` compares).
pub(crate) fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn trigram(w: &[String]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(w.join(" ").as_bytes())
}

impl Grounding {
    pub fn new(chunk: &str) -> Grounding {
        let w = words(chunk);
        Grounding {
            trigrams: w.windows(3).map(trigram).collect(),
            joined: format!(" {} ", w.join(" ")),
        }
    }

    /// The share (0..=1) of `text`'s words the chunk states: see the module docs. Text
    /// without words scores 0.
    pub fn coverage(&self, text: &str) -> f32 {
        let w = words(text);
        match w.len() {
            0 => 0.0,
            1 | 2 => {
                let found = self.joined.contains(&format!(" {} ", w.join(" ")));
                if found { 1.0 } else { 0.0 }
            }
            n => {
                let mut covered = vec![false; n];
                for (i, t) in w.windows(3).enumerate() {
                    if self.trigrams.contains(&trigram(t)) {
                        covered[i..i + 3].fill(true);
                    }
                }
                covered.iter().filter(|&&c| c).count() as f32 / n as f32
            }
        }
    }
}

/// Words that carry no content of their own (for [`novelty`]).
const STOP: &[&str] = &[
    "a",
    "an",
    "the",
    "of",
    "to",
    "in",
    "on",
    "for",
    "by",
    "with",
    "as",
    "at",
    "from",
    "and",
    "or",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "it",
    "its",
    "this",
    "that",
    "these",
    "those",
    "what",
    "which",
    "who",
    "whom",
    "how",
    "why",
    "when",
    "where",
    "does",
    "do",
    "did",
    "can",
    "may",
    "must",
    "shall",
    "should",
    "will",
    "would",
    "you",
    "your",
    "they",
    "their",
    "there",
    "any",
    "all",
    "if",
    "not",
    "no",
    "yes",
    "than",
    "then",
    "so",
    "such",
    "about",
    "under",
    "document",
    "passage",
    "according",
    "mean",
    "means",
    "meant",
];

fn content_words(text: &str) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| !STOP.contains(&w.as_str()))
        .collect()
}

/// The share (0..=1) of the answer's content words that its question does not already
/// contain: near 0 for an answer that only restates the question. An answer without
/// content words scores 0.
pub fn novelty(question: &str, answer: &str) -> f32 {
    let q: HashSet<String> = content_words(question).into_iter().collect();
    let a = content_words(answer);
    if a.is_empty() {
        return 0.0;
    }
    a.iter().filter(|w| !q.contains(*w)).count() as f32 / a.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = "The GNU General Public License is a free, copyleft license for \
        software and other kinds of works. Developers that use the GNU GPL protect your \
        rights with two steps: (1) assert copyright on the software, and (2) offer you \
        this License giving you legal permission to copy, distribute and/or modify it.";

    #[test]
    fn copied_answers_score_one_and_made_up_ones_low() {
        let g = Grounding::new(CHUNK);
        assert_eq!(
            g.coverage("The GNU General Public License is a FREE, copyleft license."),
            1.0
        );
        // Rephrased around the document's words: most of it is covered.
        let c = g.coverage(
            "Developers must assert copyright on the software, and offer you this License.",
        );
        assert!((0.6..1.0).contains(&c), "{c}");
        // Restates the question's terms but says something the chunk does not.
        let c = g.coverage(
            "Under the GNU General Public License you must pay a fee to the authors before \
             you distribute copies.",
        );
        assert!(c < 0.4, "{c}");
        assert_eq!(
            g.coverage("The additional restrictions listed in question 1."),
            0.0
        );
    }

    #[test]
    fn answers_that_restate_their_question_have_no_novelty() {
        // Real pairs from a run: the first two say nothing the question did not.
        assert_eq!(
            novelty(
                "What is the name of the GNU General Public License?",
                "GNU General Public License"
            ),
            0.0
        );
        let n = novelty(
            "What is the form of a separately written license or stated exception?",
            "A separately written license or stated exception is a form of a separately \
             written license or stated exception.",
        );
        assert_eq!(n, 0.0);
        let n = novelty(
            "What are the restrictions on the exercise of the rights granted under this \
             License?",
            "You may not impose any further restrictions on the exercise of the rights \
             granted under this License.",
        );
        assert!(n >= 0.2, "{n}");
        assert_eq!(novelty("What is it?", "It is the"), 0.0);
    }

    #[test]
    fn short_answers_must_appear_whole() {
        let g = Grounding::new(CHUNK);
        assert_eq!(g.coverage("copyleft"), 1.0);
        assert_eq!(g.coverage("General Public"), 1.0);
        assert_eq!(g.coverage("Public General"), 0.0);
        assert_eq!(g.coverage("version 3"), 0.0);
        assert_eq!(g.coverage("  ...  "), 0.0);
        assert_eq!(Grounding::new("").coverage("anything at all here"), 0.0);
    }
}
