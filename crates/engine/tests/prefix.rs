//! Prefix sharing in the engine: many requests with one long common prefix store it once
//! and compute it once, and get the same logits as if each had run alone.

use engine::forward::{Logits, Session, SessionConfig};
use engine::model::Model;
use gguf::GgufFile;
use testkit::{TinyLlamaConfig, tiny_llama};

#[test]
fn thirty_two_requests_share_a_1024_token_prefix_stored_and_prefilled_once() {
    let tiny = tiny_llama(&TinyLlamaConfig {
        context_length: 2048,
        ..TinyLlamaConfig::default()
    });
    let file = GgufFile::parse(&tiny.bytes).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let vocab = model.cfg.vocab as u32;
    let prefix: Vec<u32> = (0..1024).map(|i| (i * 7919 + 13) % vocab).collect();
    let prompt = |r: u32| -> Vec<u32> {
        let mut p = prefix.clone();
        p.extend((0..10).map(|j| (r * 31 + j * 17 + 5) % vocab));
        p
    };
    let cfg = SessionConfig {
        n_seqs: 32,
        ..SessionConfig::new(1040, 2, 256)
    };
    let mut s = Session::unbudgeted(&model, cfg).unwrap();
    let mut last = Vec::new();
    for r in 0..32u32 {
        if r > 0 {
            s.new_seq();
        }
        let p = prompt(r);
        let reused = s.attach_prefix(&p).unwrap();
        assert_eq!(reused, if r == 0 { 0 } else { 1024 }, "request {r}");
        last.push(s.eval(&p[reused..], Logits::Last).unwrap().to_vec());
    }
    // Computed once: 1,024 prefix tokens, then 10 per request.
    assert_eq!(s.computed_tokens(), 1024 + 32 * 10);
    assert_eq!(s.kv().reused_tokens(), 31 * 1024);
    // Stored once: 64 shared blocks plus each request's own partial block.
    assert_eq!(s.kv().pool().used_blocks(), 64 + 32);
    let shared = s.kv().seq_blocks(s.seq()).unwrap()[..64].to_vec();
    for &b in &shared {
        assert_eq!(s.kv().pool().meta(b).ref_count, 32);
    }
    // Same answers as running alone, bit for bit.
    for r in [0u32, 7, 31] {
        let mut alone = Session::unbudgeted(&model, SessionConfig::new(1040, 2, 256)).unwrap();
        let want = alone.eval(&prompt(r), Logits::Last).unwrap();
        assert_eq!(want, &last[r as usize][..], "request {r}");
    }
}
