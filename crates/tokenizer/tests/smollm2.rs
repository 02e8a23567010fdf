//! The SmolLM2 vocabulary against llama.cpp: golden prompts, a fixture of reference ids,
//! round trips and streaming.

mod common;

use common::{read_json, smollm2, smollm2_spec, testdata_file, u32s};
use tokenizer::{BosEos, PreTokenizer, Render, Special, TokenId, Tokenizer};

fn token_ids(raw: &[u32]) -> Vec<TokenId> {
    raw.iter().copied().map(TokenId).collect()
}

fn raw(ids: &[TokenId]) -> Vec<u32> {
    ids.iter().map(|id| id.0).collect()
}

/// Decodes one token at a time; checks the text so far is always a prefix of the batch
/// decode, and returns the whole streamed text.
fn stream(tok: &Tokenizer, ids: &[TokenId], render: Render) -> (String, usize) {
    let batch = tok.decode(ids, render).unwrap();
    let mut decoder = tok.stream_decoder(render);
    let mut text = String::new();
    let mut max_pending = 0;
    for &id in ids {
        text.extend(decoder.push(id).unwrap());
        decoder.check_invariants();
        max_pending = max_pending.max(decoder.pending_bytes());
        assert!(
            batch.starts_with(&text),
            "stream {text:?} is not a prefix of {batch:?}"
        );
    }
    text.extend(decoder.finish());
    (text, max_pending)
}

#[test]
fn vocabulary_metadata_is_read_as_llama_cpp_reads_it() {
    let Some(tok) = smollm2() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.pre_tokenizer(), PreTokenizer::DigitsThenGpt2);
    assert!(!tok.adds_bos(), "SmolLM2 sets add_bos_token = false");
    assert!(!tok.adds_eos());
    assert_eq!(tok.merge_count(), 48900);
    assert_eq!(tok.dead_merges(), 0);
    assert_eq!(tok.end_of_generation(), [TokenId(0), TokenId(2)]);
    assert_eq!(tok.token_id("<|im_start|>"), Some(TokenId(1)));
    assert_eq!(tok.token_text(TokenId(216)), Some("Ġ"));
    let bytes = tok.table_bytes();
    eprintln!("SmolLM2 tokenizer tables: {bytes} bytes");
    // Token texts alone are 369 KB and merge texts 417 KB; the tables hold texts, pieces,
    // an index and the merge map, all in a few MiB.
    assert!((1 << 20..8 << 20).contains(&bytes), "{bytes}");
}

#[test]
fn golden_prompts_encode_to_llama_cpp_ids() {
    let Some(tok) = smollm2() else { return };
    let golden = read_json(&testdata_file("golden/smollm2-greedy.json"));
    let prompts = golden["prompts"].as_array().unwrap();
    assert!(prompts.len() >= 5);
    for p in prompts {
        let text = p["text"].as_str().unwrap();
        let want = u32s(&p["prompt_ids"]);
        let got = tok.encode(text, BosEos::Add, Special::Parse);
        assert_eq!(raw(&got), want, "prompt {}", p["name"]);
        // The chat prompts render back exactly only with their control tokens.
        assert_eq!(tok.decode(&got, Render::WithControl).unwrap(), text);
    }
}

#[test]
fn golden_generations_decode_to_llama_cpp_text() {
    let Some(tok) = smollm2() else { return };
    let golden = read_json(&testdata_file("golden/smollm2-greedy.json"));
    for p in golden["prompts"].as_array().unwrap() {
        let ids = token_ids(&u32s(&p["gen_ids"]));
        let want = p["gen_text"].as_str().unwrap();
        assert_eq!(
            tok.decode(&ids, Render::Text).unwrap(),
            want,
            "{}",
            p["name"]
        );
        assert_eq!(stream(tok, &ids, Render::Text).0, want, "{}", p["name"]);
        // A model may emit a non-canonical split (one golden generation does), so the
        // text re-encodes to ids that decode to the same text, not always the same ids.
        let again = tok.encode(want, BosEos::Omit, Special::AsText);
        assert_eq!(
            tok.decode(&again, Render::Text).unwrap(),
            want,
            "{}",
            p["name"]
        );
    }
}

fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llama_cpp_smollm2.json"
    );
    read_json(std::path::Path::new(path))
}

#[test]
fn fixture_cases_match_llama_cpp_ids() {
    let Some(tok) = smollm2() else { return };
    let fixture = fixture();
    let golden = read_json(&testdata_file("golden/smollm2-greedy.json"));
    assert_eq!(
        fixture["model_sha256"], golden["model_sha256"],
        "fixture is for another model"
    );
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 200, "{} cases", cases.len());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        for (key, special) in [("ids_parse", Special::Parse), ("ids_text", Special::AsText)] {
            let got = tok.encode(text, BosEos::Add, special);
            assert_eq!(raw(&got), u32s(&case[key]), "{key} of {text:?}");
        }
    }
}

#[test]
fn other_pre_tokenizers_match_llama_cpp_on_the_same_vocabulary() {
    let Some(spec) = smollm2_spec() else { return };
    let fixture = fixture();
    let variants = &fixture["pre_variants"];
    let texts = variants["texts"].as_array().unwrap();
    let expected = variants["ids_parse"].as_object().unwrap();
    assert_eq!(expected.len(), 4);
    for (pre, cases) in expected {
        let mut spec = spec.clone();
        spec.pre = Some(pre.clone());
        let tok = Tokenizer::from_spec(&spec).unwrap();
        for (text, want) in texts.iter().zip(cases.as_array().unwrap()) {
            let text = text.as_str().unwrap();
            let got = tok.encode(text, BosEos::Omit, Special::Parse);
            assert_eq!(raw(&got), u32s(want), "pre {pre}: {text:?}");
        }
    }
}

