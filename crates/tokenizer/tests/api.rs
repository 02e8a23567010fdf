//! Public-API tests on small hand-made vocabularies (no model needed).

use tokenizer::{
    BosEos, DecodeError, ModelKind, PreTokenizer, Render, Special, TokenId, TokenType, Tokenizer,
    VocabError, VocabSpec,
};

/// GPT-2's byte alphabet in byte order (the 256 single-char tokens of a byte-level vocab).
fn byte_alphabet() -> Vec<String> {
    let keeps = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut shifted = 0;
    (0..256u32)
        .map(|b| {
            let cp = if keeps(b) {
                b
            } else {
                shifted += 1;
                0xFF + shifted
            };
            char::from_u32(cp).unwrap().to_string()
        })
        .collect()
}

/// A byte-level vocabulary: three control tokens, one user-defined token, the 256 byte
/// chars, and a few merges.
fn bpe_spec(pre: &str) -> VocabSpec {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![3, 3, 3, 4];
    tokens.extend(byte_alphabet());
    types.extend([1; 256]);
    let merged = [
        "he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld", "12",
    ];
    tokens.extend(merged.map(String::from));
    types.extend([1; 10]);
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "1 2",
    ];
    VocabSpec {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types: types,
        merges: merges.map(String::from).to_vec(),
        bos_id: Some(0),
        eos_id: Some(2),
        ..VocabSpec::default()
    }
}

fn ids(v: &[TokenId]) -> Vec<u32> {
    v.iter().map(|id| id.0).collect()
}

fn texts(tok: &Tokenizer, v: &[TokenId]) -> Vec<String> {
    v.iter()
        .map(|&id| tok.token_text(id).unwrap().to_string())
        .collect()
}

#[test]
fn bpe_encodes_words_with_ranked_merges() {
    let tok = Tokenizer::from_spec(&bpe_spec("smollm")).unwrap();
    assert_eq!(tok.model_kind(), ModelKind::BytePairGpt2);
    assert_eq!(tok.pre_tokenizer(), PreTokenizer::DigitsThenGpt2);
    let out = tok.encode("hello world 12", BosEos::Add, Special::Parse);
    assert_eq!(texts(&tok, &out), ["hello", "Ġworld", "Ġ", "1", "2"]);
    // The gpt-2 pre-tokenizer keeps " 12" as one word, so "1 2" merges.
    let gpt2 = Tokenizer::from_spec(&bpe_spec("gpt-2")).unwrap();
    let out = gpt2.encode("hello world 12", BosEos::Add, Special::Parse);
    assert_eq!(texts(&gpt2, &out), ["hello", "Ġworld", "Ġ", "12"]);
}

#[test]
fn special_tokens_parse_only_when_asked_but_user_defined_always() {
    let tok = Tokenizer::from_spec(&bpe_spec("smollm")).unwrap();
    let text = "<|im_start|>hello<tool><|im_end|>";
    let parsed = tok.encode(text, BosEos::Omit, Special::Parse);
    assert_eq!(
        texts(&tok, &parsed),
        ["<|im_start|>", "hello", "<tool>", "<|im_end|>"]
    );
    let plain = tok.encode(text, BosEos::Omit, Special::AsText);
    assert_eq!(plain.iter().filter(|id| id.0 == 1 || id.0 == 2).count(), 0);
    assert!(
        plain.contains(&TokenId(3)),
        "user-defined tokens are always recognized"
    );
    assert_eq!(tok.decode(&plain, Render::Text).unwrap(), text);
    // Control tokens render only on request; user-defined ones always.
    assert_eq!(tok.decode(&parsed, Render::Text).unwrap(), "hello<tool>");
    assert_eq!(tok.decode(&parsed, Render::WithControl).unwrap(), text);
}

#[test]
fn bos_and_eos_follow_the_vocabulary_flags() {
    let mut spec = bpe_spec("smollm");
    let tok = Tokenizer::from_spec(&spec).unwrap();
    assert!(!tok.adds_bos(), "byte-level BPE adds no BOS unless asked");
    assert_eq!(ids(&tok.encode("he", BosEos::Add, Special::Parse)), [260]);
    spec.add_bos = Some(true);
    spec.add_eos = Some(true);
    let tok = Tokenizer::from_spec(&spec).unwrap();
    assert_eq!(
        ids(&tok.encode("he", BosEos::Add, Special::Parse)),
        [0, 260, 2]
    );
    assert_eq!(ids(&tok.encode("he", BosEos::Omit, Special::Parse)), [260]);
    assert_eq!(ids(&tok.encode("", BosEos::Add, Special::Parse)), [0, 2]);
    // Llama 3 pre-tokenizers add BOS by default.
    spec.add_bos = None;
    spec.pre = Some("llama-bpe".into());
    assert!(Tokenizer::from_spec(&spec).unwrap().adds_bos());
}

