//! Choosing the next token from logits: greedy, or temperature with top-k and top-p.

/// Temperatures below this sample greedily. Scaled by 1/T, a gap of 10^-4 between two
/// logits becomes 100, a probability ratio of e^-100: sampling there is greedy in all but
/// exact ties. Dividing by a smaller T overflows f32 (1/1e-38 is 1e38, and a logit of 4
/// times that is inf): `--temperature 1e-38` once made inf − inf = NaN weights and sampled
/// garbage.
pub const GREEDY_BELOW_TEMPERATURE: f32 = 1e-6;

/// How to pick tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Below [`GREEDY_BELOW_TEMPERATURE`] (0 included) means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1.0 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
        }
    }
}

/// The logits to sample from hold NaN or an infinity: something upstream (a corrupt
/// weight, an overflowing activation) broke the forward pass, and any token picked from
/// them would be arbitrary.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("the logits hold {value} at vocabulary index {index} (of {len})")]
pub struct NonFiniteLogits {
    /// The first non-finite entry.
    pub index: usize,
    /// Its value (NaN, inf or -inf).
    pub value: f32,
    /// Entries in the row.
    pub len: usize,
}

/// The first entry of `logits` that is NaN or infinite. One pass over the row, against
/// the forward pass that made it (a vocabulary row is ~0.01% of a token's work).
///
/// # Errors
/// [`NonFiniteLogits`] naming the first such entry.
pub fn check_finite(logits: &[f32]) -> Result<(), NonFiniteLogits> {
    match logits.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(NonFiniteLogits {
            index,
            value: logits[index],
            len: logits.len(),
        }),
        None => Ok(()),
    }
}

/// A sampler with its own random state (splitmix64: reproducible for a given seed).
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    state: u64,
    cand: Vec<(f32, u32)>,
}

