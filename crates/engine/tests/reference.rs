//! The engine's forward pass against a naive f64 reference of the Llama decoder, on the
//! synthetic models of `testkit`; then the session's equivalences (batching, micro-batch
//! size, rewinding) and its errors, which are values.
//!
//! The reference is written from the architecture's definition, not from the engine: one
//! token at a time, every product a plain f64 sum, weights decoded from the file's bytes
//! with `testkit`'s dequantizers (so both sides see the same weights). It stores K and V
//! rounded to f16, as the engine's cache does, so the comparison isolates the arithmetic.

use engine::LoadError;
use engine::forward::{EvalError, Logits, Session, SessionConfig};
use engine::model::Model;
use gguf::{ArrayView, GgmlType, GgufFile, TensorInfo, Value, ValueType};
use testkit::quant::{dequantize_q4_0, dequantize_q4_1, dequantize_q8_0};
use testkit::{
    GgufWriter, MetaArray, MetaValue, OutputHead, SplitMix64, TensorSpec, TinyLlama,
    TinyLlamaConfig, WeightType, ggml, tiny_llama,
};

// ---------------------------------------------------------------------------------------
// The reference.

/// A matrix in ggml layout: `rows` rows of `cols` values; `y[r] = Σ_c w[r][c] · x[c]`.
struct Mat {
    cols: usize,
    w: Vec<f64>,
}

impl Mat {
    fn mul(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), self.cols, "matrix input width");
        self.w
            .chunks_exact(self.cols)
            .map(|row| dot(row, x))
            .collect()
    }

    fn row(&self, r: usize) -> Vec<f64> {
        self.w[r * self.cols..(r + 1) * self.cols].to_vec()
    }
}

struct RefLayer {
    attn_norm: Vec<f64>,
    wq: Mat,
    wk: Mat,
    wv: Mat,
    wo: Mat,
    ffn_norm: Vec<f64>,
    gate: Mat,
    up: Mat,
    down: Mat,
}

/// A Llama decoder evaluated the slow way.
struct Reference {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    eps: f64,
    rope_base: f64,
    embd: Mat,
    layers: Vec<RefLayer>,
    output_norm: Vec<f64>,
    output: Mat,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let scale = 1.0 / (dot(x, x) / x.len() as f64 + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * scale * g).collect()
}

