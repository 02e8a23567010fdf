//! The engine's forward pass against a naive f64 reference of the Llama decoder, on the
//! synthetic models of `testkit`; then the session's equivalences (batching, micro-batch
//! size, rewinding) and its errors, which are values.
//!
//! The reference is written from the architecture's definition, not from the engine: one
//! token at a time, every product a plain f64 sum, weights decoded from the file's bytes
//! with `testkit`'s dequantizers (so both sides see the same weights). It stores K and V
//! rounded to f16, as the engine's cache does, so the comparison isolates the arithmetic.

#[path = "common_ref/mod.rs"]
mod common_reference;

use common_reference::*;
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
    // Q8_1 (id 9, an activation format no weight file uses): 36 bytes per 32 values, so
    // the file itself is well-formed.
    let t = p.tensor_mut("blk.0.ffn_gate.weight");
    t.ggml_type = GgmlType::Q8_1.id();
    t.data = vec![0; 64 * 128 / 32 * 36];
    let e = load_error(&p.to_bytes());
    assert!(
        matches!(&e, LoadError::UnsupportedType { tensor, ggml_type }
            if tensor == "blk.0.ffn_gate.weight" && ggml_type == "q8_1"),
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