#[test]
fn end_of_generation_includes_eos_and_known_texts() {
    let mut spec = bpe_spec("smollm");
    spec.token_types[0] = 1; // "<|endoftext|>" marked normal by mistake
    let tok = Tokenizer::from_spec(&spec).unwrap();
    assert_eq!(tok.end_of_generation(), [TokenId(0), TokenId(2)]);
    assert!(tok.is_end_of_generation(TokenId(2)));
    assert!(!tok.is_end_of_generation(TokenId(1)));
    assert_eq!(
        tok.token_type(TokenId(0)),
        Some(TokenType::Control),
        "forced to control"
    );
    assert_eq!(tok.special_tokens().eos, Some(TokenId(2)));
}

/// Deterministic pseudo-random text mixing ASCII, whitespace, digits, accents, CJK, emoji,
/// control chars and special-token fragments.
fn random_text(seed: &mut u64, len: usize) -> String {
    const PIECES: &[&str] = &[
        " ",
        "  ",
        "\n",
        "\r\n",
        "\t",
        "\u{a0}",
        "\u{3000}",
        "'s",
        "'LL",
        "a",
        "Z",
        "hello",
        "world",
        "0",
        "12",
        "345",
        "٣",
        "²",
        "é",
        "e\u{301}",
        "ß",
        "中",
        "文",
        "😀",
        "👨‍👩‍👧",
        "🇫🇷",
        "\u{0}",
        "\u{7f}",
        "\u{85}",
        "\u{200b}",
        "<|im_start|>",
        "<|im_end",
        "|>",
        "<",
        "!?",
        "...",
        "--",
        "\u{10ffff}",
        "\u{e000}",
    ];
    let mut s = String::new();
    for _ in 0..len {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        s.push_str(PIECES[(*seed % PIECES.len() as u64) as usize]);
    }
    s
}

#[test]
fn every_pre_tokenizer_round_trips_random_text() {
    for pre in ["default", "gpt-2", "smollm", "llama-bpe", "qwen2"] {
        let tok = Tokenizer::from_spec(&bpe_spec(pre)).unwrap();
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        for len in [0, 1, 2, 5, 20, 200] {
            for _ in 0..20 {
                let text = random_text(&mut seed, len);
                let out = tok.encode(&text, BosEos::Omit, Special::AsText);
                assert_eq!(
                    tok.decode(&out, Render::Text).unwrap(),
                    text,
                    "{pre}: {text:?}"
                );
            }
        }
        let all_chars: String = (0..=0x2FFu32).filter_map(char::from_u32).collect();
        let out = tok.encode(&all_chars, BosEos::Omit, Special::Parse);
        assert_eq!(tok.decode(&out, Render::WithControl).unwrap(), all_chars);
    }
}

#[test]
fn long_inputs_encode_in_linear_time() {
    let tok = Tokenizer::from_spec(&bpe_spec("smollm")).unwrap();
    // One 2 MiB word of letters and one 2 MiB whitespace run: each is a single BPE word.
    for text in ["hel".repeat(700_000), " ".repeat(2 << 20)] {
        let start = std::time::Instant::now();
        let out = tok.encode(&text, BosEos::Omit, Special::Parse);
        assert_eq!(tok.decode(&out, Render::Text).unwrap(), text);
        // Quadratic rescanning would take minutes here; linear work takes well under 1 s
        // even unoptimized on a shared core.
        assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
    }
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let tok = Tokenizer::from_spec(&bpe_spec("smollm")).unwrap();
    let text = "a😀é中 x\u{10ffff}";
    let out = tok.encode(text, BosEos::Omit, Special::Parse);
    let mut stream = tok.stream_decoder(Render::Text);
    let mut got = String::new();
    let mut held = 0;
    for &id in &out {
        if let Some(s) = stream.push(id).unwrap() {
            got.push_str(&s);
        }
        held = held.max(stream.pending_bytes());
        stream.check_invariants();
    }
    assert_eq!(stream.finish(), None);
    assert_eq!(got, text);
    assert_eq!(held, 3, "the emoji's first three bytes wait for its fourth");
}

