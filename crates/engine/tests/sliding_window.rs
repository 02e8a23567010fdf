//! Gemma 3's sliding-window layers keep only their window in the KV memory: after a
//! prompt longer than two windows the ledger holds what the plan counts — the global
//! layers at every token, the windowed ones at their window — and the logits are bit for
//! bit those of the same run with every layer keeping every token.
//!
//! Runs where gemma-3-270m-q4_k_m.gguf is in `$LLMEM_MODELS` or `~/.cache/llmem/models`
//! at build time; reported as ignored elsewhere (see `scripts/model_cfg.rs`).

mod common_model;

use common_model::with_reference_model;
use engine::batch::{Batch, BatchConfig, Engine};
use engine::forward::{BLOCK_TOKENS, Logits, Session, SessionConfig, kv_layout};
use engine::sampler::argmax;
use kvcache::KvType;

/// Prompt tokens: more than two 512-token windows.
const PROMPT: usize = 1100;
/// The prompt is read in two calls, the second scored at every position.
const SCORED: usize = 64;
const DECODED: usize = 8;
const UBATCH: usize = 512;

/// What a run gives: every logit it returned, its peak and final KV bytes (the ledger's).
struct Run {
    logits: Vec<f32>,
    peak: u64,
    end: u64,
}

fn run(tm: &engine::text::TextModel<'_>, prompt: &[u32], thinning: bool) -> Run {
    let cfg = SessionConfig::new(2048, 2, UBATCH);
    let mut s = Session::unbudgeted(&tm.model, cfg).unwrap();
    s.set_thinning(thinning);
    let split = PROMPT - SCORED;
    let mut logits = s.eval(&prompt[..split], Logits::Last).unwrap().to_vec();
    logits.extend_from_slice(s.eval(&prompt[split..], Logits::All).unwrap());
    let vocab = tm.model.cfg.vocab;
    let mut next = argmax(&logits[logits.len() - vocab..]);
    for _ in 0..DECODED {
        let l = s.eval(&[next], Logits::Last).unwrap();
        next = argmax(l);
        logits.extend_from_slice(l);
    }
    s.kv().check_invariants();
    let ledger = s.kv().pool().reserved().expect("a session accounts its KV");
    assert_eq!(ledger, s.kv_bytes());
    Run {
        logits,
        peak: s.peak_kv_bytes(),
        end: ledger,
    }
}

#[test]
#[cfg_attr(
    not(llmem_model_gemma3),
    ignore = "needs gemma-3-270m-q4_k_m.gguf in $LLMEM_MODELS or ~/.cache/llmem/models"
)]
fn gemma3_windowed_layers_hold_their_window_and_logits_do_not_change() {
    let (path, file) = (
        option_env!("LLMEM_MODEL_GEMMA3"),
        "gemma-3-270m-q4_k_m.gguf",
    );
    with_reference_model(path, file, check_windows);
}

fn check_windows(tm: &engine::text::TextModel<'_>) {
    let text = "The cache keeps every token of the global layers and only the last \
                window of the local ones; a block out of every window drops them. "
        .repeat(80);
    let prompt = tm.encode(&text);
    assert!(prompt.len() >= PROMPT, "{} tokens", prompt.len());
    let prompt = &prompt[..PROMPT];

    let layout = kv_layout(&tm.model.cfg);
    let window = layout.window().expect("Gemma 3 has sliding-window layers");
    assert_eq!(
        (window, layout.n_global(), layout.n_windowed()),
        (512, 3, 15)
    );

    let thin = run(tm, prompt, true);
    let fat = run(tm, prompt, false);
    // Attention never reads what thinning drops: the same bits.
    assert_eq!(thin.logits.len(), fat.logits.len());
    let differ = thin
        .logits
        .iter()
        .zip(&fat.logits)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(differ, 0, "logits differ with thinning");

    let len = PROMPT + DECODED;
    let all_layers = len.div_ceil(BLOCK_TOKENS) as u64 * layout.block_bytes();
    assert_eq!(fat.end, all_layers);
    // The peak is the plan's figure for this length, read in 512-token micro-batches:
    // the windowed layers never held more than their window, not even while a
    // micro-batch was read (its own rows came from scratch) or a block was begun.
    let plan = KvType::F16.seq_bytes(&layout, len, UBATCH);
    assert_eq!(thin.peak, plan);
    assert_eq!(thin.end, at_rest(&layout, len));
    assert_eq!(thin.peak, thin.end);
    assert!(
        thin.end * 10 < all_layers * 6,
        "{} of {all_layers}",
        thin.end
    );
    eprintln!(
        "KV at {len} tokens: all layers {all_layers} B, thinned {} B at rest, peak {} B = plan",
        thin.end, thin.peak
    );

    // The batched engine (the server's) thins as it goes too: the prompt in the
    // scheduler's 256-token chunks.
    let mut e = Engine::unbudgeted(&tm.model, BatchConfig::new(2048, 1, 2)).unwrap();
    let seq = e.seq_new();
    for (i, chunk) in prompt.chunks(256).enumerate() {
        let mut b = Batch::new();
        b.push_tokens(seq, i * 256, chunk, Logits::Last);
        e.decode(&b).unwrap();
    }
    e.kv().check_invariants();
    assert_eq!(e.kv_bytes(), at_rest(&layout, PROMPT));
    assert_eq!(
        e.peak_kv_bytes(),
        KvType::F16.seq_bytes(&layout, PROMPT, UBATCH)
    );
    // And decoding on one token at a time: the window, never a block more.
    let mut next = PROMPT;
    for _ in 0..20 {
        let mut b = Batch::new();
        b.push_tokens(seq, next, &[prompt[next % 7]], Logits::Last);
        e.decode(&b).unwrap();
        next += 1;
        e.kv().check_invariants();
        assert_eq!(e.kv_bytes(), at_rest(&layout, next));
    }
    assert_eq!(
        e.peak_kv_bytes(),
        KvType::F16.seq_bytes(&layout, next, UBATCH)
    );
}

/// KV bytes of a sequence of `len` tokens: the global layers at every block, the
/// windowed ones at exactly their window (the block being written keeps its windowed
/// rows in place of those of the block one window earlier).
fn at_rest(layout: &kvcache::KvLayout, len: usize) -> u64 {
    let window = layout.window().unwrap();
    let blocks = len.div_ceil(BLOCK_TOKENS);
    let seen = blocks.min(window / BLOCK_TOKENS);
    let f16 = layout.thin_geom().block_bytes(kvcache::KvFormat::F16);
    let per_layer_block = f16 / layout.n_global();
    ((blocks * layout.n_global() + seen * layout.n_windowed()) * per_layer_block) as u64
}
