//! The naive f64 reference model and the helpers the engine tests share.

pub use engine::LoadError;
pub use engine::forward::{EvalError, Logits, Session, SessionConfig};
pub use engine::model::Model;
pub use gguf::{ArrayView, GgmlType, GgufFile, TensorInfo, Value, ValueType};
pub use testkit::quant::{dequantize_q4_0, dequantize_q4_1, dequantize_q8_0};
pub use testkit::{
    GgufWriter, MetaArray, MetaValue, OutputHead, SplitMix64, TensorSpec, TinyLlama,
    TinyLlamaConfig, WeightType, ggml, tiny_llama,
};

// ---------------------------------------------------------------------------------------
// The reference.

/// A matrix in ggml layout: `rows` rows of `cols` values; `y[r] = Σ_c w[r][c] · x[c]`.
pub struct Mat {
    pub cols: usize,
    pub w: Vec<f64>,
}

impl Mat {
    pub fn mul(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), self.cols, "matrix input width");
        self.w
            .chunks_exact(self.cols)
            .map(|row| dot(row, x))
            .collect()
    }

    pub fn row(&self, r: usize) -> Vec<f64> {
        self.w[r * self.cols..(r + 1) * self.cols].to_vec()
    }
}

pub struct RefLayer {
    pub attn_norm: Vec<f64>,
    pub wq: Mat,
    pub wk: Mat,
    pub wv: Mat,
    pub wo: Mat,
    pub ffn_norm: Vec<f64>,
    pub gate: Mat,
    pub up: Mat,
    pub down: Mat,
}

/// A Llama decoder evaluated the slow way.
pub struct Reference {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
    pub rope_base: f64,
    pub embd: Mat,
    pub layers: Vec<RefLayer>,
    pub output_norm: Vec<f64>,
    pub output: Mat,
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let scale = 1.0 / (dot(x, x) / x.len() as f64 + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * scale * g).collect()
}

