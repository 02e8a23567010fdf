//! Element-wise and per-row operations of a Llama-family decoder.

use crate::Isa;

/// `out = x / sqrt(mean(x²) + eps) · w`, for one row.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss = crate::simd::dot_f32(Isa::detect(), x, x);
    let scale = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, xv), wv) in out.iter_mut().zip(x).zip(w) {
        *o = xv * scale * wv;
    }
}

/// `x = x / sqrt(mean(x²) + eps) · w`, in place, for one row.
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let ss = crate::simd::dot_f32(Isa::detect(), x, x);
    let scale = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for (xv, wv) in x.iter_mut().zip(w) {
        *xv = *xv * scale * wv;
    }
}

/// `gate[i] = gelu(gate[i]) · up[i]` (GeGLU), GELU in its tanh approximation:
/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
///
/// As ggml computes it on CPUs (the reference the models are checked against): GELU of
/// the gate rounded to f16, its result rounded to f16 (ggml reads a table indexed by the
/// f16 input), 0 below −10 and the identity above 10.
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    let table = gelu_f16_table();
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        let y = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x
        } else {
            table[usize::from(half::f16::from_f32(x).to_bits())]
        };
        *g = y * u;
    }
}

/// GELU (tanh form) of every f16 value, rounded to f16, as f32: 256 KiB built once, so the
/// GeGLU of a prefill is a table read per value rather than a `tanh` (which took 11% of
/// Gemma 3's prefill).
fn gelu_f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Box<[f32]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| {
                let x = half::f16::from_bits(bits).to_f32();
                half::f16::from_f32(gelu_tanh(x)).to_f32()
            })
            .collect()
    })
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let t = (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh();
    0.5 * x * (1.0 + t)
}

/// `x = cap · tanh(x / cap)` (logit soft-capping).
pub fn softcap(x: &mut [f32], cap: f32) {
    for v in x.iter_mut() {
        *v = cap * (*v / cap).tanh();
    }
}