#[test]
fn stream_and_batch_agree_on_invalid_utf8() {
    let tok = Tokenizer::from_spec(&bpe_spec("smollm")).unwrap();
    let byte = |b: u8| TokenId(4 + u32::from(b)); // byte tokens follow the 4 specials
    let sequences: Vec<Vec<TokenId>> = vec![
        vec![byte(0xF0), byte(0x9F), byte(b'a')], // truncated emoji, then ASCII
        vec![byte(0xFF), byte(0xC3), byte(0xA9)], // invalid byte, then "é"
        vec![byte(0xE4), byte(0xB8)],             // truncated at the end
        vec![byte(0x80), byte(0x80), byte(b' ')], // stray continuation bytes
        vec![byte(0xED), byte(0xA0), byte(0x80)], // a surrogate, invalid in UTF-8
        vec![byte(0xF4), byte(0x90), byte(0x80)], // past U+10FFFF
    ];
    for ids in sequences {
        let batch = tok.decode(&ids, Render::Text).unwrap();
        let mut stream = tok.stream_decoder(Render::Text);
        let mut streamed = String::new();
        for &id in &ids {
            streamed.extend(stream.push(id).unwrap());
        }
        streamed.extend(stream.finish());
        assert_eq!(streamed, batch, "{ids:?}");
        assert!(batch.contains('\u{FFFD}'));
    }
}

#[test]
fn stream_equals_batch_for_random_byte_sequences() {
    let tok = Tokenizer::from_spec(&bpe_spec("smollm")).unwrap();
    // Bytes drawn mostly from the interesting classes: ASCII, continuation bytes, lead
    // bytes of 2-, 3- and 4-byte sequences, and bytes never valid in UTF-8.
    const BYTES: &[u8] = &[
        b'a', b' ', 0x80, 0x9F, 0xBF, 0xC2, 0xC3, 0xE2, 0xED, 0xF0, 0xF4, 0xC0, 0xFF,
    ];
    let mut seed = 7u64;
    for _ in 0..3000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 9) as usize;
        let mut s = seed;
        let ids: Vec<TokenId> = (0..len)
            .map(|_| {
                s = s.rotate_left(5).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                TokenId(4 + u32::from(BYTES[(s >> 40) as usize % BYTES.len()]))
            })
            .collect();
        let batch = tok.decode(&ids, Render::Text).unwrap();
        let mut stream = tok.stream_decoder(Render::Text);
        let mut streamed = String::new();
        for &id in &ids {
            streamed.extend(stream.push(id).unwrap());
            stream.check_invariants();
            assert!(batch.starts_with(&streamed), "{ids:?}");
        }
        streamed.extend(stream.finish());
        assert_eq!(streamed, batch, "{ids:?}");
    }
}

#[test]
fn decoding_an_unknown_id_is_an_error() {
    let tok = Tokenizer::from_spec(&bpe_spec("smollm")).unwrap();
    let bad = TokenId(tok.vocab_size() as u32);
    let err = tok.decode(&[TokenId(5), bad], Render::Text).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownId {
            id: bad,
            vocab_size: tok.vocab_size()
        }
    );
    assert!(err.to_string().contains("270"), "{err}");
    assert!(tok.stream_decoder(Render::Text).push(bad).is_err());
    assert!(tok.token_bytes(bad).is_err());
    assert_eq!(tok.token_text(bad), None);
}

#[test]
fn table_bytes_counts_what_the_tables_hold() {
    let tok = Tokenizer::from_spec(&bpe_spec("smollm")).unwrap();
    let text_bytes: usize = bpe_spec("smollm").tokens.iter().map(String::len).sum();
    let bytes = tok.table_bytes();
    assert!(bytes > 2 * text_bytes as u64, "{bytes}");
    assert!(bytes < 64 * 1024, "{bytes}");
}

fn error_of(spec: &VocabSpec) -> VocabError {
    Tokenizer::from_spec(spec).unwrap_err()
}

#[test]
fn invalid_vocabularies_are_rejected_with_context() {
    let ok = bpe_spec("smollm");
    let mut s = ok.clone();
    s.model = "bert".into();
    assert!(matches!(error_of(&s), VocabError::UnknownModel { .. }));
    let mut s = ok.clone();
    s.pre = Some("klingon".into());
    assert!(error_of(&s).to_string().contains("klingon"));
    let mut s = ok.clone();
    s.tokens.clear();
    s.token_types.clear();
    assert_eq!(error_of(&s), VocabError::EmptyVocab);
    let mut s = ok.clone();
    s.token_types.pop();
    assert!(matches!(
        error_of(&s),
        VocabError::LengthMismatch {
            expected: 270,
            actual: 269,
            ..
        }
    ));
    let mut s = ok.clone();
    s.token_types[7] = 9;
    assert_eq!(
        error_of(&s),
        VocabError::InvalidTokenType { index: 7, value: 9 }
    );
    let mut s = ok.clone();
    s.tokens[269] = "he".into();
    assert!(matches!(
        error_of(&s),
        VocabError::DuplicateToken {
            first: 260,
            second: 269,
            ..
        }
    ));
    let mut s = ok.clone();
    s.merges[3] = "hello".into();
    assert!(matches!(
        error_of(&s),
        VocabError::MalformedMerge { index: 3, .. }
    ));
    let mut s = ok.clone();
    s.merges.clear();
    assert_eq!(error_of(&s), VocabError::MissingMerges);
    let mut s = ok.clone();
    s.eos_id = Some(270);
    let err = error_of(&s);
    assert_eq!(
        err,
        VocabError::SpecialIdOutOfRange {
            role: "eos",
            id: 270,
            vocab_size: 270
        }
    );
    assert!(err.to_string().contains("eos_token_id = 270"), "{err}");
    let mut s = ok.clone();
    s.bos_id = None;
    s.add_bos = Some(true);
    assert_eq!(error_of(&s), VocabError::MissingSpecialId { role: "bos" });
    let mut s = ok;
    s.tokens[9] = "x".repeat(tokenizer::MAX_TOKEN_BYTES + 1);
    assert!(matches!(
        error_of(&s),
        VocabError::TokenTooLong { index: 9, .. }
    ));
}