pub fn add(x: &mut [f64], y: &[f64]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// RoPE, "normal" mode: pairs `(2i, 2i+1)` of each head turned by `pos · base^(-2i/hd)`.
pub fn rope(x: &mut [f64], hd: usize, pos: usize, base: f64) {
    for head in x.chunks_exact_mut(hd) {
        for i in 0..hd / 2 {
            let theta = pos as f64 * base.powf(-2.0 * i as f64 / hd as f64);
            let (c, s) = (theta.cos(), theta.sin());
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * c - b * s;
            head[2 * i + 1] = a * s + b * c;
        }
    }
}

/// What the engine's f16 cache keeps of a K or V value.
pub fn to_f16(x: Vec<f64>) -> Vec<f64> {
    x.into_iter()
        .map(|v| f64::from(half::f16::from_f64(v).to_f32()))
        .collect()
}

pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// The tensor's values as stored: float types read, block types dequantized.
pub fn stored_values(info: &TensorInfo<'_>) -> Vec<f32> {
    let data = info.data();
    match info.ggml_type() {
        GgmlType::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        GgmlType::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        GgmlType::Q8_0 => dequantize_q8_0(data),
        GgmlType::Q4_0 => dequantize_q4_0(data),
        GgmlType::Q4_1 => dequantize_q4_1(data),
        other => panic!("{}: the reference has no decoder for {other}", info.name()),
    }
}

impl Reference {
    /// The model `bytes` holds, shaped as `tiny` says. Checks on the way that the file
    /// holds the values testkit recorded (exactly for f32, to f16 precision for f16).
    pub fn new(tiny: &TinyLlama, bytes: &[u8]) -> Reference {
        let c = &tiny.config;
        let file = GgufFile::parse(bytes).expect("the model parses");
        let vector = |name: &str| -> Vec<f64> {
            let info = file
                .tensor(name)
                .unwrap_or_else(|| panic!("{name} is in the file"));
            let stored = stored_values(info);
            let recorded = &tiny
                .tensor(name)
                .unwrap_or_else(|| panic!("{name} recorded"))
                .values;
            assert_eq!(stored.len(), recorded.len(), "{name}: element count");
            match info.ggml_type() {
                GgmlType::F32 => assert_eq!(&stored, recorded, "{name}: f32 values"),
                GgmlType::F16 => {
                    for (s, r) in stored.iter().zip(recorded) {
                        assert_eq!(*s, half::f16::from_f32(*r).to_f32(), "{name}: f16 value");
                    }
                }
                _ => {}
            }
            stored.into_iter().map(f64::from).collect()
        };
        let mat = |name: &str, cols: usize| Mat {
            cols,
            w: vector(name),
        };
        let d = c.d_model;
        let layers = (0..c.n_layers)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}.weight");
                RefLayer {
                    attn_norm: vector(&n("attn_norm")),
                    wq: mat(&n("attn_q"), d),
                    wk: mat(&n("attn_k"), d),
                    wv: mat(&n("attn_v"), d),
                    wo: mat(&n("attn_output"), d),
                    ffn_norm: vector(&n("ffn_norm")),
                    gate: mat(&n("ffn_gate"), d),
                    up: mat(&n("ffn_up"), d),
                    down: mat(&n("ffn_down"), c.ffn_dim),
                }
            })
            .collect();
        let output = match c.output {
            OutputHead::Tied => mat("token_embd.weight", d),
            OutputHead::Separate => mat("output.weight", d),
        };
        Reference {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: d / c.n_heads,
            eps: f64::from(c.rms_norm_eps),
            rope_base: f64::from(c.rope_freq_base),
            embd: mat("token_embd.weight", d),
            layers,
            output_norm: vector("output_norm.weight"),
            output,
        }
    }

    /// Logits at every position of `tokens`, starting at position 0.
    pub fn logits(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let hd = self.head_dim;
        let group = self.n_heads / self.n_kv_heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut x: Vec<Vec<f64>> = tokens.iter().map(|&t| self.embd.row(t as usize)).collect();
        for l in &self.layers {
            let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
            for (pos, xt) in x.iter().enumerate() {
                let xn = rms_norm(xt, &l.attn_norm, self.eps);
                let (mut q, mut k) = (l.wq.mul(&xn), l.wk.mul(&xn));
                rope(&mut q, hd, pos, self.rope_base);
                rope(&mut k, hd, pos, self.rope_base);
                qs.push(q);
                ks.push(to_f16(k));
                vs.push(to_f16(l.wv.mul(&xn)));
            }
            for (pos, xt) in x.iter_mut().enumerate() {
                let mut att = vec![0.0; self.n_heads * hd];
                for h in 0..self.n_heads {
                    // Query head h reads KV head h / group (llama.cpp's grouping).
                    let kv = (h / group) * hd..(h / group + 1) * hd;
                    let q = &qs[pos][h * hd..(h + 1) * hd];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|s| dot(q, &ks[s][kv.clone()]) * scale)
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = weights.iter().sum();
                    for (s, w) in weights.iter().enumerate() {
                        for (o, v) in att[h * hd..(h + 1) * hd].iter_mut().zip(&vs[s][kv.clone()]) {
                            *o += w / sum * v;
                        }
                    }
                }
                add(xt, &l.wo.mul(&att));
                let xn = rms_norm(xt, &l.ffn_norm, self.eps);
                let hidden: Vec<f64> = l
                    .gate
                    .mul(&xn)
                    .iter()
                    .zip(l.up.mul(&xn))
                    .map(|(g, u)| silu(*g) * u)
                    .collect();
                add(xt, &l.down.mul(&hidden));
            }
        }
        x.iter()
            .map(|xt| self.output.mul(&rms_norm(xt, &self.output_norm, self.eps)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Files: the tiny model, and the same file taken apart and written again with edits.

/// A GGUF file as metadata pairs and tensors, to edit and write back.
pub struct Parts {
    pub meta: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorSpec>,
}

pub fn meta_array(a: &ArrayView<'_>) -> MetaArray {
    match a.elem_type() {
        ValueType::String => MetaArray::String(
            a.iter_bytes()
                .expect("elements of the declared type")
                .map(<[u8]>::to_vec)
                .collect(),
        ),
        ValueType::I32 => MetaArray::I32(
            a.iter_i32()
                .expect("elements of the declared type")
                .collect(),
        ),
        ValueType::F32 => MetaArray::F32(
            a.iter_f32()
                .expect("elements of the declared type")
                .collect(),
        ),
        other => panic!("array {}: tiny models have no {other} arrays", a.key()),
    }
}

pub fn meta_value(v: &Value<'_>) -> MetaValue {
    match *v {
        Value::U8(x) => MetaValue::U8(x),
        Value::I8(x) => MetaValue::I8(x),
        Value::U16(x) => MetaValue::U16(x),
        Value::I16(x) => MetaValue::I16(x),
        Value::U32(x) => MetaValue::U32(x),
        Value::I32(x) => MetaValue::I32(x),
        Value::U64(x) => MetaValue::U64(x),
        Value::I64(x) => MetaValue::I64(x),
        Value::F32(x) => MetaValue::F32(x),
        Value::F64(x) => MetaValue::F64(x),
        Value::Bool(x) => MetaValue::Bool(x),
        Value::String(s) => MetaValue::String(s.to_vec()),
        Value::Array(a) => MetaValue::Array(meta_array(&a)),
    }
}

impl Parts {
    pub fn of(bytes: &[u8]) -> Parts {
        let file = GgufFile::parse(bytes).expect("the model parses");
        Parts {
            meta: file
                .metadata()
                .iter()
                .map(|kv| (kv.key().into(), meta_value(kv.value())))
                .collect(),
            tensors: file
                .tensors()
                .iter()
                .map(|t| TensorSpec {
                    name: t.name().into(),
                    ggml_type: t.ggml_type().id(),
                    dims: t.dims().to_vec(),
                    data: t.data().to_vec(),
                })
                .collect(),
        }
    }

    pub fn set_meta(&mut self, key: &str, value: MetaValue) {
        let kv = self
            .meta
            .iter_mut()
            .find(|(k, _)| k == key)
            .expect("key present");
        kv.1 = value;
    }

    pub fn tensor_mut(&mut self, name: &str) -> &mut TensorSpec {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name.as_bytes())
            .expect("tensor present")
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let w = self
            .meta
            .iter()
            .fold(GgufWriter::new(), |w, (k, v)| w.metadata(k, v.clone()));
        let w = self.tensors.iter().fold(w, |w, t| {
            w.tensor(&t.name, t.ggml_type, &t.dims, t.data.clone())
        });
        w.to_bytes()
    }
}

pub fn tiny(cfg: TinyLlamaConfig) -> TinyLlama {
    tiny_llama(&cfg)
}

pub fn config(weight_type: WeightType) -> TinyLlamaConfig {
    TinyLlamaConfig {
        weight_type,
        ..TinyLlamaConfig::default()
    }
}

/// The F32 model with every matrix stored as F16 (testkit writes no F16 models itself).
pub fn as_f16(model: &TinyLlama) -> Vec<u8> {
    let mut parts = Parts::of(&model.bytes);
    for t in &mut parts.tensors {
        if t.dims.len() == 2 {
            let name = String::from_utf8(t.name.clone()).expect("ASCII names");
            t.data = testkit::f16_bytes(&model.tensor(&name).expect("recorded").values);
            t.ggml_type = ggml::F16;
        }
    }
    parts.to_bytes()
}

/// `n` token ids spread over the whole vocabulary (specials included), reproducibly.
pub fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| rng.below(testkit::vocab().len() as u64) as u32)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Running the engine and comparing.

