//! Choosing the next token from logits: greedy, or sampling in llama.cpp's default order
//! (top-k, top-p, min-p, then temperature).

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
    /// Keep only tokens at least `min_p` times as likely as the likeliest (0 = all).
    pub min_p: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::SAMPLING
        }
    }
}

impl SamplerConfig {
    /// The settings llama.cpp and Ollama sample with when neither the user nor the model
    /// says otherwise (seed 0: the caller picks one).
    pub const SAMPLING: SamplerConfig = SamplerConfig {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        seed: 0,
    };
}

/// The sampling settings a model's authors recommend, from its GGUF metadata
/// (`general.sampling.temp`, `.top_k`, `.top_p`, `.min_p`, as llama.cpp reads them). A
/// value of the wrong type or out of range is left out, as if absent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ModelSampling {
    pub temperature: Option<f32>,
    /// 0 for a key ≤ 0 (llama.cpp's "off": every token).
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
}

impl ModelSampling {
    pub fn from_gguf(file: &gguf::GgufFile<'_>) -> Self {
        let num = |key: &str| {
            file.get(&format!("general.sampling.{key}"))
                .and_then(|v| v.as_f64().or_else(|| v.as_i128().map(|i| i as f64)))
                .filter(|v| v.is_finite())
        };
        let unit = |key: &str| {
            num(key)
                .filter(|v| (0.0..=1.0).contains(v))
                .map(|v| v as f32)
        };
        ModelSampling {
            temperature: num("temp").filter(|&t| t >= 0.0).map(|t| t as f32),
            top_k: num("top_k").map(|k| if k <= 0.0 { 0 } else { k as usize }),
            top_p: unit("top_p").filter(|&p| p > 0.0),
            min_p: unit("min_p"),
        }
    }

    /// Whether the file carries any of the keys.
    pub fn is_empty(&self) -> bool {
        *self == ModelSampling::default()
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

/// A seed from the OS's randomness (std's hash keys), mixed with the time: for runs that
/// were not given one (report it, so the run can be repeated).
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
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
        self.pick(logits)
    }

