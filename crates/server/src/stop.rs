//! Stop strings across token boundaries: text is held back while it could still be the
//! start of a stop string, so the stop text itself is never sent.

/// Watches generated text for any of its stop strings.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Takes the next piece of text; returns the text that may be sent now and whether a
    /// stop string ended the output (the text before it is returned, the rest dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s)).min() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // Hold back the longest tail that begins some stop string.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(keep_from);
        let out = std::mem::replace(&mut self.held, rest);
        (out, false)
    }

    /// Whatever is held back, when the output ends without a stop string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_string_split_over_pieces_is_never_sent() {
        let mut m = StopMatcher::new(vec!["END".into(), "\n\n".into()]);
        let mut sent = String::new();
        for piece in ["Hello E", "N", "ough; E", "N", "D more"] {
            let (out, stop) = m.push(piece);
            sent.push_str(&out);
            if stop {
                break;
            }
        }
        assert_eq!(sent, "Hello ENough; ");
    }

    #[test]
    fn held_text_comes_out_at_the_end() {
        let mut m = StopMatcher::new(vec!["abc".into()]);
        assert_eq!(m.push("xxab"), ("xx".to_string(), false));
        assert_eq!(m.flush(), "ab");
        let mut none = StopMatcher::new(vec![]);
        assert_eq!(none.push("é"), ("é".to_string(), false));
    }
}