#[test]
fn licenses_file_matches_llama_cpp_and_round_trips() {
    let Some(tok) = smollm2() else { return };
    let fixture = fixture();
    let text = std::fs::read_to_string(testdata_file("eval/licenses.txt")).unwrap();
    let ids = tok.encode(&text, BosEos::Omit, Special::AsText);
    assert_eq!(
        ids.len() as u64,
        fixture["licenses_ids_count"].as_u64().unwrap()
    );
    // Position-weighted sum, as the fixture generator computes it.
    let sum = ids.iter().enumerate().fold(0u128, |acc, (i, id)| {
        (acc + (i as u128 + 1) * u128::from(id.0)) % (1 << 61)
    });
    assert_eq!(sum as u64, fixture["licenses_ids_sum"].as_u64().unwrap());
    assert_eq!(tok.decode(&ids, Render::Text).unwrap(), text);
    let (streamed, _) = stream(tok, &ids, Render::Text);
    assert_eq!(streamed, text);
}

/// What decoding the encoding of `text` gives back: SmolLM2 has no token for a few bytes,
/// which are dropped (as llama.cpp does), leaving the rest of their character invalid.
fn expected_round_trip(tok: &Tokenizer, text: &str) -> String {
    let kept: Vec<u8> = text
        .bytes()
        .filter(|&b| tok.byte_token(b).is_some())
        .collect();
    String::from_utf8_lossy(&kept).into_owned()
}

#[test]
fn varied_text_round_trips_and_streams() {
    let Some(tok) = smollm2() else { return };
    let mut corpus: Vec<String> = fixture()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_owned())
        .collect();
    corpus.extend(
        [
            "Unicode: Ελληνικά, русский, עברית, العربية, हिन्दी, ไทย, 日本語, 한국어, 中文。",
            "Emoji: 🧑🏽‍💻 🏳️‍🌈 🇺🇳 👩‍❤️‍💋‍👨 🫠 and text after",
            "Combining: a\u{301}\u{302}\u{303} Z\u{335}\u{330}a\u{336}l\u{337}g\u{338}o",
            "Digits: ０１２３ ٠١٢٣ ۰۱۲۳ ०१२३ ০১২৩ 𝟘𝟙𝟚𝟛 ⑴⑵ Ⅻ",
            "Whitespace:\t\t\u{a0}\u{2002}\u{2003}\u{2009}\u{200a}\u{202f}\u{205f}\u{3000}.\u{feff}",
            "Planes: \u{10000} \u{1f9ff} \u{20000} \u{2fa1d} \u{e0001} \u{f0000} \u{10fffd}",
            "Outside SmolLM2: \u{4} \u{6} \u{13} \u{40000} \u{bffff} kept out",
        ]
        .map(String::from),
    );
    let all_chars: String = (0..0x3000u32).filter_map(char::from_u32).collect();
    corpus.push(all_chars);
    let mut held_back = false;
    for text in &corpus {
        let expected = expected_round_trip(tok, text);
        let ids = tok.encode(text, BosEos::Omit, Special::AsText);
        assert_eq!(
            tok.decode(&ids, Render::Text).unwrap(),
            expected,
            "{text:?}"
        );
        let (streamed, max_pending) = stream(tok, &ids, Render::Text);
        assert_eq!(streamed, expected, "{text:?}");
        held_back |= max_pending > 0;
    }
    assert!(
        held_back,
        "no character was split across tokens: the stream test is vacuous"
    );
    // The bytes without a token: six control bytes, two lead bytes of 4-byte sequences
    // (U+40000..U+BFFFF) and bytes that never occur in UTF-8.
    let missing: Vec<u8> = (0..=255).filter(|&b| tok.byte_token(b).is_none()).collect();
    let mut want = vec![0x04, 0x06, 0x13, 0x14, 0x16, 0x1d, 0xc0, 0xc1, 0xf1, 0xf2];
    want.extend(0xf5..=0xff);
    assert_eq!(missing, want);
}

#[test]
fn odd_inputs_never_panic() {
    let Some(tok) = smollm2() else { return };
    let long_digits = "9".repeat(100_000);
    let long_spaces = " ".repeat(100_000);
    let long_mix = "a1 ".repeat(30_000) + &"\u{1F600}".repeat(10_000);
    let specials = "<|im_start|>".repeat(1000) + "<|im_end|>" + &"<|".repeat(500);
    for text in [
        "",
        "\u{0}",
        "<|",
        "|>",
        &long_digits,
        &long_spaces,
        &long_mix,
        &specials,
    ] {
        for special in [Special::Parse, Special::AsText] {
            let ids = tok.encode(text, BosEos::Add, special);
            let back = tok.decode(&ids, Render::WithControl).unwrap();
            assert_eq!(back, text, "{special:?} of {} bytes", text.len());
        }
    }
    assert_eq!(
        raw(&tok.encode(&long_digits, BosEos::Omit, Special::Parse)),
        vec![41; 100_000]
    );
}
