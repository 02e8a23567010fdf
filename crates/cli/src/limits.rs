//! The counts a user names (contexts, sequences, repetitions, prompt tokens), checked
//! before any work.
//!
//! A count passes here or the command stops with exit 2 and one line naming the flag and
//! the range it accepts. Sizes that follow from a count (KV bytes, a bench's context) are
//! then checked against the budget by [`crate::fit`]. Without these checks
//! `plan --ctx 18446744073709551615` walked 2^60 blocks, `bench infer --depth 2^64-1` died
//! on "capacity overflow" and `plan --seqs 2^43` wrapped to `kv_bytes: 0, fits: true`.

use engine::config::ModelConfig;
pub use engine::memory::{MAX_CTX_TOKENS, MAX_SEQS};

use crate::exit::{CliError, input};

/// Most timed repetitions a bench takes. Each is a whole measurement (a memory bench
/// point takes at least 20 ms a repetition, twice): 100 keeps the smallest run under
/// seconds, and a median of 100 is as steady as the host allows.
pub const MAX_REPS: usize = 100;

/// `value` of `flag` within `min..=max`, else an input error that names the range.
pub fn count(flag: &str, value: usize, min: usize, max: usize) -> Result<usize, CliError> {
    if value < min {
        return Err(input(anyhow::anyhow!("{flag} must be at least {min}")));
    }
    if value > max {
        return Err(input(anyhow::anyhow!(
            "{flag} {value} is more than {max}, the most llmem accepts"
        )));
    }
    Ok(value)
}

/// A context of `tokens` named by `flag`: 1 to [`MAX_CTX_TOKENS`].
pub fn context(flag: &str, tokens: usize) -> Result<usize, CliError> {
    if tokens == 0 {
        return Err(input(anyhow::anyhow!("{flag} must be at least 1")));
    }
    if tokens > MAX_CTX_TOKENS {
        return Err(input(anyhow::anyhow!(
            "{flag} {tokens} is more than {MAX_CTX_TOKENS} tokens, the longest context llmem \
             plans for"
        )));
    }
    Ok(tokens)
}

/// A sum of token counts (a bench's prompt, depth and generated tokens) as one context,
/// checked as [`context`] is; `what` says what the sum is made of.
pub fn context_sum(what: &str, parts: &[usize]) -> Result<usize, CliError> {
    let sum = parts.iter().try_fold(0usize, |acc, &p| acc.checked_add(p));
    match sum {
        Some(tokens) if tokens <= MAX_CTX_TOKENS => Ok(tokens),
        _ => Err(input(anyhow::anyhow!(
            "{what} is more than {MAX_CTX_TOKENS} tokens, the longest context llmem plans for"
        ))),
    }
}

/// One warning line when `tokens` of context pass what the model was trained for: it runs,
/// but positions past the training length were never seen and output there degrades.
/// `what` names the context as the user gave it (`--ctx 10000`).
pub fn warn_past_training(what: &str, tokens: usize, cfg: &ModelConfig) {
    if tokens > cfg.ctx_train {
        crate::out::warn(&format!(
            "{what}: past the model's training context of {} tokens; output beyond it may \
             degrade",
            cfg.ctx_train
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<usize, CliError>) -> String {
        match r {
            Err(CliError::Input(e)) => e.to_string(),
            other => panic!("expected an input error, got {other:?}"),
        }
    }

    #[test]
    fn finding7_contexts_outside_one_to_the_cap_are_refused_by_name() {
        assert_eq!(context("--ctx", 1).unwrap(), 1);
        assert_eq!(context("--ctx", MAX_CTX_TOKENS).unwrap(), MAX_CTX_TOKENS);
        assert!(message(context("--ctx", 0)).contains("at least 1"));
        let huge = message(context("--ctx", usize::MAX));
        assert!(huge.contains("--ctx 18446744073709551615"), "{huge}");
        assert!(huge.contains("16777216"), "{huge}");
    }

    #[test]
    fn finding7_sums_of_counts_never_wrap() {
        assert_eq!(context_sum("pp + tg", &[512, 128, 16]).unwrap(), 656);
        let wrapped = message(context_sum("--depth + --tg", &[usize::MAX, 2, 16]));
        assert!(wrapped.contains("--depth + --tg"), "{wrapped}");
        assert!(context_sum("x", &[MAX_CTX_TOKENS, 1]).is_err());
    }

    #[test]
    fn counts_name_their_range() {
        assert_eq!(count("--reps", 5, 1, MAX_REPS).unwrap(), 5);
        assert!(message(count("--reps", 0, 1, MAX_REPS)).contains("at least 1"));
        let big = message(count("--reps", 1 << 40, 1, MAX_REPS));
        assert!(big.contains("100, the most"), "{big}");
    }
}