/// `gate[i] = silu(gate[i]) · up[i]` (SwiGLU), `silu(x) = x / (1 + e^-x)`. On AVX2 the
/// exponential is the vector one attention's softmax uses (relative error about 2e-7,
/// against libm's correctly rounded `expf`): called once per value, libm's was 4% of a
/// batched decode step.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    crate::simd::silu_mul(Isa::detect(), gate, up);
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)` — ggml's "normal" mode, used by `llama` GGUFs.
    Normal,
    /// Halves `(i, i + d/2)` — GPT-NeoX mode, used by `qwen2` and others.
    Neox,
}

/// Rotary position embedding frequencies for one head size.
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f64>,
    style: RopeStyle,
}

impl Rope {
    /// Frequencies `base^(-2i/rot_dims)` for `rot_dims / 2` pairs.
    pub fn new(rot_dims: usize, base: f32, style: RopeStyle) -> Rope {
        let inv_freq = (0..rot_dims / 2)
            .map(|i| f64::from(base).powf(-2.0 * i as f64 / rot_dims as f64))
            .collect();
        Rope { inv_freq, style }
    }

    /// Scales every frequency: by `freq_scale` (linear RoPE scaling: `1 / factor`), and
    /// pair `i`'s by `1 / factors[i]` (a model's `rope_freqs` tensor, as Llama 3.1
    /// stores its long-context scaling).
    ///
    /// # Panics
    /// If `factors` has fewer values than the pairs.
    pub fn scaled(mut self, freq_scale: f32, factors: Option<&[f32]>) -> Rope {
        if let Some(f) = factors {
            assert!(f.len() >= self.inv_freq.len(), "rope factors: too few");
        }
        for (i, v) in self.inv_freq.iter_mut().enumerate() {
            *v *= f64::from(freq_scale);
            if let Some(f) = factors {
                *v /= f64::from(f[i]);
            }
        }
        self
    }

    /// Fills `cs` with `(cos, sin)` of each pair's angle at `pos`.
    pub fn angles(&self, pos: usize, cs: &mut Vec<(f32, f32)>) {
        cs.clear();
        cs.extend(self.inv_freq.iter().map(|f| {
            let a = pos as f64 * f;
            (a.cos() as f32, a.sin() as f32)
        }));
    }

    /// Rotates every head (`head_dim` values each) of `x` by the angles `cs`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, cs: &[(f32, f32)]) {
        let half = head_dim / 2;
        for h in x.chunks_exact_mut(head_dim) {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = match self.style {
                    RopeStyle::Normal => (2 * i, 2 * i + 1),
                    RopeStyle::Neox => (i, i + half),
                };
                let (x0, x1) = (h[a], h[b]);
                h[a] = x0 * c - x1 * s;
                h[b] = x0 * s + x1 * c;
            }
        }
    }
}

/// Natural-log softmax of `logits` evaluated at `index` (the log-probability of one token).
pub fn log_softmax_at(logits: &[f32], index: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    logits[index] - max - sum.ln() as f32
}

/// Converts f32 values to f16 bits.
pub fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    crate::simd::f32_to_f16(Isa::detect(), src, dst);
}

/// Converts f16 bits to f32 values.
pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    crate::simd::f16_to_f32(Isa::detect(), src, dst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_pairs_and_keeps_norms() {
        let r = Rope::new(4, 10000.0, RopeStyle::Normal);
        let mut cs = Vec::new();
        r.angles(3, &mut cs);
        let mut x = vec![1.0, 0.0, 0.5, 0.5];
        r.apply(&mut x, 4, &cs);
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[1] - 3f32.sin()).abs() < 1e-6);
        assert!(((x[2] * x[2] + x[3] * x[3]) - 0.5).abs() < 1e-6);
        let n = Rope::new(4, 10000.0, RopeStyle::Neox);
        let mut y = vec![1.0, 0.0, 0.0, 0.0];
        n.apply(&mut y, 4, &cs);
        assert!((y[0] - 3f32.cos()).abs() < 1e-6 && (y[2] - 3f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn scaled_rope_divides_angles_by_factors_and_scale() {
        let base = Rope::new(4, 10000.0, RopeStyle::Normal);
        let scaled = base.clone().scaled(0.5, Some(&[2.0, 4.0]));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        base.angles(16, &mut a);
        scaled.angles(64, &mut b);
        // Position 64 at scale 0.5 and factor 2 or 4 is position 16 or 8 unscaled.
        assert!((a[0].0 - b[0].0).abs() < 1e-6 && (a[0].1 - b[0].1).abs() < 1e-6);
        base.angles(8, &mut a);
        assert!((a[1].0 - b[1].0).abs() < 1e-6 && (a[1].1 - b[1].1).abs() < 1e-6);
    }

    #[test]
    fn gelu_softcap_and_in_place_norm() {
        let mut g = [0.0, 1.0, -1.0, 3.0, -12.0, 12.0];
        gelu_mul(&mut g, &[1.0, 1.0, 1.0, 2.0, 1.0, 0.5]);
        // Reference values of the tanh form, within f16's half a step (2^-11 relative);
        // beyond ±10, 0 and the identity.
        let want = [0.0, 0.841_192, -0.158_808, 2.0 * 2.996_363, 0.0, 6.0];
        for (x, w) in g.iter().zip(want) {
            assert!((x - w).abs() <= w.abs() / 2048.0, "{x} vs {w}");
        }
        // The table gives what the formula gives on the f16-rounded input, for every
        // f16 value inside (−10, 10).
        for bits in (0..=u16::MAX).step_by(7) {
            let x = half::f16::from_bits(bits).to_f32();
            if x.is_finite() && x.abs() < 10.0 {
                let mut g = [x];
                gelu_mul(&mut g, &[1.0]);
                assert_eq!(g[0], half::f16::from_f32(gelu_tanh(x)).to_f32(), "{x}");
            }
        }
        // The result is an f16 value (times `up`).
        assert_eq!(half::f16::from_f32(g[1]).to_f32(), g[1]);
        let mut l = [0.0, 30.0, -1000.0];
        softcap(&mut l, 30.0);
        assert!(l[0] == 0.0 && (l[1] - 30.0 * 1f32.tanh()).abs() < 1e-4 && l[2] > -30.0001);
        let x = [1.0, -2.0, 3.0, 0.5];
        let w = [1.0, 2.0, 0.5, 1.5];
        let mut out = [0.0; 4];
        rms_norm(&x, &w, 1e-6, &mut out);
        let mut y = x;
        rms_norm_in_place(&mut y, &w, 1e-6);
        assert_eq!(out, y);
    }

    #[test]
    fn log_softmax_sums_to_one() {
        let l = [1.0, 2.0, 3.0, -50.0];
        let s: f32 = (0..4).map(|i| log_softmax_at(&l, i).exp()).sum();
        assert!((s - 1.0).abs() < 1e-5);
    }
}