/// Index of the largest value (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Self {
        Sampler {
            cfg,
            state: cfg.seed ^ 0x5DEE_CE66_D1CE_4E5B,
            cand: Vec::new(),
        }
    }

    fn next_f32(&mut self) -> f32 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Picks a token from `logits`.
    ///
    /// # Errors
    /// [`NonFiniteLogits`] when the row holds NaN or an infinity: no token is picked from
    /// a broken forward pass.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, NonFiniteLogits> {
        check_finite(logits)?;
        Ok(self.pick(logits))
    }

    /// Picks a token from `logits` where some are `-inf`: tokens a logit processor
    /// forbade, never picked. Check the model's own logits with [`check_finite`] before
    /// masking them.
    ///
    /// # Errors
    /// [`NonFiniteLogits`] for NaN or `+inf`, or when every token is forbidden.
    pub fn sample_masked(&mut self, logits: &[f32]) -> Result<u32, NonFiniteLogits> {
        let bad = logits
            .iter()
            .position(|v| v.is_nan() || *v == f32::INFINITY)
            .or_else(|| (!logits.iter().any(|v| v.is_finite())).then_some(0));
        if let Some(index) = bad {
            return Err(NonFiniteLogits {
                index,
                value: logits.get(index).copied().unwrap_or(f32::NAN),
                len: logits.len(),
            });
        }
        Ok(self.pick(logits))
    }

    /// Picks from logits whose maximum is finite (`-inf` entries have weight 0).
    fn pick(&mut self, logits: &[f32]) -> u32 {
        // False for a NaN temperature too, which then samples greedily.
        let warm = self.cfg.temperature >= GREEDY_BELOW_TEMPERATURE;
        if !warm || logits.len() <= 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.cfg.temperature;
        // Scaled after subtracting the maximum: every value is then ≤ 0 and the largest is
        // exactly 0, so no product overflows to +inf and the weights below are in (0, 1].
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(_, &l)| l != f32::NEG_INFINITY)
                .map(|(i, &l)| ((l - max) * inv_t, i as u32)),
        );
        let k = if self.cfg.top_k == 0 {
            self.cand.len()
        } else {
            self.cfg.top_k.min(self.cand.len())
        };
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
        if k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit);
            self.cand.truncate(k);
        }
        self.cand.sort_unstable_by(by_logit);
        let mut sum = 0.0f32;
        for c in self.cand.iter_mut() {
            c.0 = c.0.exp();
            sum += c.0;
        }
        // Top-p: smallest prefix reaching the mass.
        let mut keep = self.cand.len();
        let mut acc = 0.0;
        for (i, c) in self.cand.iter().enumerate() {
            acc += c.0 / sum;
            if acc >= self.cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        self.cand.truncate(keep);
        let total: f32 = self.cand.iter().map(|c| c.0).sum();
        let mut r = self.next_f32() * total;
        for c in &self.cand {
            r -= c.0;
            if r <= 0.0 {
                return c.1;
            }
        }
        self.cand.last().map_or(0, |c| c.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_tokens_are_never_picked_and_nan_is_still_refused() {
        let ninf = f32::NEG_INFINITY;
        let logits = [5.0, ninf, 1.0, ninf];
        let mut greedy = Sampler::new(SamplerConfig::default());
        assert_eq!(greedy.sample_masked(&logits).unwrap(), 0);
        let mut warm = Sampler::new(SamplerConfig {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            seed: 7,
        });
        for _ in 0..200 {
            let t = warm.sample_masked(&logits).unwrap();
            assert!(t == 0 || t == 2);
        }
        assert!(warm.sample_masked(&[ninf, ninf]).is_err());
        assert!(warm.sample_masked(&[0.0, f32::NAN]).is_err());
        assert!(warm.sample_masked(&[0.0, f32::INFINITY]).is_err());
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&[0.5, -1.0, 2.0]).unwrap(), 2);
    }

    #[test]
    fn sampling_is_seeded_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 10) as f32 * 0.3).collect();
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 3,
            top_p: 1.0,
            seed: 42,
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..50).map(|_| s.sample(&logits).unwrap()).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..50).map(|_| s.sample(&logits).unwrap()).collect()
        };
        assert_eq!(a, b);
        // The three largest logits are 2.7 at indices 9, 19, 29, …: only those may come out.
        assert!(a.iter().all(|&t| t % 10 == 9), "{a:?}");
    }

    #[test]
    fn top_p_keeps_only_the_dominant_token() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 1,
        };
        let mut s = Sampler::new(cfg);
        for _ in 0..20 {
            assert_eq!(s.sample(&[10.0, 0.0, 0.0, 0.0]).unwrap(), 0);
        }
    }

    #[test]
    fn finding9_tiny_temperatures_sample_greedily() {
        // Logits past 3.4 overflowed once multiplied by 1/1e-38.
        let logits = [5.0, -7.5, 12.0, 11.999, -40.0];
        for t in [1e-38, 1e-30, 1e-7, f32::MIN_POSITIVE, 1e-45] {
            let mut s = Sampler::new(SamplerConfig {
                temperature: t,
                top_k: 0,
                top_p: 1.0,
                seed: 3,
            });
            for _ in 0..10 {
                assert_eq!(s.sample(&logits), Ok(2), "temperature {t}");
            }
        }
        // Just above the threshold the scaled values stay finite and the top token wins.
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1e-5,
            top_k: 0,
            top_p: 1.0,
            seed: 3,
        });
        assert_eq!(s.sample(&[1e30, -1e30, 0.0]), Ok(0));
    }

    #[test]
    fn finding9_non_finite_logits_are_an_error_naming_the_first() {
        for cfg in [
            SamplerConfig::default(),
            SamplerConfig {
                temperature: 0.8,
                ..SamplerConfig::default()
            },
        ] {
            let mut s = Sampler::new(cfg);
            let err = s.sample(&[0.0, f32::NAN, f32::INFINITY]).unwrap_err();
            assert_eq!((err.index, err.len), (1, 3));
            assert!(err.value.is_nan());
            let err = s.sample(&[0.0, 1.0, f32::NEG_INFINITY]).unwrap_err();
            assert_eq!((err.index, err.value), (2, f32::NEG_INFINITY));
            assert!(
                err.to_string().contains("-inf at vocabulary index 2"),
                "{err}"
            );
        }
    }
}