fn add(x: &mut [f64], y: &[f64]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// RoPE, "normal" mode: pairs `(2i, 2i+1)` of each head turned by `pos · base^(-2i/hd)`.
fn rope(x: &mut [f64], hd: usize, pos: usize, base: f64) {
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
fn to_f16(x: Vec<f64>) -> Vec<f64> {
    x.into_iter()
        .map(|v| f64::from(half::f16::from_f64(v).to_f32()))
        .collect()
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// The tensor's values as stored: float types read, block types dequantized.
fn stored_values(info: &TensorInfo<'_>) -> Vec<f32> {
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
    fn new(tiny: &TinyLlama, bytes: &[u8]) -> Reference {
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
    fn logits(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
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
struct Parts {
    meta: Vec<(String, MetaValue)>,
    tensors: Vec<TensorSpec>,
}

fn meta_array(a: &ArrayView<'_>) -> MetaArray {
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

fn meta_value(v: &Value<'_>) -> MetaValue {
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
    fn of(bytes: &[u8]) -> Parts {
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

    fn set_meta(&mut self, key: &str, value: MetaValue) {
        let kv = self
            .meta
            .iter_mut()
            .find(|(k, _)| k == key)
            .expect("key present");
        kv.1 = value;
    }

    fn tensor_mut(&mut self, name: &str) -> &mut TensorSpec {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name.as_bytes())
            .expect("tensor present")
    }

    fn to_bytes(&self) -> Vec<u8> {
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

fn tiny(cfg: TinyLlamaConfig) -> TinyLlama {
    tiny_llama(&cfg)
}

fn config(weight_type: WeightType) -> TinyLlamaConfig {
    TinyLlamaConfig {
        weight_type,
        ..TinyLlamaConfig::default()
    }
}

/// The F32 model with every matrix stored as F16 (testkit writes no F16 models itself).
fn as_f16(model: &TinyLlama) -> Vec<u8> {
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
fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| rng.below(testkit::vocab().len() as u64) as u32)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Running the engine and comparing.

fn session_config(n_ctx: usize, ubatch: usize) -> SessionConfig {
    SessionConfig {
        n_ctx,
        n_threads: 2,
        ubatch,
    }
}

/// Logits at every position of `tokens`, from a fresh session.
fn engine_logits(bytes: &[u8], tokens: &[u32], ubatch: usize) -> Vec<f32> {
    let file = GgufFile::parse(bytes).expect("the model parses");
    let model = Model::from_gguf(&file).expect("the model loads");
    let mut s = Session::new(&model, session_config(256, ubatch)).expect("session");
    s.eval(tokens, Logits::All).expect("eval").to_vec()
}

/// For each position: the largest |engine − reference| over the largest |reference|.
fn relative_errors(engine: &[f32], reference: &[Vec<f64>]) -> Vec<f64> {
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
fn show(errs: &[f64]) -> String {
    errs.iter()
        .map(|e| format!("{e:.1e}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn argmax<T: Copy + PartialOrd>(row: &[T]) -> usize {
    (1..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

/// Positions where engine and reference pick the same most likely token.
fn argmax_agreements(engine: &[f32], reference: &[Vec<f64>]) -> usize {
    let vocab = reference[0].len();
    engine
        .chunks_exact(vocab)
        .zip(reference)
        .filter(|(e, r)| argmax(e) == argmax(r))
        .count()
}

/// The reference's logits, checked to be worth comparing against: large enough, and
/// different at every position (so attention and position really matter).
fn reference_logits(tiny: &TinyLlama, bytes: &[u8], tokens: &[u32]) -> Vec<Vec<f64>> {
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
const FLOAT_TOLERANCE: f64 = 1e-4;

fn assert_matches_reference(name: &str, tiny: &TinyLlama, bytes: &[u8], tolerance: f64) {
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

#[test]
fn parts_round_trip_the_tiny_model() {
    let m = tiny(config(WeightType::Q4_1));
    assert_eq!(Parts::of(&m.bytes).to_bytes(), m.bytes);
}

#[test]
fn f32_weights_match_the_reference() {
    for output in [OutputHead::Tied, OutputHead::Separate] {
        let m = tiny(TinyLlamaConfig {
            output,
            ..config(WeightType::F32)
        });
        assert_matches_reference(&format!("f32 {output:?}"), &m, &m.bytes, FLOAT_TOLERANCE);
    }
}

#[test]
fn f16_weights_match_the_reference() {
    let m = tiny(config(WeightType::F32));
    let bytes = as_f16(&m);
    let file = GgufFile::parse(&bytes).expect("parses");
    let t = file.tensor("blk.1.ffn_down.weight").expect("present");
    assert_eq!(
        t.ggml_type(),
        GgmlType::F16,
        "the rewrite stored matrices as f16"
    );
    assert_matches_reference("f16", &m, &bytes, FLOAT_TOLERANCE);
}

#[test]
fn quantized_weights_match_the_reference_loosely() {
    // The engine multiplies block-quantized weights with activations quantized to 8 bits
    // per 32-value block (as llama.cpp does): each activation moves by up to half a step,
    // max|block| / 254, i.e. ~0.2% of the block's largest value, and these errors add
    // up over the 2 × 4 quantized products of each layer and the output head. Measured on
    // these models the worst position is 1.5–2.1% of max |logit|; 5% catches a wrong
    // dequantization (a swapped nibble half or a missing offset gives tens of percent)
    // with room for seeds. Near-ties may flip the argmax, so most positions must agree.
    let toks = tokens(20, 7);
    for weight_type in [WeightType::Q8_0, WeightType::Q4_0, WeightType::Q4_1] {
        let m = tiny(config(weight_type));
        let want = reference_logits(&m, &m.bytes, &toks);
        let got = engine_logits(&m.bytes, &toks, 512);
        let errs = relative_errors(&got, &want);
        let worst = errs.iter().copied().fold(0.0, f64::max);
        assert!(
            worst <= 0.05,
            "{weight_type:?}: relative error {worst:.2e}: {}",
            show(&errs)
        );
        let agree = argmax_agreements(&got, &want);
        assert!(
            agree >= toks.len() - 2,
            "{weight_type:?}: argmax agrees at {agree}/20"
        );
    }
}

#[test]
fn head_layouts_and_widths_match_the_reference() {
    let base = config(WeightType::F32);
    let cases = [
        (
            "n_kv_heads = n_heads",
            TinyLlamaConfig {
                n_kv_heads: 4,
                ..base.clone()
            },
        ),
        (
            "n_kv_heads = 1",
            TinyLlamaConfig {
                n_kv_heads: 1,
                ..base.clone()
            },
        ),
        (
            "d_model 128, head_dim 32",
            TinyLlamaConfig {
                d_model: 128,
                ffn_dim: 256,
                n_heads: 4,
                n_kv_heads: 2,
                ..base.clone()
            },
        ),
        (
            "d_model 128, head_dim 64, 3 layers, separate head",
            TinyLlamaConfig {
                d_model: 128,
                ffn_dim: 256,
                n_heads: 2,
                n_kv_heads: 1,
                n_layers: 3,
                output: OutputHead::Separate,
                ..base.clone()
            },
        ),
        (
            "16 query heads on one KV head",
            TinyLlamaConfig {
                d_model: 256,
                ffn_dim: 256,
                n_heads: 16,
                n_kv_heads: 1,
                ..base.clone()
            },
        ),
    ];
    for (name, cfg) in cases {
        let m = tiny(cfg);
        assert_matches_reference(name, &m, &m.bytes, FLOAT_TOLERANCE);
    }
    // One quantized variant with a different shape, at the quantized tolerance.
    let m = tiny(TinyLlamaConfig {
        d_model: 128,
        ffn_dim: 256,
        n_heads: 2,
        n_kv_heads: 1,
        ..config(WeightType::Q8_0)
    });
    let toks = tokens(20, 11);
    let errs = relative_errors(
        &engine_logits(&m.bytes, &toks, 512),
        &reference_logits(&m, &m.bytes, &toks),
    );
    assert!(
        errs.iter().all(|&e| e <= 0.05),
        "Q8_0 d_model 128: {}",
        show(&errs)
    );
}

// ---------------------------------------------------------------------------------------
// Equivalences: the same sequence, evaluated differently, gives the same logits.

/// Batched and token-by-token paths differ only in f32 summation order (and, for decode,
/// attention split over key ranges and merged), so they agree to ~1e-6 relative.
const SAME: f64 = 1e-5;

fn assert_same(name: &str, a: &[f32], b: &[f32], vocab: usize) {
    assert_eq!(a.len(), b.len(), "{name}: lengths");
    for (i, (x, y)) in a.chunks_exact(vocab).zip(b.chunks_exact(vocab)).enumerate() {
        let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = x
            .iter()
            .zip(y)
            .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            f64::from(diff / scale) <= SAME,
            "{name}: position {i} differs by {diff} (max |logit| {scale})"
        );
    }
}

/// Models for the equivalence tests: float, and quantized (whose path quantizes each
/// token's activations separately, so batching must not change them either).
fn equivalence_models() -> Vec<TinyLlama> {
    vec![
        tiny(config(WeightType::F32)),
        tiny(config(WeightType::Q4_1)),
    ]
}

#[test]
fn one_token_at_a_time_equals_one_batch() {
    // 40 tokens: three KV blocks of 16, and decode reads partial blocks.
    let toks = tokens(40, 3);
    for m in equivalence_models() {
        let vocab = m.vocab.len();
        let batch = engine_logits(&m.bytes, &toks, 512);
        let file = GgufFile::parse(&m.bytes).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let mut s = Session::new(&model, session_config(64, 512)).unwrap();
        let mut single = Vec::new();
        for (i, &t) in toks.iter().enumerate() {
            single.extend_from_slice(s.eval(&[t], Logits::All).unwrap());
            assert_eq!(s.n_past(), i + 1);
        }
        assert_same(
            &format!("{:?} one by one", m.config.weight_type),
            &single,
            &batch,
            vocab,
        );
        // Logits::Last of a batch is the last row of Logits::All.
        s.reset();
        let last = s.eval(&toks, Logits::Last).unwrap().to_vec();
        assert_same(
            "Logits::Last",
            &last,
            &batch[(toks.len() - 1) * vocab..],
            vocab,
        );
    }
}

#[test]
fn micro_batch_size_does_not_change_logits() {
    let toks = tokens(40, 5);
    for m in equivalence_models() {
        let vocab = m.vocab.len();
        let whole = engine_logits(&m.bytes, &toks, 512);
        for ubatch in [1, 3, 7, 64] {
            let got = engine_logits(&m.bytes, &toks, ubatch);
            assert_same(
                &format!("{:?} ubatch {ubatch}", m.config.weight_type),
                &got,
                &whole,
                vocab,
            );
        }
    }
}

#[test]
fn truncate_then_eval_equals_a_fresh_session() {
    let toks = tokens(40, 9);
    let other = tokens(40, 10);
    for m in equivalence_models() {
        let vocab = m.vocab.len();
        let file = GgufFile::parse(&m.bytes).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let mut s = Session::new(&model, session_config(64, 512)).unwrap();
        // Mid-block, at a block boundary, just past one, and at zero.
        for keep in [5, 16, 17, 0] {
            s.reset();
            s.eval(&toks, Logits::Last).unwrap();
            s.truncate(keep).unwrap();
            assert_eq!(s.n_past(), keep);
            // Continue with different tokens: stale keys past `keep` must not be seen.
            let got = s.eval(&other[keep..], Logits::All).unwrap().to_vec();
            let fresh_toks: Vec<u32> = toks[..keep].iter().chain(&other[keep..]).copied().collect();
            let fresh = engine_logits(&m.bytes, &fresh_toks, 512);
            let name = format!("{:?} truncate({keep})", m.config.weight_type);
            assert_same(&name, &got, &fresh[keep * vocab..], vocab);
        }
        // Truncating past the end keeps everything.
        s.truncate(1000).unwrap();
        assert_eq!(s.n_past(), 40);
    }
}

#[test]
fn reset_starts_the_sequence_over() {
    let toks = tokens(20, 12);
    let m = tiny(config(WeightType::F32));
    let vocab = m.vocab.len();
    let fresh = engine_logits(&m.bytes, &toks, 512);
    let file = GgufFile::parse(&m.bytes).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let mut s = Session::new(&model, session_config(32, 512)).unwrap();
    // Several rounds in a context that holds only one: reset must give the blocks back.
    for round in 0..4 {
        s.eval(&tokens(20, 100 + round), Logits::Last).unwrap();
        s.reset();
        assert_eq!(s.n_past(), 0);
        let got = s.eval(&toks, Logits::All).unwrap().to_vec();
        assert_same(&format!("round {round}"), &got, &fresh, vocab);
        s.reset();
    }
}

// ---------------------------------------------------------------------------------------
// Errors are values, and leave the session usable.

#[test]
fn out_of_vocabulary_token_is_bad_token() {
    let m = tiny(config(WeightType::F32));
    let vocab = m.vocab.len();
    let file = GgufFile::parse(&m.bytes).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let mut s = Session::new(&model, session_config(64, 512)).unwrap();
    let toks = tokens(10, 4);
    s.eval(&toks[..5], Logits::Last).unwrap();
    for bad in [vocab as u32, u32::MAX] {
        match s.eval(&[3, bad, 4], Logits::All) {
            Err(EvalError::BadToken { id, vocab: v }) => assert_eq!((id, v), (bad, vocab)),
            other => panic!("token {bad}: {:?}", other.map(<[f32]>::len)),
        }
        assert_eq!(s.n_past(), 5, "nothing was appended");
    }
    let rest = s.eval(&toks[5..], Logits::All).unwrap().to_vec();
    let fresh = engine_logits(&m.bytes, &toks, 512);
    assert_same("after BadToken", &rest, &fresh[5 * vocab..], vocab);
}

#[test]
fn overflowing_the_context_is_context_full_and_the_session_survives() {
    let m = tiny(config(WeightType::F32));
    let vocab = m.vocab.len();
    let file = GgufFile::parse(&m.bytes).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    // 20 is not a multiple of the 16-token KV block.
    let mut s = Session::new(&model, session_config(20, 512)).unwrap();
    let toks = tokens(20, 6);
    s.eval(&toks[..15], Logits::Last).unwrap();
    match s.eval(&tokens(6, 1), Logits::Last) {
        Err(EvalError::ContextFull {
            have,
            adding,
            n_ctx,
        }) => {
            assert_eq!((have, adding, n_ctx), (15, 6, 20));
        }
        other => panic!("{:?}", other.map(<[f32]>::len)),
    }
    assert_eq!(s.n_past(), 15);
    // Exactly filling the context works and matches a fresh evaluation.
    let rest = s.eval(&toks[15..], Logits::All).unwrap().to_vec();
    assert_eq!(s.n_past(), 20);
    let fresh = engine_logits(&m.bytes, &toks, 512);
    assert_same("after ContextFull", &rest, &fresh[15 * vocab..], vocab);
    assert!(matches!(
        s.eval(&[3], Logits::Last),
        Err(EvalError::ContextFull { .. })
    ));
    // Rewinding makes room again.
    s.truncate(19).unwrap();
    let last = s.eval(&toks[19..], Logits::All).unwrap().to_vec();
    assert_same("after truncate", &last, &fresh[19 * vocab..], vocab);
}

// ---------------------------------------------------------------------------------------
// Loading errors name what is wrong.

fn load_error(bytes: &[u8]) -> LoadError {
    let file = GgufFile::parse(bytes).expect("the edited file is still valid GGUF");
    Model::from_gguf(&file).err().expect("loading fails")
}

#[test]
fn unsupported_architecture_is_refused() {
    let mut p = Parts::of(&tiny(config(WeightType::F32)).bytes);
    p.set_meta("general.architecture", MetaValue::string("gpt2"));
    let e = load_error(&p.to_bytes());
    assert!(
        matches!(&e, LoadError::UnsupportedArch(a) if a == "gpt2"),
        "{e:?}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let mut p = Parts::of(&tiny(config(WeightType::Q8_0)).bytes);
    p.tensors.retain(|t| t.name != b"blk.1.ffn_up.weight");
    let e = load_error(&p.to_bytes());
    assert!(
        matches!(&e, LoadError::MissingTensor { name } if name == "blk.1.ffn_up.weight"),
        "{e:?}"
    );
}

#[test]
fn wrong_shape_is_refused_with_both_shapes() {
    let mut p = Parts::of(&tiny(config(WeightType::F32)).bytes);
    // attn_k should be [64, 32] (2 KV heads of 16); make it [64, 64] with matching bytes.
    let t = p.tensor_mut("blk.0.attn_k.weight");
    t.dims = vec![64, 64];
    t.data = vec![0; 64 * 64 * 4];
    let e = load_error(&p.to_bytes());
    match &e {
        LoadError::Shape {
            tensor,
            expected,
            got,
        } => {
            assert_eq!(tensor, "blk.0.attn_k.weight");
            assert_eq!(
                (expected.as_slice(), got.as_slice()),
                (&[64, 32][..], &[64, 64][..])
            );
        }
        _ => panic!("{e:?}"),
    }
}

#[test]
fn unsupported_tensor_type_is_refused() {
    let mut p = Parts::of(&tiny(config(WeightType::Q4_0)).bytes);
    // Q5_0 (id 6): 22 bytes per 32 values, so the file itself is well-formed.
    let t = p.tensor_mut("blk.0.ffn_gate.weight");
    t.ggml_type = GgmlType::Q5_0.id();
    t.data = vec![0; 64 * 128 / 32 * 22];
    let e = load_error(&p.to_bytes());
    assert!(
        matches!(&e, LoadError::UnsupportedType { tensor, ggml_type }
            if tensor == "blk.0.ffn_gate.weight" && ggml_type == "q5_0"),
        "{e:?}"
    );
}

#[test]
fn widths_that_are_not_whole_q8_blocks_are_refused_or_computed() {
    // F32 weights have no block size, so nothing in the file is malformed.
    let cfg = TinyLlamaConfig {
        d_model: 48,
        n_heads: 2,
        n_kv_heads: 1,
        ffn_dim: 96,
        ..config(WeightType::F32)
    };
    let m = tiny(cfg);
    let file = GgufFile::parse(&m.bytes).unwrap();
    match Model::from_gguf(&file) {
        Err(e) => assert!(matches!(e, LoadError::BadValue { .. }), "{e:?}"),
        Ok(_) => assert_matches_reference("d_model 48", &m, &m.bytes, FLOAT_TOLERANCE),
    }
}
