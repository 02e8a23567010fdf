//! Measures encode and decode throughput of a GGUF model's tokenizer on a text file.
//!
//! ```text
//! cargo run --release -p tokenizer --example encode_speed -- MODEL.gguf TEXT_FILE [REPEATS]
//! ```
//!
//! Prints the build time, the table size, and the median of REPEATS (default 11) encodes
//! and decodes of the whole file.

use std::time::{Duration, Instant};

use tokenizer::{BosEos, Render, Special, Tokenizer, VocabSpec};

fn spec_from_gguf(file: &gguf::GgufFile<'_>) -> Result<VocabSpec, Box<dyn std::error::Error>> {
    let strings = |key: &str| -> Result<Vec<String>, gguf::GgufError> {
        match file.get(key).and_then(|v| v.as_array()) {
            Some(a) => a.iter_str()?.map(|s| s.map(str::to_owned)).collect(),
            None => Ok(Vec::new()),
        }
    };
    let array = |key: &str| file.get(key).and_then(|v| v.as_array());
    let id = |key: &str| file.get(key).and_then(|v| v.as_u64()).map(|v| v as u32);
    Ok(VocabSpec {
        model: file.get_str("tokenizer.ggml.model")?.to_owned(),
        pre: file
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        tokens: strings("tokenizer.ggml.tokens")?,
        token_types: match array("tokenizer.ggml.token_type") {
            Some(a) => a.iter_i32()?.collect(),
            None => Vec::new(),
        },
        merges: strings("tokenizer.ggml.merges")?,
        scores: match array("tokenizer.ggml.scores") {
            Some(a) => a.iter_f32()?.collect(),
            None => Vec::new(),
        },
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        eot_id: id("tokenizer.ggml.eot_token_id"),
        eom_id: id("tokenizer.ggml.eom_token_id"),
        unknown_id: id("tokenizer.ggml.unknown_token_id"),
        padding_id: id("tokenizer.ggml.padding_token_id"),
        add_bos: file
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool()),
        add_eos: file
            .get("tokenizer.ggml.add_eos_token")
            .and_then(|v| v.as_bool()),
        add_space_prefix: file
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(|v| v.as_bool()),
    })
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, text_path, rest @ ..] = args.as_slice() else {
        eprintln!("usage: encode_speed MODEL.gguf TEXT_FILE [REPEATS]");
        std::process::exit(2);
    };
    let repeats: usize = rest.first().map_or(Ok(11), |r| r.parse())?.max(1);
    let bytes = std::fs::read(model)?;
    let text = std::fs::read_to_string(text_path)?;

    let start = Instant::now();
    let file = gguf::GgufFile::parse(&bytes)?;
    let tok = Tokenizer::from_spec(&spec_from_gguf(&file)?)?;
    let build = start.elapsed();

    let mut ids = Vec::new();
    let mut encode_times = Vec::new();
    for _ in 0..repeats {
        let start = Instant::now();
        ids = tok.encode(&text, BosEos::Omit, Special::AsText);
        encode_times.push(start.elapsed());
    }
    let mut decode_times = Vec::new();
    for _ in 0..repeats {
        let start = Instant::now();
        let back = tok.decode(&ids, Render::Text)?;
        decode_times.push(start.elapsed());
        assert_eq!(back.len(), text.len());
    }
    let (enc, dec) = (median(encode_times), median(decode_times));
    let mib = text.len() as f64 / f64::from(1 << 20);
    println!(
        "build (parse + tables): {:.1} ms",
        build.as_secs_f64() * 1e3
    );
    println!("table_bytes: {}", tok.table_bytes());
    println!("text: {} bytes, {} tokens", text.len(), ids.len());
    println!(
        "encode: {:.2} ms median of {repeats} ({:.1} MiB/s, {:.0} tokens/ms)",
        enc.as_secs_f64() * 1e3,
        mib / enc.as_secs_f64(),
        ids.len() as f64 / (enc.as_secs_f64() * 1e3)
    );
    println!(
        "decode: {:.2} ms median of {repeats} ({:.1} MiB/s)",
        dec.as_secs_f64() * 1e3,
        mib / dec.as_secs_f64()
    );
    Ok(())
}
