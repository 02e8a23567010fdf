//! The batched engine on the real model (SmolLM2-135M-Instruct Q4_1): many sequences in
//! one forward pass give each sequence what it gets alone.
//!
//! Logits are compared bit for bit with a [`Session`] running the sequence alone on as
//! many threads. That holds by construction, not by luck: every row-wise step (norms,
//! 8-bit activation quantization, each weight row's dot product, RoPE) forms its sums in
//! the same order whatever else is in the micro-batch (the matmul tiles keep one row's
//! order; see kernels' `gemm_driver`), and each sequence's attention call has the shape
//! (queries, first position, thread count) the session gives it, so the kernel splits its
//! keys and merges the partial results in the same order. A sequence's prompt is cut
//! into the chunks a session cuts it into, and with a mixed cache its blocks are demoted
//! between them as a session demotes them.

mod common_model;

use common_model::{golden, ids, model_path};

use engine::batch::{Batch, BatchConfig, Engine};
use engine::forward::{Logits, Session, SessionConfig};
use engine::model::Model;
use engine::sampler::argmax;
use kernels::ops::log_softmax_at;
use kvcache::{SeqId, TierMix};

const THREADS: usize = 2;

/// Runs `f` on the loaded model (skips without it).
fn with_model(f: impl FnOnce(&engine::text::TextModel<'_>)) {
    let Some(path) = model_path() else { return };
    let file = weights::MappedFile::open(&path).unwrap();
    let gguf = gguf::GgufFile::parse(file.bytes()).unwrap();
    let tm = engine::text::TextModel::from_gguf(&gguf).unwrap();
    f(&tm);
}

/// A prompt of `len` tokens, different for each `seed`.
fn synthetic(len: usize, seed: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 7919 + seed * 104_729) % 40_000 + 100) as u32)
        .collect()
}

/// What one sequence produced: greedy tokens, and the logits each came from (after the
/// prompt, then after each generated token).
#[derive(Debug, Default, Clone)]
struct Trace {
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

impl Trace {
    fn push(&mut self, logits: &[f32]) -> u32 {
        let t = argmax(logits);
        self.tokens.push(t);
        self.logits.push(logits.to_vec());
        t
    }
}

/// `prompt` greedily decoded alone in a session for `steps` tokens.
fn alone(model: &Model<'_>, mix: TierMix, n_ctx: usize, prompt: &[u32], steps: usize) -> Trace {
    alone_on(THREADS, model, mix, n_ctx, prompt, steps)
}

/// [`alone`] on `threads` threads.
fn alone_on(
    threads: usize,
    model: &Model<'_>,
    mix: TierMix,
    n_ctx: usize,
    prompt: &[u32],
    steps: usize,
) -> Trace {
    let cfg = SessionConfig {
        kv_mix: mix,
        ..SessionConfig::new(n_ctx, threads, 512)
    };
    let mut s = Session::unbudgeted(model, cfg).unwrap();
    let mut tr = Trace::default();
    let mut next = tr.push(s.eval(prompt, Logits::Last).unwrap());
    for _ in 1..steps {
        next = tr.push(s.eval(&[next], Logits::Last).unwrap());
    }
    tr
}

/// Asserts `got` is `want` bit for bit.
fn assert_same(got: &Trace, want: &Trace, what: &str) {
    assert_eq!(got.tokens, want.tokens, "{what}: greedy tokens");
    for (step, (g, w)) in got.logits.iter().zip(&want.logits).enumerate() {
        let same = g.len() == w.len() && g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{what}: logits of step {step} differ");
    }
}

/// Live sequences decoded together, one greedy token each per step.
struct Together<'e, 'a, 'm> {
    e: &'e mut Engine<'a, 'm>,
    /// (sequence, its trace, next token to feed).
    live: Vec<(SeqId, Trace, u32)>,
}

