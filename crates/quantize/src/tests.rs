use super::*;
use testkit::{OutputHead, TinyLlamaConfig, WeightType, tiny_llama};

fn model(d_model: usize, output: OutputHead, weight_type: WeightType) -> testkit::TinyLlama {
    tiny_llama(&TinyLlamaConfig {
        n_layers: 8,
        d_model,
        n_heads: 4,
        n_kv_heads: 4,
        ffn_dim: 2 * d_model,
        weight_type,
        output,
        ..TinyLlamaConfig::default()
    })
}

fn types_of(plan: &Plan) -> std::collections::HashMap<&str, GgmlType> {
    plan.steps.iter().map(|s| (s.name.as_str(), s.to)).collect()
}

#[test]
fn q4_k_m_gives_the_head_and_the_more_bits_layers_q6_k() {
    let m = model(256, OutputHead::Separate, WeightType::F32);
    let file = GgufFile::parse(&m.bytes).unwrap();
    let plan = plan(&file, Target::Q4_K_M, Requantize::Refuse).unwrap();
    let ty = types_of(&plan);
    assert_eq!(ty["output.weight"], GgmlType::Q6_K);
    assert_eq!(ty["token_embd.weight"], GgmlType::Q4_K);
    assert_eq!(ty["output_norm.weight"], GgmlType::F32);
    assert_eq!(ty["blk.0.attn_norm.weight"], GgmlType::F32);
    // 8 layers: layers 0, 3, 6 and 7 use more bits.
    for l in 0..8 {
        let more = [0, 3, 6, 7].contains(&l);
        let want = if more { GgmlType::Q6_K } else { GgmlType::Q4_K };
        assert_eq!(
            ty[format!("blk.{l}.attn_v.weight").as_str()],
            want,
            "layer {l}"
        );
        assert_eq!(
            ty[format!("blk.{l}.ffn_down.weight").as_str()],
            want,
            "layer {l}"
        );
        assert_eq!(
            ty[format!("blk.{l}.attn_q.weight").as_str()],
            GgmlType::Q4_K
        );
    }
    assert_eq!(plan.requantized(), 0);
}

#[test]
fn rows_off_the_block_fall_back_and_a_tied_embedding_is_treated_as_the_head() {
    let m = model(64, OutputHead::Tied, WeightType::F32);
    let file = GgufFile::parse(&m.bytes).unwrap();
    let ty_of = |t| {
        types_of(&plan(&file, t, Requantize::Refuse).unwrap())
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<std::collections::HashMap<_, _>>()
    };
    let q4k = ty_of(Target::Q4_K);
    assert_eq!(q4k["token_embd.weight"], GgmlType::Q8_0);
    assert_eq!(q4k["blk.1.attn_q.weight"], GgmlType::Q5_0);
    // q4_k is llama.cpp's Q4_K_S: attn_v of the first four layers gets Q5_K, whose
    // 64-value rows fall back to Q5_1.
    assert_eq!(q4k["blk.0.attn_v.weight"], GgmlType::Q5_1);
    assert_eq!(q4k["blk.5.attn_v.weight"], GgmlType::Q5_0);
    let q4_0 = ty_of(Target::Q4_0);
    // Q6_K for the head does not fit 64-value rows: Q8_0.
    assert_eq!(q4_0["token_embd.weight"], GgmlType::Q8_0);
    assert_eq!(q4_0["blk.1.ffn_up.weight"], GgmlType::Q4_0);
    let bf16 = ty_of(Target::BF16);
    assert_eq!(bf16["token_embd.weight"], GgmlType::BF16);
    assert_eq!(bf16["output_norm.weight"], GgmlType::F32);
}

#[test]
fn quantized_input_is_refused_unless_requantizing_is_allowed() {
    let m = model(64, OutputHead::Tied, WeightType::Q4_1);
    let file = GgufFile::parse(&m.bytes).unwrap();
    let e = plan(&file, Target::Q8_0, Requantize::Refuse).unwrap_err();
    assert!(
        matches!(
            e,
            QuantizeError::RequantizeRefused {
                from: GgmlType::Q4_1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("--allow-requantize"), "{e}");
    let p = plan(&file, Target::Q8_0, Requantize::Allow).unwrap();
    assert!(p.requantized() > 0);
    // A tensor already of its target type is copied: Q4_1 to q4_1 converts only the
    // tied embedding (the head's type).
    let same = plan(&file, Target::Q4_1, Requantize::Allow).unwrap();
    assert_eq!(same.requantized(), 1);
    assert!(
        same.steps
            .iter()
            .filter(|s| s.to == GgmlType::Q4_1)
            .all(|s| !s.converts())
    );
}

#[test]
fn written_file_keeps_metadata_order_and_alignment_and_decodes_near_the_source() {
    let m = model(256, OutputHead::Separate, WeightType::F32);
    let file = GgufFile::parse(&m.bytes).unwrap();
    for target in [Target::Q8_0, Target::Q4_K_M, Target::Q6_K, Target::F16] {
        let p = plan(&file, target, Requantize::Refuse).unwrap();
        let mut calls = 0;
        let out = write(&file, &p, Vec::new(), 3, |done, total| {
            calls += 1;
            assert!(done <= total);
        })
        .unwrap();
        assert_eq!(calls, file.tensors().len());
        let q = GgufFile::parse(&out).unwrap();
        assert_eq!(q.get_u32("general.file_type").unwrap(), target.file_type());
        assert_eq!(
            q.get_u32("general.quantization_version").unwrap(),
            QUANTIZATION_VERSION
        );
        let keys = |f: &GgufFile<'_>| {
            f.metadata()
                .iter()
                .map(|kv| kv.key().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&q)[..keys(&file).len()], keys(&file)[..]);
        assert_eq!(q.get_str("general.architecture").unwrap(), "llama");
        let names = |f: &GgufFile<'_>| {
            f.tensors()
                .iter()
                .map(|t| t.name().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&q), names(&file));
        assert_eq!(q.data_offset() % 32, 0);
        for (t, src) in q.tensors().iter().zip(&m.tensors) {
            assert_eq!(t.offset() % 32, 0);
            let w = wtype(t.ggml_type()).unwrap();
            let cols = t.dims()[0] as usize;
            let mut got = vec![0.0f32; src.values.len()];
            for (o, r) in got
                .chunks_exact_mut(cols)
                .zip(q.tensor_data(t).chunks_exact(w.row_bytes(cols).unwrap()))
            {
                kernels::quant::dequantize_row(w, r, o);
            }
            let err: f64 = got
                .iter()
                .zip(&src.values)
                .map(|(&a, &b)| f64::from(a - b).powi(2))
                .sum();
            let sig: f64 = src.values.iter().map(|&b| f64::from(b).powi(2)).sum();
            let rel = (err / sig.max(1e-30)).sqrt();
            assert!(
                rel < 0.12,
                "{target} {}: relative RMS error {rel}",
                t.name()
            );
        }
    }
}

#[test]
fn threads_do_not_change_the_bytes() {
    let m = model(256, OutputHead::Separate, WeightType::F32);
    let file = GgufFile::parse(&m.bytes).unwrap();
    let p = plan(&file, Target::Q5_K_M, Requantize::Refuse).unwrap();
    let one = write(&file, &p, Vec::new(), 1, |_, _| {}).unwrap();
    let four = write(&file, &p, Vec::new(), 4, |_, _| {}).unwrap();
    assert_eq!(one, four);
}
