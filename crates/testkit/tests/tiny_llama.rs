//! The synthetic model parses with the `gguf` reader and holds what its config says.

use gguf::{GgmlType, GgufError, GgufFile};
use testkit::quant::{dequantize_q4_0, dequantize_q4_1, dequantize_q8_0};
use testkit::{
    BOS_ID, CHAT_TEMPLATE, EOS_ID, MERGES, OutputHead, TinyLlamaConfig, WeightType, tiny_llama,
};

#[test]
fn every_weight_type_parses_with_the_right_metadata() -> Result<(), GgufError> {
    for (weight_type, ggml_type) in [
        (WeightType::F32, GgmlType::F32),
        (WeightType::Q8_0, GgmlType::Q8_0),
        (WeightType::Q4_0, GgmlType::Q4_0),
        (WeightType::Q4_1, GgmlType::Q4_1),
    ] {
        for (output, gguf_version) in [(OutputHead::Tied, 3), (OutputHead::Separate, 2)] {
            let config = TinyLlamaConfig {
                weight_type,
                output,
                gguf_version,
                ..TinyLlamaConfig::default()
            };
            let model = tiny_llama(&config);
            let file = GgufFile::parse(&model.bytes)?;
            file.check_invariants();
            assert_eq!(file.version(), gguf_version);
            assert_eq!(file.get_str("general.architecture")?, "llama");
            assert_eq!(file.get_u32("llama.block_count")?, 2);
            assert_eq!(file.get_u32("llama.embedding_length")?, 64);
            assert_eq!(file.get_u32("llama.feed_forward_length")?, 128);
            assert_eq!(file.get_u32("llama.attention.head_count")?, 4);
            assert_eq!(file.get_u32("llama.attention.head_count_kv")?, 2);
            assert_eq!(file.get_u32("llama.context_length")?, 256);
            assert_eq!(file.get_f32("llama.rope.freq_base")?, 10_000.0);
            assert_eq!(
                file.get_f32("llama.attention.layer_norm_rms_epsilon")?,
                1e-5
            );
            assert_eq!(file.get_str("tokenizer.ggml.model")?, "gpt2");
            assert_eq!(file.get_str("tokenizer.ggml.pre")?, "smollm");
            assert_eq!(file.get_str("tokenizer.chat_template")?, CHAT_TEMPLATE);
            assert_eq!(file.get_u32("tokenizer.ggml.bos_token_id")?, BOS_ID);
            assert_eq!(file.get_u32("tokenizer.ggml.eos_token_id")?, EOS_ID);

            let tokens: Vec<&str> = file
                .get_array("tokenizer.ggml.tokens")?
                .iter_str()?
                .collect::<Result<_, _>>()?;
            assert_eq!(tokens, model.vocab);
            assert_eq!(tokens.len(), 299);
            assert_eq!(tokens[3 + usize::from(b' ')], "Ġ");
            assert_eq!(tokens[BOS_ID as usize], "<|im_start|>");
            let merges = file.get_array("tokenizer.ggml.merges")?;
            assert_eq!(merges.len(), MERGES.len());
            assert_eq!(merges.get_str(6)?, "Ġt he");
            let types: Vec<i32> = file
                .get_array("tokenizer.ggml.token_type")?
                .iter_i32()?
                .collect();
            assert_eq!((types[0], types[3], types.len()), (3, 1, 299));

            let separate = usize::from(output == OutputHead::Separate);
            assert_eq!(file.tensors().len(), 1 + 2 * 9 + 1 + separate);
            assert_eq!(file.tensor("output.weight").is_some(), separate == 1);
            let t = |name: &str| file.tensor(name).expect(name);
            assert_eq!(t("token_embd.weight").dims(), [64, 299]);
            assert_eq!(t("blk.1.attn_k.weight").dims(), [64, 32]);
            assert_eq!(t("blk.0.ffn_down.weight").dims(), [128, 64]);
            assert_eq!(t("blk.0.ffn_up.weight").ggml_type(), ggml_type);
            assert_eq!(t("blk.1.ffn_norm.weight").ggml_type(), GgmlType::F32);
            assert_eq!(t("output_norm.weight").dims(), [64]);
        }
    }
    Ok(())
}

#[test]
fn stored_weights_dequantize_to_the_source_values() -> Result<(), GgufError> {
    for weight_type in [
        WeightType::F32,
        WeightType::Q8_0,
        WeightType::Q4_0,
        WeightType::Q4_1,
    ] {
        let model = tiny_llama(&TinyLlamaConfig {
            weight_type,
            ..TinyLlamaConfig::default()
        });
        let file = GgufFile::parse(&model.bytes)?;
        for source in &model.tensors {
            let info = file.tensor(&source.name).expect("written");
            let data = info.data();
            let decoded: Vec<f32> = match (info.ggml_type(), weight_type) {
                (GgmlType::F32, _) => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                (_, WeightType::Q8_0) => dequantize_q8_0(data),
                (_, WeightType::Q4_0) => dequantize_q4_0(data),
                (_, WeightType::Q4_1) => dequantize_q4_1(data),
                (t, w) => panic!("{t} for {w:?}"),
            };
            assert_eq!(decoded.len(), source.values.len(), "{}", source.name);
            let max = source.values.iter().fold(0f32, |m, v| m.max(v.abs()));
            // One quantization step of the largest magnitude (Q4_0 clamps by up to a step).
            let tolerance = match info.ggml_type() {
                GgmlType::F32 => 0.0,
                GgmlType::Q8_0 => max / 127.0,
                GgmlType::Q4_0 => max / 8.0 * 1.01,
                _ => 2.0 * max / 15.0,
            };
            for (d, s) in decoded.iter().zip(&source.values) {
                assert!((d - s).abs() <= tolerance, "{}: {d} vs {s}", source.name);
            }
        }
    }
    Ok(())
}
