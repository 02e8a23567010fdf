//! The request's logit processor: presence and frequency penalties, logit bias, min-p and
//! grammar-constrained JSON, as one [`TokenHook`].

use std::collections::HashMap;
use std::sync::Arc;

use engine::sched::TokenHook;

use crate::json::{Grammar, Matcher};

/// Every token's bytes as generated text (empty for tokens that do not render as text),
/// and the end-of-generation tokens: built once per model.
pub struct Vocab {
    pub bytes: Vec<Vec<u8>>,
    pub eog: Vec<u32>,
}

impl Vocab {
    pub fn of(tok: &tokenizer::Tokenizer) -> Vocab {
        let n = tok.vocab_size();
        let bytes = (0..n as u32)
            .map(|i| {
                let id = tokenizer::TokenId(i);
                let rendered = tok
                    .decode_bytes(&[id], tokenizer::Render::Text)
                    .unwrap_or_default();
                if rendered.is_empty() {
                    Vec::new()
                } else {
                    tok.token_bytes(id).map(<[u8]>::to_vec).unwrap_or_default()
                }
            })
            .collect();
        let eog = tok.end_of_generation().iter().map(|t| t.0).collect();
        Vocab { bytes, eog }
    }
}

/// What a request asks of its logits.
#[derive(Clone, Default)]
pub struct Rules {
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    pub grammar: Option<Arc<Grammar>>,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
            && self.logit_bias.is_empty()
            && self.grammar.is_none()
    }
}

/// One request's [`TokenHook`].
pub struct Hook {
    rules: Rules,
    vocab: Arc<Vocab>,
    counts: HashMap<u32, u32>,
    matcher: Option<Matcher>,
    scratch: Option<Matcher>,
    /// Tokens the request may still generate, this one included.
    left: usize,
}

impl Hook {
    pub fn new(rules: Rules, vocab: Arc<Vocab>, max_tokens: usize) -> Hook {
        let matcher = rules.grammar.as_ref().map(|g| g.start());
        Hook {
            scratch: matcher.clone(),
            matcher,
            rules,
            vocab,
            counts: HashMap::new(),
            left: max_tokens,
        }
    }

    fn mask_grammar(&mut self, logits: &mut [f32]) {
        let (Some(g), Some(m)) = (self.rules.grammar.as_deref(), self.matcher.as_ref()) else {
            return;
        };
        let eog = |t: usize| self.vocab.eog.contains(&(t as u32));
        if m.is_complete() {
            for (t, l) in logits.iter_mut().enumerate() {
                if !eog(t) {
                    *l = f32::NEG_INFINITY;
                }
            }
            return;
        }
        let closing = m.closing(g);
        // Too few tokens left to wander: only the shortest completion may follow (every
        // token of it takes at least one byte). Close to that, a token is allowed only if
        // the document can still be closed in the tokens left after it.
        let force = self.left <= closing.len();
        let tight = self.left <= closing.len() + 16;
        let scratch = self.scratch.get_or_insert_with(|| m.clone());
        let mut any = false;
        for (t, l) in logits.iter_mut().enumerate() {
            if *l == f32::NEG_INFINITY {
                continue;
            }
            let bytes = self.vocab.bytes.get(t).map_or(&[][..], Vec::as_slice);
            let ok = !bytes.is_empty()
                && if force {
                    closing.starts_with(bytes)
                } else {
                    scratch.clone_from(m);
                    scratch.feed_all(g, bytes) && (!tight || scratch.closing(g).len() < self.left)
                };
            if ok {
                any = true;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if !any {
            // Nothing the model likes continues the document: take the closing text's
            // first byte from whichever token spells it.
            if let Some(t) = self
                .vocab
                .bytes
                .iter()
                .position(|b| !b.is_empty() && closing.starts_with(b))
            {
                logits[t] = 0.0;
            }
        }
    }
}

impl TokenHook for Hook {
    fn mask(&mut self, logits: &mut [f32]) {
        for &(t, b) in &self.rules.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        let (pp, fp) = (self.rules.presence_penalty, self.rules.frequency_penalty);
        if pp != 0.0 || fp != 0.0 {
            for (&t, &c) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= pp + fp * c as f32;
                }
            }
        }
        self.mask_grammar(logits);
    }

    fn accept(&mut self, token: u32) -> bool {
        *self.counts.entry(token).or_default() += 1;
        self.left = self.left.saturating_sub(1);
        if let (Some(g), Some(m)) = (self.rules.grammar.as_deref(), self.matcher.as_mut()) {
            let bytes = self
                .vocab
                .bytes
                .get(token as usize)
                .map_or(&[][..], Vec::as_slice);
            let _ = m.feed_all(g, bytes);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Arc<Vocab> {
        let words = [
            "{", "}", "\"", "a", "\":", "1", " ", "<eos>", "0", "{\"a\":",
        ];
        Arc::new(Vocab {
            bytes: words
                .iter()
                .map(|w| {
                    if *w == "<eos>" {
                        Vec::new()
                    } else {
                        w.as_bytes().to_vec()
                    }
                })
                .collect(),
            eog: vec![7],
        })
    }

    fn allowed(h: &mut Hook) -> Vec<usize> {
        let mut l = vec![0.0f32; 10];
        h.mask(&mut l);
        (0..10).filter(|&i| l[i].is_finite()).collect()
    }

    #[test]
    fn the_grammar_masks_what_cannot_continue_and_ends_with_eog() {
        let g = Arc::new(Grammar::any_object());
        let rules = Rules {
            grammar: Some(g),
            ..Rules::default()
        };
        let mut h = Hook::new(rules, vocab(), 100);
        assert_eq!(allowed(&mut h), vec![0, 6, 9]);
        h.accept(9);
        // A nested object, a string (`":` starts one), a number, a space.
        assert_eq!(allowed(&mut h), vec![0, 2, 4, 5, 6, 8, 9]);
        h.accept(5);
        assert_eq!(allowed(&mut h), vec![1, 5, 6, 8]);
        h.accept(1);
        assert_eq!(allowed(&mut h), vec![7]);
    }

    #[test]
    fn with_few_tokens_left_only_the_closing_text_may_come() {
        let rules = Rules {
            grammar: Some(Arc::new(Grammar::any_object())),
            ..Rules::default()
        };
        let mut h = Hook::new(rules, vocab(), 5);
        h.accept(9); // {"a":  — closing is `0}`, 4 tokens left
        assert_eq!(allowed(&mut h), vec![0, 2, 4, 5, 6, 8, 9]);
        h.accept(6);
        // 3 left: not a nested `{"a":`, whose closing `0}}` would need 3 more.
        assert_eq!(allowed(&mut h), vec![0, 2, 4, 5, 6, 8]);
        h.accept(6);
        // 2 left, closing `0}`: only its start.
        assert_eq!(allowed(&mut h), vec![8]);
        h.accept(8);
        assert_eq!(allowed(&mut h), vec![1]);
    }

    #[test]
    fn penalties_lower_seen_tokens() {
        let rules = Rules {
            presence_penalty: 1.0,
            frequency_penalty: 0.5,
            ..Rules::default()
        };
        let mut h = Hook::new(rules, vocab(), 10);
        h.accept(3);
        h.accept(3);
        let mut l = vec![0.0f32; 10];
        l[4] = -1.0;
        h.mask(&mut l);
        assert_eq!(l[3], -2.0); // presence 1 + frequency 0.5 × 2
        assert_eq!(l[4], -1.0); // never seen: unchanged
        assert_eq!(l[0], 0.0);
    }
}