/// A SentencePiece vocabulary: unknown, BOS, EOS, 256 byte tokens, then scored pieces.
fn spm_spec() -> VocabSpec {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let pieces: [(&str, f32); 18] = [
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("w", -2.0),
        ("r", -2.0),
        ("d", -2.0),
        ("▁h", -3.0),
        ("▁he", -1.0),
        ("ll", -1.1),
        ("llo", -0.9),
        ("▁hello", -0.5),
        ("▁w", -2.0),
        ("or", -1.5),
        ("ld", -1.6),
        ("▁wor", -1.2),
        ("▁world", -0.7),
    ];
    for (t, score) in pieces {
        tokens.push(t.into());
        types.push(1);
        scores.push(score);
    }
    VocabSpec {
        model: "llama".into(),
        tokens,
        token_types: types,
        scores,
        ..VocabSpec::default()
    }
}

#[test]
fn sentencepiece_merges_by_score_with_byte_fallback() {
    let tok = Tokenizer::from_spec(&spm_spec()).unwrap();
    assert_eq!(tok.model_kind(), ModelKind::SentencePiece);
    assert!(tok.adds_bos(), "SentencePiece adds BOS by default");
    let out = tok.encode("hello world", BosEos::Add, Special::Parse);
    assert_eq!(texts(&tok, &out), ["<s>", "▁hello", "▁world"]);
    assert_eq!(tok.decode(&out, Render::Text).unwrap(), "hello world");
    assert_eq!(
        tok.decode(&out, Render::WithControl).unwrap(),
        "<s> hello world"
    );
    // "€" has no piece: its three UTF-8 bytes become byte tokens.
    let out = tok.encode("hello €", BosEos::Omit, Special::Parse);
    assert_eq!(
        texts(&tok, &out),
        ["▁hello", "▁", "<0xE2>", "<0x82>", "<0xAC>"]
    );
    assert_eq!(tok.decode(&out, Render::Text).unwrap(), "hello €");
    // A prefix space follows every special token, as in llama.cpp.
    let out = tok.encode("hello</s>world", BosEos::Omit, Special::Parse);
    assert_eq!(texts(&tok, &out), ["▁hello", "</s>", "▁world"]);
    assert_eq!(tok.encode("", BosEos::Omit, Special::Parse), []);
}

#[test]
fn sentencepiece_round_trips_random_text() {
    let tok = Tokenizer::from_spec(&spm_spec()).unwrap();
    let mut seed = 42;
    for _ in 0..200 {
        let text = random_text(&mut seed, 12);
        let out = tok.encode(&text, BosEos::Add, Special::AsText);
        let mut stream = tok.stream_decoder(Render::Text);
        let mut streamed = String::new();
        for &id in &out {
            streamed.extend(stream.push(id).unwrap());
        }
        streamed.extend(stream.finish());
        let batch = tok.decode(&out, Render::Text).unwrap();
        assert_eq!(batch, text);
        assert_eq!(streamed, batch);
    }
}

#[test]
fn finding6_no_token_stands_for_more_than_the_longest_token_bytes() {
    let tok = Tokenizer::from_spec(&bpe_spec("smollm")).unwrap();
    // `<|endoftext|>` (13 bytes) is the longest piece; merged words are at most 6.
    assert_eq!(tok.longest_token_bytes(), 13);
    // A text over n × longest bytes encodes to more than n tokens, whatever it holds: the
    // bound a prompt reader caps its read with.
    let longest = tok.longest_token_bytes();
    for text in [
        "<|endoftext|>".repeat(7),
        "hello world ".repeat(9),
        "\0".repeat(40),
        "é12".repeat(30),
    ] {
        let n = tok.encode(&text, BosEos::Omit, Special::Parse).len();
        assert!(n * longest >= text.len(), "{text:?}: {n} tokens");
    }
}
