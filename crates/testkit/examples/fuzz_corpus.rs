//! Writes seed files for the `gguf_parse` fuzz target into the directory given as the
//! only argument: every value type, nested arrays, alignments, v2 and v3, and small
//! synthetic Llama models in each weight type.

use std::path::PathBuf;
use std::process::ExitCode;

use testkit::{
    GgufWriter, MetaArray, MetaValue, OutputHead, TinyLlamaConfig, WeightType, ggml, tiny_llama,
};

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let values = GgufWriter::new()
        .metadata("general.architecture", MetaValue::string("llama"))
        .metadata("u8", MetaValue::U8(1))
        .metadata("i8", MetaValue::I8(-1))
        .metadata("u16", MetaValue::U16(2))
        .metadata("i16", MetaValue::I16(-2))
        .metadata("u32", MetaValue::U32(3))
        .metadata("i32", MetaValue::I32(-3))
        .metadata("u64", MetaValue::U64(4))
        .metadata("i64", MetaValue::I64(-4))
        .metadata("f32", MetaValue::F32(0.5))
        .metadata("f64", MetaValue::F64(0.25))
        .metadata("bool", MetaValue::Bool(true))
        .metadata("tokens", MetaValue::strings(["<s>", "Ġthe", "a"]))
        .metadata(
            "scores",
            MetaValue::Array(MetaArray::F32(vec![0.0, -1.0, -2.0])),
        )
        .metadata("types", MetaValue::Array(MetaArray::I32(vec![3, 1, 1])))
        .metadata(
            "flags",
            MetaValue::Array(MetaArray::Bool(vec![true, false])),
        )
        .metadata(
            "nested",
            MetaValue::Array(MetaArray::Array(vec![
                MetaArray::U8(vec![1]),
                MetaArray::Array(vec![MetaArray::String(vec![b"x".to_vec()])]),
            ])),
        );
    for version in [2, 3] {
        let w = values.clone().version(version);
        out.push((format!("values-v{version}"), w.to_bytes()));
        let w = w
            .tensor("f32", ggml::F32, &[4, 2], vec![1; 32])
            .tensor("f16", ggml::F16, &[2, 1, 1, 2], vec![2; 8])
            .tensor("q8", ggml::Q8_0, &[32], vec![3; 34])
            .tensor("q4", ggml::Q4_0, &[32, 2], vec![4; 36]);
        out.push((format!("tensors-v{version}"), w.clone().to_bytes()));
        out.push((
            format!("tensors-align1-v{version}"),
            w.clone().alignment(1).to_bytes(),
        ));
        out.push((
            format!("tensors-align64-v{version}"),
            w.alignment(64).to_bytes(),
        ));
    }
    out.push(("empty".into(), GgufWriter::new().to_bytes()));
    for (i, weight_type) in [
        WeightType::F32,
        WeightType::Q8_0,
        WeightType::Q4_0,
        WeightType::Q4_1,
    ]
    .into_iter()
    .enumerate()
    {
        let config = TinyLlamaConfig {
            n_layers: 1,
            d_model: 32,
            n_heads: 2,
            n_kv_heads: 1,
            ffn_dim: 32,
            weight_type,
            output: if i % 2 == 0 {
                OutputHead::Tied
            } else {
                OutputHead::Separate
            },
            seed: i as u64,
            ..TinyLlamaConfig::default()
        };
        out.push((
            format!("tiny-llama-{weight_type:?}"),
            tiny_llama(&config).bytes,
        ));
    }
    out
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz_corpus DIR");
        return ExitCode::from(2);
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("{}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for (name, bytes) in seeds() {
        let path = dir.join(format!("{name}.gguf"));
        if let Err(e) = std::fs::write(&path, &bytes) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
    ExitCode::SUCCESS
}