impl Together<'_, '_, '_> {
    /// One batch: each live sequence's next token, plus the prompts of `joining` (new
    /// sequences, prefilled in the same batch). Returns the new sequences' ids.
    fn step(&mut self, joining: &[&[u32]]) -> Vec<SeqId> {
        let mut batch = Batch::new();
        for (seq, _, next) in &self.live {
            let pos = self.e.seq_tokens(*seq).unwrap().len();
            batch.push_tokens(*seq, pos, &[*next], Logits::Last);
        }
        let mut new = Vec::new();
        for p in joining {
            let seq = self.e.seq_new();
            batch.push_tokens(seq, 0, p, Logits::Last);
            new.push(seq);
        }
        let out = self.e.decode(&batch).unwrap();
        assert_eq!(out.n_rows(), self.live.len() + joining.len());
        // Rows follow the items that asked, in batch order.
        let mut item = 0;
        for (_, tr, next) in &mut self.live {
            *next = tr.push(out.logits(item).unwrap());
            item += 1;
        }
        for (seq, p) in new.iter().zip(joining) {
            item += p.len();
            let mut tr = Trace::default();
            let next = tr.push(out.logits(item - 1).unwrap());
            self.live.push((*seq, tr, next));
        }
        new
    }

    fn trace(&self, seq: SeqId) -> &Trace {
        &self.live.iter().find(|l| l.0 == seq).unwrap().1
    }
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn a_sequence_gets_the_same_bits_on_any_thread_count() {
    // Attention cuts a call by its shape, never by the pool: decode at depth 530 splits
    // each row's keys 8 ways on 1 thread as on 5; matrix products keep each row's order.
    with_model(|tm| {
        let prompt = synthetic(530, 7);
        let f16 = TierMix::uniform(kvcache::KvFormat::F16);
        let want = alone_on(1, &tm.model, f16, 600, &prompt, 8);
        for threads in [2, 5] {
            let got = alone_on(threads, &tm.model, f16, 600, &prompt, 8);
            assert_same(&got, &want, &format!("{threads} threads against 1"));
        }
    });
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn eight_sequences_decoded_together_match_each_decoded_alone_bit_for_bit() {
    with_model(|tm| {
        let model = &tm.model;
        let lens = [1usize, 3, 8, 20, 45, 100, 190, 530];
        let mut prompts: Vec<Vec<u32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| synthetic(n, i))
            .collect();
        prompts[3] = tm.encode("The capital of France is Paris, and the capital of Italy is");
        let steps = 12;
        let n_ctx = 600;
        let mut e = Engine::unbudgeted(model, BatchConfig::new(n_ctx, 8, THREADS)).unwrap();
        let mut t = Together {
            e: &mut e,
            live: Vec::new(),
        };
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let seqs = t.step(&refs);
        for _ in 1..steps {
            t.step(&[]);
        }
        for (i, (seq, p)) in seqs.iter().zip(&prompts).enumerate() {
            let want = alone(
                model,
                TierMix::uniform(kvcache::KvFormat::F16),
                n_ctx,
                p,
                steps,
            );
            assert_same(
                t.trace(*seq),
                &want,
                &format!("sequence {i} ({} tokens)", p.len()),
            );
        }
        let total: usize = prompts.iter().map(|p| p.len() + steps - 1).sum();
        assert_eq!(e.computed_tokens(), total as u64);
        e.check_invariants();
    });
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn a_sequence_joining_and_one_cancelled_mid_run_leave_the_others_unchanged() {
    with_model(|tm| {
        let model = &tm.model;
        let f16 = TierMix::uniform(kvcache::KvFormat::F16);
        let prompts = [synthetic(30, 1), synthetic(7, 2), synthetic(60, 3)];
        let late = synthetic(25, 4);
        let (steps, n_ctx) = (10, 128);
        let mut e = Engine::unbudgeted(model, BatchConfig::new(n_ctx, 4, THREADS)).unwrap();
        let mut t = Together {
            e: &mut e,
            live: Vec::new(),
        };
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let seqs = t.step(&refs);
        let mut joined = None;
        let mut cancelled = Trace::default();
        for step in 1..steps {
            // Step 3: a new sequence's prompt is prefilled beside the others' decodes.
            let late_ref = [late.as_slice()];
            let new = t.step(if step == 3 { &late_ref } else { &[] });
            joined = joined.or(new.first().copied());
            if step == 5 {
                let used = t.e.kv().pool().used_blocks();
                let own = t.e.kv().seq_blocks(seqs[1]).unwrap().len();
                cancelled = t.trace(seqs[1]).clone();
                t.live.retain(|l| l.0 != seqs[1]);
                t.e.seq_remove(seqs[1]);
                assert_eq!(t.e.kv().pool().used_blocks(), used - own, "blocks freed");
                assert!(t.e.seq_tokens(seqs[1]).is_none());
            }
        }
        for (i, (seq, p)) in seqs.iter().zip(&prompts).enumerate() {
            let want = alone(model, f16, n_ctx, p, steps);
            if i == 1 {
                let mut want = want;
                want.tokens.truncate(cancelled.tokens.len());
                want.logits.truncate(cancelled.logits.len());
                assert_same(&cancelled, &want, "the cancelled sequence, before it left");
            } else {
                assert_same(t.trace(*seq), &want, &format!("sequence {i}"));
            }
        }
        let joined = joined.expect("a sequence joined");
        let want = alone(model, f16, n_ctx, &late, steps - 3);
        assert_same(t.trace(joined), &want, "the sequence that joined");
        // A removed sequence is refused, not silently decoded.
        let mut b = Batch::new();
        b.push_tokens(seqs[1], 0, &[1], Logits::Last);
        assert!(matches!(
            t.e.decode(&b),
            Err(engine::forward::EvalError::Kv(
                kvcache::KvError::UnknownSeq(_)
            ))
        ));
        t.e.check_invariants();
    });
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn a_tiered_cache_applied_per_sequence_by_age_matches_a_session_with_the_same_mix() {
    with_model(|tm| {
        let model = &tm.model;
        let mix = kvcache::KvType::Tiered.mix();
        // Long enough that the mix demotes blocks to int8, 4-bit and 2-bit.
        let prompts = [
            synthetic(40, 5),
            synthetic(170, 6),
            synthetic(330, 7),
            synthetic(420, 8),
        ];
        let (steps, n_ctx) = (8, 448);
        let cfg = BatchConfig {
            kv_mix: mix,
            ..BatchConfig::new(n_ctx, 4, THREADS)
        };
        let mut e = Engine::unbudgeted(model, cfg).unwrap();
        let mut t = Together {
            e: &mut e,
            live: Vec::new(),
        };
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let seqs = t.step(&refs);
        for _ in 1..steps {
            t.step(&[]);
        }
        let tiers = t.e.kv().pool().tier_counts();
        assert!(
            tiers[1] > 0 && tiers[2] > 0,
            "blocks were demoted: {tiers:?}"
        );
        for (i, (seq, p)) in seqs.iter().zip(&prompts).enumerate() {
            let want = alone(model, mix, n_ctx, p, steps);
            assert_same(t.trace(*seq), &want, &format!("tiered sequence {i}"));
        }
        e.check_invariants();
    });
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn golden_prompts_all_in_one_batch_match_llama_cpp() {
    with_model(|tm| {
        let g = golden();
        let prompts = g["prompts"].as_array().unwrap();
        let mut e =
            Engine::unbudgeted(&tm.model, BatchConfig::new(256, prompts.len(), THREADS)).unwrap();

        // Greedy: every prompt prefilled in one batch, then decoded together.
        let mut t = Together {
            e: &mut e,
            live: Vec::new(),
        };
        let prompt_ids: Vec<Vec<u32>> = prompts.iter().map(|p| ids(&p["prompt_ids"])).collect();
        let refs: Vec<&[u32]> = prompt_ids.iter().map(Vec::as_slice).collect();
        let seqs = t.step(&refs);
        let n_gen = prompts
            .iter()
            .map(|p| ids(&p["gen_ids"]).len())
            .max()
            .unwrap();
        for _ in 1..n_gen {
            t.step(&[]);
        }
        for (p, seq) in prompts.iter().zip(&seqs) {
            let name = p["name"].as_str().unwrap();
            let must = p["must_match"].as_u64().unwrap() as usize;
            let gen_ids = ids(&p["gen_ids"]);
            assert_eq!(
                &t.trace(*seq).tokens[..must],
                &gen_ids[..must],
                "{name}: greedy tokens before the first near-tie"
            );
        }
        for seq in seqs {
            t.e.seq_remove(seq);
        }

        // Teacher forcing: every prompt + llama.cpp's continuation in one batch, logits
        // for every position.
        let mut batch = Batch::new();
        let mut first_item = Vec::new();
        for p in prompts {
            let all: Vec<u32> = ids(&p["prompt_ids"])
                .into_iter()
                .chain(ids(&p["gen_ids"]))
                .collect();
            let seq = t.e.seq_new();
            first_item.push(batch.len());
            batch.push_tokens(seq, 0, &all, Logits::All);
        }
        let out = t.e.decode(&batch).unwrap();
        let (mut sum, mut n, mut max) = (0.0f64, 0usize, 0.0f64);
        for (p, &first) in prompts.iter().zip(&first_item) {
            for tf in p["teacher_forced"].as_array().unwrap() {
                let pos = tf["pos"].as_u64().unwrap() as usize;
                let next = tf["next"].as_u64().unwrap() as usize;
                let want = tf["logprob"].as_f64().unwrap();
                let lp = f64::from(log_softmax_at(out.logits(first + pos).unwrap(), next));
                let d = (lp - want).abs();
                sum += d;
                n += 1;
                max = max.max(d);
            }
        }
        let mean = sum / n as f64;
        eprintln!(
            "batched teacher-forced |Δ logprob| vs llama.cpp: mean {mean:.4}, max {max:.4} over {n}"
        );
        assert!(mean <= 0.05, "mean |Δ logprob| {mean}");
        assert!(max <= 0.3, "max |Δ logprob| {max}");
    });
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn bad_batches_are_refused_with_nothing_changed() {
    with_model(|tm| {
        let model = &tm.model;
        let mut e = Engine::unbudgeted(model, BatchConfig::new(32, 2, THREADS)).unwrap();
        let (a, b) = (e.seq_new(), e.seq_new());
        let mut ok = Batch::new();
        ok.push_tokens(a, 0, &synthetic(5, 1), Logits::Last);
        e.decode(&ok).unwrap();
        let blocks = e.kv().pool().used_blocks();
        let cases: Vec<(Batch, &str)> = {
            let mut v = Vec::new();
            let mut gap = Batch::new();
            gap.push_tokens(a, 6, &[1], Logits::Last); // a holds 5: position 5 is next
            v.push((gap, "position gap"));
            let mut vocab = Batch::new();
            vocab.push_tokens(b, 0, &[1, model.cfg.vocab as u32], Logits::Last);
            v.push((vocab, "token outside the vocabulary"));
            let mut long = Batch::new();
            long.push_tokens(b, 0, &synthetic(33, 2), Logits::Last);
            v.push((long, "past the context"));
            v
        };
        for (batch, what) in &cases {
            assert!(e.decode(batch).is_err(), "{what}");
            assert_eq!(e.kv().pool().used_blocks(), blocks, "{what}: blocks");
            assert_eq!(e.seq_tokens(a).unwrap().len(), 5, "{what}");
            assert_eq!(e.seq_tokens(b).unwrap().len(), 0, "{what}");
        }
        // No room: a cache of 2 blocks (32 tokens) cannot take a second 17-token prompt.
        let cfg = BatchConfig {
            kv_blocks: Some(2),
            ..BatchConfig::new(32, 2, THREADS)
        };
        let mut small = Engine::unbudgeted(model, cfg).unwrap();
        let (c, d) = (small.seq_new(), small.seq_new());
        let mut batch = Batch::new();
        batch.push_tokens(c, 0, &synthetic(17, 3), Logits::Last);
        batch.push_tokens(d, 0, &synthetic(2, 4), Logits::Last);
        match small.decode(&batch) {
            Err(engine::forward::EvalError::NoRoom(n)) => {
                assert_eq!(
                    (n.needed_blocks, n.free_blocks, n.short_blocks()),
                    (3, 2, 1)
                );
            }
            other => panic!("expected no room, got {other:?}"),
        }
        assert_eq!(small.kv().pool().used_blocks(), 0);
        assert_eq!(small.computed_tokens(), 0);
        small.check_invariants();

        // A mixed cache grows a run at a time: refused at the second 128-token run of a
        // 300-token prompt, the first run stays computed and the engine consistent.
        let cfg = BatchConfig {
            kv_blocks: Some(10),
            kv_mix: kvcache::KvType::Tiered.mix(),
            ..BatchConfig::new(320, 1, THREADS)
        };
        let mut mixed = Engine::unbudgeted(model, cfg).unwrap();
        let s = mixed.seq_new();
        let mut batch = Batch::new();
        batch.push_tokens(s, 0, &synthetic(300, 5), Logits::Last);
        assert!(matches!(
            mixed.decode(&batch),
            Err(engine::forward::EvalError::NoRoom(_))
        ));
        assert_eq!(mixed.seq_tokens(s).unwrap().len(), 128);
        assert_eq!(mixed.computed_tokens(), 128);
        mixed.check_invariants();
    });
}

/// Prefix sharing runs on a tiny synthetic model: it is about blocks and counts, and 32
/// sequences of 1,000 tokens need no real weights.
mod prefix {
    use super::*;
    use gguf::GgufFile;
    use testkit::{TinyLlamaConfig, tiny_llama};

    const PREFIX: usize = 1000;
    const OWN: usize = 6;
    const SEQS: usize = 32;
    const BT: usize = engine::forward::BLOCK_TOKENS;

    fn prompts(vocab: u32) -> (Vec<u32>, Vec<Vec<u32>>) {
        let prefix: Vec<u32> = (0..PREFIX as u32)
            .map(|i| (i * 7919 + 13) % vocab)
            .collect();
        let own = (0..SEQS as u32)
            .map(|r| {
                (0..OWN as u32)
                    .map(|j| (r * 31 + j * 17 + 5) % vocab)
                    .collect()
            })
            .collect();
        (prefix, own)
    }

    /// KV bytes the brief allows: the prefix once, each sequence's own tokens, and one
    /// partial block per sequence.
    fn bound(e: &Engine<'_, '_>) -> u64 {
        let bb = e.kv().layout().block_bytes();
        let per_token = bb / BT as u64;
        PREFIX as u64 * per_token + SEQS as u64 * (OWN as u64 * per_token + bb)
    }

    fn tiny() -> Vec<u8> {
        tiny_llama(&TinyLlamaConfig {
            context_length: 2048,
            ..TinyLlamaConfig::default()
        })
        .bytes
    }

    #[test]
    fn thirty_two_forks_of_a_1000_token_prompt_hold_and_compute_it_once() {
        let bytes = tiny();
        let file = GgufFile::parse(&bytes).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let (prefix, own) = prompts(model.cfg.vocab as u32);
        let mut e =
            Engine::unbudgeted(&model, BatchConfig::new(PREFIX + OWN, SEQS, THREADS)).unwrap();
        let first = e.seq_new();
        let mut b = Batch::new();
        b.push_tokens(first, 0, &prefix, Logits::Last);
        e.decode(&b).unwrap();
        let mut seqs = vec![first];
        for _ in 1..SEQS {
            seqs.push(e.seq_fork(first).unwrap());
        }
        // Every sequence's own tokens in one batch.
        let mut b = Batch::new();
        for (s, o) in seqs.iter().zip(&own) {
            b.push_tokens(*s, PREFIX, o, Logits::Last);
        }
        let out = e.decode(&b).unwrap();
        let got: Vec<Vec<f32>> = (0..SEQS)
            .map(|i| out.logits(i * OWN + OWN - 1).unwrap().to_vec())
            .collect();
        assert_eq!(
            e.computed_tokens(),
            (PREFIX + SEQS * OWN) as u64,
            "prefix computed once"
        );
        // 62 full blocks shared by all; each sequence's partial block (8 prefix tokens
        // copied when forked, then its own 6) is its own.
        let shared = PREFIX / BT;
        assert_eq!(e.kv().pool().used_blocks(), shared + SEQS);
        for &blk in &e.kv().seq_blocks(first).unwrap()[..shared] {
            assert_eq!(e.kv().pool().meta(blk).ref_count, SEQS as u32);
        }
        assert!(
            e.kv_bytes() <= bound(&e),
            "{} > {}",
            e.kv_bytes(),
            bound(&e)
        );
        // Each got what it gets alone (same chunks, so bit for bit).
        for r in [0, 13, SEQS - 1] {
            let mut s = Session::unbudgeted(&model, SessionConfig::new(PREFIX + OWN, THREADS, 512))
                .unwrap();
            s.eval(&prefix, Logits::Last).unwrap();
            let want = s.eval(&own[r], Logits::Last).unwrap();
            assert!(
                want.iter()
                    .zip(&got[r])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "sequence {r}"
            );
        }
        e.check_invariants();
    }

    #[test]
    fn thirty_two_sequences_attach_a_published_1000_token_prefix_and_store_it_once() {
        let bytes = tiny();
        let file = GgufFile::parse(&bytes).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let (prefix, own) = prompts(model.cfg.vocab as u32);
        let prompt = |r: usize| -> Vec<u32> { prefix.iter().chain(&own[r]).copied().collect() };
        let mut e =
            Engine::unbudgeted(&model, BatchConfig::new(PREFIX + OWN, SEQS, THREADS)).unwrap();
        let first = e.seq_new();
        let mut b = Batch::new();
        b.push_tokens(first, 0, &prompt(0), Logits::Last);
        e.decode(&b).unwrap();
        // The other 31 join together: each attaches the published full blocks and
        // decodes the rest of its prompt, all in one batch.
        let mut b = Batch::new();
        let mut last_item = Vec::new();
        for r in 1..SEQS {
            let s = e.seq_new();
            let p = prompt(r);
            let n = e.seq_attach_prefix(s, &p, None).unwrap();
            assert_eq!(n, PREFIX / BT * BT, "request {r}: whole shared blocks");
            b.push_tokens(s, n, &p[n..], Logits::Last);
            last_item.push(b.len() - 1);
        }
        e.decode(&b).unwrap();
        let tail = PREFIX % BT + OWN;
        assert_eq!(
            e.computed_tokens(),
            (PREFIX + OWN + (SEQS - 1) * tail) as u64,
            "the shared blocks were computed once; each recomputes only its partial block"
        );
        assert_eq!(
            e.kv().reused_tokens(),
            ((SEQS - 1) * (PREFIX / BT * BT)) as u64
        );
        assert_eq!(e.kv().pool().used_blocks(), PREFIX / BT + SEQS);
        assert!(
            e.kv_bytes() <= bound(&e),
            "{} > {}",
            e.kv_bytes(),
            bound(&e)
        );
        e.check_invariants();
    }
}
