//! A model's chat template cut into the text around its messages, so that prompts are
//! built as token ids: a user message is encoded as plain text (control-token look-alikes
//! in a document stay text), and a follow-up turn continues a generated reply's own
//! tokens, so the conversation so far is a prefix of the next prompt and its KV is reused.

use engine::chat::Message;
use engine::text::TextModel;
use tokenizer::{BosEos, Special, Tokenizer};

/// The template's text around a user message, a reply and a second user message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turns {
    /// Before the first user message (BOS is added before it).
    open: String,
    /// After a user message: its end, and the assistant's turn opened.
    to_reply: String,
    /// After a reply: its end, and the next user message's turn opened.
    to_user: String,
}

impl Turns {
    /// The pieces of `tm`'s chat template; messages joined by newlines when it has none
    /// (or renders the conversation in a way that cannot be cut at its messages).
    pub fn of(tm: &TextModel<'_>) -> Turns {
        const MARKS: [&str; 3] = [
            "\u{1}LLMEM_A\u{1}",
            "\u{1}LLMEM_B\u{1}",
            "\u{1}LLMEM_C\u{1}",
        ];
        let msgs = [
            Message::user(MARKS[0]),
            Message {
                role: "assistant".into(),
                content: MARKS[1].into(),
            },
            Message::user(MARKS[2]),
        ];
        tm.render_chat(&msgs)
            .ok()
            .and_then(|r| Turns::cut(&r, &MARKS))
            .unwrap_or_else(Turns::plain)
    }

    /// Messages joined by newlines.
    pub fn plain() -> Turns {
        Turns {
            open: String::new(),
            to_reply: "\n".into(),
            to_user: "\n".into(),
        }
    }

    /// `rendered` cut at the three marks, in order, each once.
    fn cut(rendered: &str, marks: &[&str; 3]) -> Option<Turns> {
        let (open, rest) = rendered.split_once(marks[0])?;
        let (_, rest) = rest.split_once(marks[1])?;
        let (to_user, to_reply) = rest.split_once(marks[2])?;
        if marks
            .iter()
            .any(|m| to_reply.contains(m) || open.contains(m))
        {
            return None;
        }
        Some(Turns {
            open: open.into(),
            to_reply: to_reply.into(),
            to_user: to_user.into(),
        })
    }

    /// A conversation's first prompt: `user`'s message, the reply's turn opened.
    pub fn first(&self, tok: &Tokenizer, user: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        tok.encode_into(&self.open, BosEos::Add, Special::Parse, &mut ids);
        tok.encode_into(user, BosEos::Omit, Special::AsText, &mut ids);
        tok.encode_into(&self.to_reply, BosEos::Omit, Special::Parse, &mut ids);
        ids.into_iter().map(|t| t.0).collect()
    }

    /// The prompt that follows `so_far` (a prompt and the reply generated after it, ending
    /// before any end-of-turn token) with `user`'s message, the reply's turn opened.
    pub fn follow(&self, tok: &Tokenizer, so_far: &[u32], user: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        tok.encode_into(&self.to_user, BosEos::Omit, Special::Parse, &mut ids);
        tok.encode_into(user, BosEos::Omit, Special::AsText, &mut ids);
        tok.encode_into(&self.to_reply, BosEos::Omit, Special::Parse, &mut ids);
        let mut out = so_far.to_vec();
        out.extend(ids.into_iter().map(|t| t.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKS: [&str; 3] = ["<1>", "<2>", "<3>"];

    #[test]
    fn a_chatml_conversation_is_cut_at_its_messages() {
        let r = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n<1><|im_end|>\n\
                 <|im_start|>assistant\n<2><|im_end|>\n<|im_start|>user\n<3><|im_end|>\n\
                 <|im_start|>assistant\n";
        let t = Turns::cut(r, &MARKS).unwrap();
        assert_eq!(
            t.open,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"
        );
        assert_eq!(t.to_reply, "<|im_end|>\n<|im_start|>assistant\n");
        assert_eq!(t.to_user, "<|im_end|>\n<|im_start|>user\n");
    }

    #[test]
    fn a_rendering_without_the_marks_in_order_is_not_cut() {
        assert_eq!(Turns::cut("<2><1><3>", &MARKS), None);
        assert_eq!(Turns::cut("<1><2>", &MARKS), None);
        assert_eq!(Turns::cut("<1><2><3><1>", &MARKS), None);
        assert_eq!(
            Turns::cut("<1>\n<2>\n<3>", &MARKS),
            Some(Turns {
                open: String::new(),
                to_reply: String::new(),
                to_user: "\n".into()
            })
        );
    }
}