pub fn session_config(n_ctx: usize, ubatch: usize) -> SessionConfig {
    SessionConfig::new(n_ctx, 2, ubatch)
}

/// Logits at every position of `tokens`, from a fresh session.
pub fn engine_logits(bytes: &[u8], tokens: &[u32], ubatch: usize) -> Vec<f32> {
    let file = GgufFile::parse(bytes).expect("the model parses");
    let model = Model::from_gguf(&file).expect("the model loads");
    let mut s = Session::unbudgeted(&model, session_config(256, ubatch)).expect("session");
    s.eval(tokens, Logits::All).expect("eval").to_vec()
}

/// For each position: the largest |engine − reference| over the largest |reference|.
pub fn relative_errors(engine: &[f32], reference: &[Vec<f64>]) -> Vec<f64> {
    let vocab = reference[0].len();
    assert_eq!(
        engine.len(),
        reference.len() * vocab,
        "one row of logits per token"
    );
    engine
        .chunks_exact(vocab)
        .zip(reference)
        .map(|(e, r)| {
            let scale = r.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let diff = e
                .iter()
                .zip(r)
                .fold(0.0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
            diff / scale
        })
        .collect()
}

/// Per-position errors, for failure messages.
pub fn show(errs: &[f64]) -> String {
    errs.iter()
        .map(|e| format!("{e:.1e}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn argmax<T: Copy + PartialOrd>(row: &[T]) -> usize {
    (1..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

/// Positions where engine and reference pick the same most likely token.
pub fn argmax_agreements(engine: &[f32], reference: &[Vec<f64>]) -> usize {
    let vocab = reference[0].len();
    engine
        .chunks_exact(vocab)
        .zip(reference)
        .filter(|(e, r)| argmax(e) == argmax(r))
        .count()
}

/// The reference's logits, checked to be worth comparing against: large enough, and
/// different at every position (so attention and position really matter).
pub fn reference_logits(tiny: &TinyLlama, bytes: &[u8], tokens: &[u32]) -> Vec<Vec<f64>> {
    let r = Reference::new(tiny, bytes).logits(tokens);
    for (i, row) in r.iter().enumerate() {
        let scale = row.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            scale > 0.5 && scale.is_finite(),
            "position {i}: max |logit| {scale}"
        );
        if i > 0 {
            assert_ne!(
                row,
                &r[i - 1],
                "positions {} and {i} give the same logits",
                i - 1
            );
        }
    }
    r
}

/// Float weights: the engine computes in f32 (activations are not quantized for float
/// matrices) with the same f16 cache as the reference, so only f32 rounding separates
/// them. Measured: ≤ 1e-5 of max |logit|, the worst where an f16 rounding of K or V falls
/// the other way. Without the reference's f16 rounding of K and V the gap is 2–5e-4, and a
/// wrong RoPE pairing or KV-head mapping gives 0.3–2, so 1e-4 tells all of those apart.
pub const FLOAT_TOLERANCE: f64 = 1e-4;

pub fn assert_matches_reference(name: &str, tiny: &TinyLlama, bytes: &[u8], tolerance: f64) {
    let toks = tokens(20, 7);
    let want = reference_logits(tiny, bytes, &toks);
    let got = engine_logits(bytes, &toks, 512);
    let errs = relative_errors(&got, &want);
    let worst = errs.iter().copied().fold(0.0, f64::max);
    assert!(
        worst <= tolerance,
        "{name}: relative error {worst:.2e} > {tolerance:.0e}: {}",
        show(&errs)
    );
    assert_eq!(
        argmax_agreements(&got, &want),
        toks.len(),
        "{name}: argmax at every position"
    );
}

// ---------------------------------------------------------------------------------------
// The graph against the reference.
