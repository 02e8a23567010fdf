//! The default model, SmolLM2-135M-Instruct Q4_1, parses and says what it should.
//!
//! The model is fetched (and cached) by the workspace's `scripts/fetch-model.sh`. Without
//! network the test skips with a reason, except under CI (`CI` set), where it fails.

use std::path::PathBuf;
use std::process::Command;

use gguf::{GgmlType, GgufError, GgufFile};

fn fetch_model() -> Result<PathBuf, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/fetch-model.sh"))
        .output()
        .map_err(|e| format!("cannot run scripts/fetch-model.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/fetch-model.sh failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(PathBuf::from(path))
}

/// The model's bytes, or `None` (after saying why) when it cannot be had outside CI.
fn model_bytes() -> Option<Vec<u8>> {
    let result = fetch_model()
        .and_then(|p| std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display())));
    match result {
        Ok(bytes) => Some(bytes),
        Err(why) if std::env::var_os("CI").is_some() => panic!("CI is set: {why}"),
        Err(why) => {
            eprintln!("SKIPPED: the model could not be fetched: {why}");
            None
        }
    }
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn smollm2_135m_q4_1_parses() -> Result<(), GgufError> {
    let Some(bytes) = model_bytes() else {
        return Ok(());
    };
    let start = std::time::Instant::now();
    let file = GgufFile::parse(&bytes)?;
    eprintln!("parsed {} bytes in {:?}", bytes.len(), start.elapsed());
    file.check_invariants();

    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.get_str("general.architecture")?, "llama");
    assert_eq!(file.get_u32("llama.block_count")?, 30);
    assert_eq!(file.get_u32("llama.context_length")?, 8192);
    assert_eq!(file.get_u32("llama.embedding_length")?, 576);
    assert_eq!(file.get_u32("llama.feed_forward_length")?, 1536);
    assert_eq!(file.get_u32("llama.attention.head_count")?, 9);
    assert_eq!(file.get_u32("llama.attention.head_count_kv")?, 3);
    assert_eq!(file.get_u32("llama.rope.dimension_count")?, 64);
    assert_eq!(file.get_f32("llama.rope.freq_base")?, 100_000.0);
    assert_eq!(
        file.get_f32("llama.attention.layer_norm_rms_epsilon")?,
        1e-5
    );
    assert_eq!(file.get_u32("general.file_type")?, 3); // LLAMA_FTYPE_MOSTLY_Q4_1

    assert_eq!(file.get_str("tokenizer.ggml.model")?, "gpt2");
    assert_eq!(file.get_str("tokenizer.ggml.pre")?, "smollm");
    assert_eq!(file.get_u32("tokenizer.ggml.bos_token_id")?, 1);
    assert_eq!(file.get_u32("tokenizer.ggml.eos_token_id")?, 2);
    assert!(!file.get_bool("tokenizer.ggml.add_bos_token")?);
    assert!(
        file.get_str("tokenizer.chat_template")?
            .contains("<|im_start|>assistant")
    );

    let tokens = file.get_array("tokenizer.ggml.tokens")?;
    assert_eq!(tokens.len(), 49152);
    assert_eq!(file.get_u32("llama.vocab_size")?, 49152);
    let tokens: Vec<&str> = tokens.iter_str()?.collect::<Result<_, _>>()?;
    assert_eq!(
        &tokens[..3],
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    );
    assert!(tokens.contains(&"Ġthe"));
    let types: Vec<i32> = file
        .get_array("tokenizer.ggml.token_type")?
        .iter_i32()?
        .collect();
    assert_eq!(types.len(), 49152);
    assert_eq!(&types[..3], [3, 3, 3]); // control tokens
    assert!(types.iter().all(|t| (1..=6).contains(t)));
    let merges = file.get_array("tokenizer.ggml.merges")?;
    assert_eq!(merges.len(), 48900);
    assert_eq!(merges.get_str(0)?, "Ġ t");

    let tensors = file.tensors();
    assert_eq!(tensors.len(), 272);
    let count = |t: GgmlType| tensors.iter().filter(|i| i.ggml_type() == t).count();
    assert_eq!(
        (
            count(GgmlType::Q4_1),
            count(GgmlType::Q8_0),
            count(GgmlType::F32)
        ),
        (210, 1, 61)
    );
    let dims = |name: &str| file.tensor(name).map(|t| t.dims().to_vec());
    assert_eq!(dims("token_embd.weight"), Some(vec![576, 49152]));
    assert_eq!(dims("blk.0.attn_q.weight"), Some(vec![576, 576]));
    assert_eq!(dims("blk.29.attn_k.weight"), Some(vec![576, 192]));
    assert_eq!(dims("blk.7.ffn_down.weight"), Some(vec![1536, 576]));
    assert_eq!(dims("output_norm.weight"), Some(vec![576]));
    assert_eq!(
        dims("output.weight"),
        None,
        "SmolLM2 ties the output head to the embeddings"
    );
    for l in 0..30 {
        for part in [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
        ] {
            assert!(
                file.tensor(&format!("blk.{l}.{part}.weight")).is_some(),
                "{l} {part}"
            );
        }
    }

    // The tensors fill the data section exactly, in place.
    let total: u64 = tensors
        .iter()
        .map(|t| t.size_bytes().next_multiple_of(32))
        .sum();
    assert_eq!(file.data_offset() + total, bytes.len() as u64);
    let norm = file.tensor("blk.0.attn_norm.weight").expect("present");
    let data = file.tensor_data(norm);
    assert_eq!(
        data.as_ptr(),
        bytes[file.data_offset() as usize + norm.offset() as usize..].as_ptr()
    );
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert!(values.iter().all(|v| v.is_finite()) && values.iter().any(|v| *v != 0.0));
    Ok(())
}