    /// Picks a token from `logits` where a logit processor set the tokens it forbids to
    /// `-inf` (never picked). Check the row before masking it with [`check_finite`].
    ///
    /// # Errors
    /// [`NonFiniteLogits`] when the row holds NaN or `+inf`, or forbids every token.
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
        self.pick(logits)
    }

    /// [`Sampler::sample`] on a row with at least one finite value, the rest finite or
    /// `-inf`.
    fn pick(&mut self, logits: &[f32]) -> Result<u32, NonFiniteLogits> {
        // False for a NaN temperature too, which then samples greedily.
        let warm = self.cfg.temperature >= GREEDY_BELOW_TEMPERATURE;
        if !warm || logits.len() <= 1 {
            return Ok(argmax(logits));
        }
        // llama.cpp's default chain: top-k, top-p and min-p on the model's own
        // probabilities, then the temperature on what is left. Logits are taken relative to
        // the maximum, so every value is ≤ 0, the largest is exactly 0, and no weight below
        // overflows (a tiny temperature sends the others to −inf, weight 0).
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.cand.clear();
        // Forbidden (-inf) tokens are no candidates: not even the fallback below can
        // pick one.
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(_, &l)| l != f32::NEG_INFINITY)
                .map(|(i, &l)| (l - max, i as u32)),
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
        // Top-p: the smallest prefix whose probability reaches the mass.
        if self.cfg.top_p < 1.0 {
            let sum: f32 = self.cand.iter().map(|c| c.0.exp()).sum();
            let mut keep = self.cand.len();
            let mut acc = 0.0;
            for (i, c) in self.cand.iter().enumerate() {
                acc += c.0.exp() / sum;
                if acc >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep);
        }
        // Min-p: p ≥ min_p · p_max, that is logit − max ≥ ln(min_p); the first token
        // (logit − max = 0) always stays.
        if self.cfg.min_p > 0.0 {
            let floor = self.cfg.min_p.min(1.0).ln();
            let keep = self.cand.iter().take_while(|c| c.0 >= floor).count();
            self.cand.truncate(keep.max(1));
        }
        let inv_t = 1.0 / self.cfg.temperature;
        for c in self.cand.iter_mut() {
            c.0 = (c.0 * inv_t).exp();
        }
        let total: f32 = self.cand.iter().map(|c| c.0).sum();
        let mut r = self.next_f32() * total;
        for c in &self.cand {
            r -= c.0;
            if r <= 0.0 {
                return Ok(c.1);
            }
        }
        Ok(self.cand.last().map_or(0, |c| c.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            min_p: 0.0,
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
            min_p: 0.0,
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
                min_p: 0.0,
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
            min_p: 0.0,
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

    /// Draws `n` tokens from `logits` with `cfg`.
    fn draws(cfg: SamplerConfig, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(cfg);
        (0..n).map(|_| s.sample(logits).unwrap()).collect()
    }

    #[test]
    fn min_p_keeps_tokens_at_least_that_fraction_of_the_likeliest() {
        // Relative to the first token: e^-1 = 0.37, e^-2.5 = 0.08, e^-3.5 = 0.03.
        let logits = [4.0, 3.0, 1.5, 0.5];
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.05,
            seed: 7,
        };
        let got = draws(cfg, &logits, 2000);
        assert!(got.iter().all(|&t| t <= 2), "token 3 is below min-p");
        for t in 0..=2 {
            assert!(got.contains(&t), "token {t} is above min-p: {got:?}");
        }
        // min-p 1 keeps the likeliest alone.
        let only = draws(SamplerConfig { min_p: 1.0, ..cfg }, &logits, 200);
        assert!(only.iter().all(|&t| t == 0));
    }

    #[test]
    fn filters_see_the_models_probabilities_and_temperature_comes_last() {
        // At temperature 100 every survivor is about equally likely, but which tokens
        // survive is decided at the model's own probabilities: min-p 0.05 drops the
        // token 12 logits down (e^-12), so it never comes out however hot the sampling.
        let logits = [2.0, 1.0, -10.0];
        let cfg = SamplerConfig {
            temperature: 100.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.05,
            seed: 11,
        };
        let got = draws(cfg, &logits, 2000);
        assert!(!got.contains(&2), "token 2 is below min-p at temperature 1");
        let ones = got.iter().filter(|&&t| t == 1).count();
        assert!(
            ones > 800,
            "temperature 100 flattens the survivors: {ones} of 2000"
        );
        // Top-p likewise: token 0 holds 73% of the mass at temperature 1, so top-p 0.7
        // keeps it alone even at temperature 100.
        let got = draws(
            SamplerConfig {
                min_p: 0.0,
                top_p: 0.7,
                ..cfg
            },
            &logits,
            500,
        );
        assert!(got.iter().all(|&t| t == 0), "{got:?}");
    }

    #[test]
    fn model_sampling_reads_the_general_sampling_keys() {
        use testkit::{GgufWriter, MetaValue as Val};
        let gguf_with = |kv: &[(&str, Val)]| {
            kv.iter()
                .fold(GgufWriter::new(), |w, (k, v)| w.metadata(k, v.clone()))
                .to_bytes()
        };
        let file = gguf_with(&[
            ("general.sampling.temp", Val::F32(0.6)),
            ("general.sampling.top_k", Val::I32(20)),
            ("general.sampling.top_p", Val::F32(0.9)),
            ("general.sampling.min_p", Val::F32(2.0)),
        ]);
        let g = gguf::GgufFile::parse(&file).unwrap();
        let m = ModelSampling::from_gguf(&g);
        assert_eq!(m.temperature, Some(0.6));
        assert_eq!(m.top_k, Some(20));
        assert!((m.top_p.unwrap() - 0.9).abs() < 1e-6);
        // Out of range: left out.
        assert_eq!(m.min_p, None);
        let off = gguf_with(&[("general.sampling.top_k", Val::I32(-1))]);
        let g = gguf::GgufFile::parse(&off).unwrap();
        assert_eq!(ModelSampling::from_gguf(&g).top_k, Some(0));
        let none = gguf_with(&[]);
        assert!(ModelSampling::from_gguf(&gguf::GgufFile::parse(&none).unwrap()).is_empty());
    }

    #[test]
    fn masked_tokens_are_never_picked() {
        for t in [0.0, 0.7, 5.0] {
            let mut s = Sampler::new(SamplerConfig {
                temperature: t,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: 9,
            });
            let row = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, 0.5];
            for _ in 0..50 {
                let tok = s.sample_masked(&row).unwrap();
                assert!(tok == 1 || tok == 3, "{tok}");
            }
            assert!(s.sample_masked(&[f32::NEG_INFINITY; 3]).is_err());
            assert!(s.sample_masked(&[0.0, f32::NAN]).is_err());
            assert!(s.sample_masked(&[0.0, f32::INFINITY]).is_err());
        }
    }
}
