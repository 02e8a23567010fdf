//! The scheduler on the real model (SmolLM2-135M-Instruct Q4_1): continuous batching
//! gives each request the tokens it gets alone, sequences join and leave mid-run without
//! changing the others, and a budget that holds the KV of about four sequences finishes
//! sixteen with unchanged answers, walking the pressure ladder.

mod common_model;

use std::sync::{Arc, Mutex};

use budget::{BudgetBuilder, Bytes, Policy};
use common_model::model_path;
use engine::batch::{BatchConfig, Engine};
use engine::forward::{Logits, Session, SessionConfig};
use engine::memory::Accounts;
use engine::model::Model;
use engine::sampler::argmax;
use engine::sched::{
    Event, FinishReason, Pressure, Request, SchedConfig, SchedStats, Scheduler, Sink,
};
use engine::text::TextModel;
use kvcache::BlockStore;

const THREADS: usize = 2;

fn with_model(f: impl FnOnce(&TextModel<'_>)) {
    let Some(path) = model_path() else { return };
    let file = weights::MappedFile::open(&path).unwrap();
    let gguf = gguf::GgufFile::parse(file.bytes()).unwrap();
    let tm = TextModel::from_gguf(&gguf).unwrap();
    f(&tm);
}

/// Real prompts of different lengths (real text: greedy continuations without near-ties
/// in their first tokens are the rule, unlike random token ids).
fn prompts(tm: &TextModel<'_>, n: usize) -> Vec<Vec<u32>> {
    let topics = [
        "the history of the printing press",
        "how bees make honey",
        "why the sky is blue",
        "the rules of chess",
        "how a steam engine works",
        "the water cycle",
        "the life of a star",
        "how vaccines train the immune system",
        "the causes of the seasons",
        "how computers store numbers",
        "the invention of the telescope",
        "why leaves change colour in autumn",
        "how bridges carry loads",
        "the migration of birds",
        "how a compiler works",
        "the discovery of penicillin",
    ];
    (0..n)
        .map(|i| {
            let t = topics[i % topics.len()];
            let mut text = format!("Write a short explanation of {t}.");
            // Different lengths: 0 to 3 extra sentences.
            for _ in 0..i % 4 {
                text.push_str(" Use simple words that a child can follow, and give one example.");
            }
            tm.encode(&tm.chat_prompt(&text).unwrap())
        })
        .collect()
}

/// `first`, then `then` repeated, until at least 200 tokens.
fn long_prompt(first: &[u32], then: &[u32]) -> Vec<u32> {
    let mut long = first.to_vec();
    while long.len() < 200 {
        long.extend_from_slice(then);
    }
    long
}

/// A scheduler with default settings on an unbudgeted engine for four sequences.
fn plain_scheduler<'a, 'm>(tm: &'a TextModel<'m>) -> Scheduler<'a, 'm> {
    Scheduler::new(
        Engine::unbudgeted(&tm.model, BatchConfig::new(512, 4, THREADS)).unwrap(),
        SchedConfig::default(),
    )
}

/// What one request produced.
#[derive(Clone, Debug, Default)]
struct Out {
    tokens: Vec<u32>,
    /// Top-2 log-probability gap at each generated token (near-tie detection).
    gaps: Vec<f32>,
    done: Option<(FinishReason, engine::sched::Usage)>,
}

fn sink(out: &Arc<Mutex<Out>>) -> Sink {
    let out = out.clone();
    Box::new(move |ev| {
        let mut o = out.lock().unwrap();
        match ev {
            Event::Token {
                token,
                logprob,
                top,
            } => {
                o.tokens.push(token);
                if top.len() >= 2 {
                    o.gaps.push(top[0].1 - top[1].1);
                }
                // Asked for (`request`), the token's log-probability comes, and a greedy
                // token's is the top one's.
                let lp = logprob.expect("the request asked for log-probabilities");
                if token == top[0].0 {
                    assert!((lp - top[0].1).abs() < 1e-6, "{lp} vs {:?}", top[0]);
                }
            }
            Event::Done { reason, usage } => o.done = Some((reason, usage)),
            Event::PromptLogprob { .. } => {}
        }
        true
    })
}

fn request(prompt: &[u32], max_tokens: usize) -> Request {
    Request {
        logprobs: true,
        top_logprobs: 2,
        ..Request::greedy(prompt.to_vec(), max_tokens)
    }
}

/// Greedy decode of `prompt` alone in a session.
fn alone(model: &Model<'_>, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut s = Session::unbudgeted(model, SessionConfig::new(1024, THREADS, 512)).unwrap();
    let mut out = vec![argmax(s.eval(prompt, Logits::Last).unwrap())];
    while out.len() < steps {
        let l = s.eval(&[*out.last().unwrap()], Logits::Last).unwrap();
        out.push(argmax(l));
    }
    out
}

/// Runs `reqs` through a scheduler on `accounts` and returns each one's output and the
/// counters.
fn run_all(
    model: &Model<'_>,
    reqs: &[(Vec<u32>, usize)],
    bcfg: BatchConfig,
    scfg: SchedConfig,
    accounts: &Accounts,
) -> (Vec<Out>, SchedStats) {
    let engine = Engine::with_accounts(model, bcfg, accounts).unwrap();
    let timed = scfg.time_phases;
    let mut s = Scheduler::new(engine, scfg);
    let outs: Vec<Arc<Mutex<Out>>> = reqs.iter().map(|_| Arc::default()).collect();
    for ((p, n), o) in reqs.iter().zip(&outs) {
        s.submit(request(p, *n), sink(o)).unwrap();
    }
    let mut guard = 0;
    while s.has_work() {
        s.step().unwrap();
        s.engine().check_invariants();
        guard += 1;
        assert!(guard < 100_000, "the scheduler does not make progress");
    }
    let outs = outs.iter().map(|o| o.lock().unwrap().clone()).collect();
    let stats = s.stats();
    assert_eq!(
        stats.steps_by_tokens.iter().sum::<u64>(),
        stats.steps,
        "every step is counted in one class of tokens"
    );
    for c in 0..stats.steps_by_tokens.len() {
        let by_phase: u64 = stats.phase_us_by_tokens[c].iter().sum();
        if !timed {
            assert_eq!(by_phase, 0, "phases are timed only when asked");
        } else if stats.steps_by_tokens[c] > 0 {
            // The phases split the step's time: together at most the step (each rounded
            // down to whole microseconds), and not nothing.
            assert!(by_phase > 0, "class {c}: steps ran, no phase was timed");
            assert!(
                by_phase <= stats.step_us_by_tokens[c],
                "class {c}: phases over the steps"
            );
        }
    }
    (outs, stats)
}

/// Tokens of `got` equal `want`'s up to the first near-tie of `want` (top-2 gap < 0.2,
/// as the golden files define it), and at least `min` of them.
fn same_until_near_tie(got: &Out, want: &Out, min: usize, what: &str) {
    let upto = want
        .gaps
        .iter()
        .position(|&g| g < 0.2)
        .map_or(want.tokens.len(), |p| p + 1);
    assert_eq!(
        &got.tokens[..upto.min(got.tokens.len())],
        &want.tokens[..upto.min(got.tokens.len())],
        "{what}"
    );
    assert!(got.tokens.len() >= upto.min(min), "{what}: too few tokens");
}

#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
#[test]
fn eight_requests_together_get_the_tokens_they_get_alone() {
    with_model(|tm| {
        let ps = prompts(tm, 8);
        let reqs: Vec<(Vec<u32>, usize)> = ps.iter().map(|p| (p.clone(), 24)).collect();
        let scfg = SchedConfig {
            // Small chunks: prompts are prefilled over several steps beside decodes.
            prefill_chunk: 32,
            step_tokens: 96,
            time_phases: true,
            ..SchedConfig::default()
        };
        let (outs, stats) = run_all(
            &tm.model,
            &reqs,
            BatchConfig::new(512, 8, THREADS),
            scfg,
            &Accounts::unlimited(),
        );
        for (i, (p, o)) in ps.iter().zip(&outs).enumerate() {
            let want = alone(&tm.model, p, 24);
            let ref_out = Out {
                tokens: want,
                gaps: o.gaps.clone(),
                done: None,
            };
            same_until_near_tie(o, &ref_out, 8, &format!("request {i}"));
            let (reason, usage) = o.done.clone().unwrap();
            assert_eq!(reason, FinishReason::Length);
            assert_eq!(usage.completion_tokens, 24);
            assert_eq!(usage.prompt_tokens, p.len());
        }
        assert_eq!(stats.finished, 8);
        assert!(stats.peak_running >= 8, "{stats:?}");
        assert_eq!(stats.preemptions, 0);
    });
}

#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
#[test]
fn joining_and_cancelling_mid_run_leave_the_others_unchanged() {
    with_model(|tm| {
        let ps = prompts(tm, 4);
        let mut s = plain_scheduler(tm);
        let outs: Vec<Arc<Mutex<Out>>> = (0..4).map(|_| Arc::default()).collect();
        let a = s.submit(request(&ps[0], 20), sink(&outs[0])).unwrap();
        let cancelled = s.submit(request(&ps[1], 20), sink(&outs[1])).unwrap();
        for _ in 0..5 {
            s.step().unwrap();
        }
        // One joins mid-run, one leaves.
        s.submit(request(&ps[2], 20), sink(&outs[2])).unwrap();
        s.cancel(cancelled);
        for _ in 0..3 {
            s.step().unwrap();
        }
        s.submit(request(&ps[3], 20), sink(&outs[3])).unwrap();
        s.run_to_completion().unwrap();
        assert!(!s.is_live(a));
        // Every block came back.
        assert_eq!(s.engine().kv().pool().used_blocks(), 0);
        for i in [0, 2, 3] {
            let o = outs[i].lock().unwrap().clone();
            assert_eq!(o.tokens, alone(&tm.model, &ps[i], 20), "request {i}");
        }
        let c = outs[1].lock().unwrap().clone();
        assert_eq!(c.done.unwrap().0, FinishReason::Cancelled);
        assert!(c.tokens.len() < 20);
    });
}

#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
#[test]
fn higher_priority_runs_first_and_shared_prompts_are_computed_once() {
    with_model(|tm| {
        let ps = prompts(tm, 2);
        let mut s = Scheduler::new(
            Engine::unbudgeted(&tm.model, BatchConfig::new(512, 4, THREADS)).unwrap(),
            SchedConfig {
                max_running: 1,
                ..SchedConfig::default()
            },
        );
        let order = Arc::new(Mutex::new(Vec::new()));
        let mk = |tag: usize| -> Sink {
            let order = order.clone();
            Box::new(move |ev| {
                // Not asked for, no log-probability is computed.
                if let Event::Token { logprob, .. } = &ev {
                    assert_eq!(*logprob, None);
                }
                if matches!(ev, Event::Done { .. }) {
                    order.lock().unwrap().push(tag);
                }
                true
            })
        };
        s.submit(Request::greedy(ps[0].clone(), 4), mk(0)).unwrap();
        s.submit(
            Request {
                priority: 5,
                ..Request::greedy(ps[1].clone(), 4)
            },
            mk(1),
        )
        .unwrap();
        s.run_to_completion().unwrap();
        assert_eq!(*order.lock().unwrap(), vec![1, 0]);

        // A long shared prompt: a request arriving while another holds it attaches
        // its full blocks instead of computing them.
        let long = long_prompt(&ps[0], &ps[1]);
        let mut s = plain_scheduler(tm);
        let outs: Vec<Arc<Mutex<Out>>> = (0..2).map(|_| Arc::default()).collect();
        s.submit(request(&long, 8), sink(&outs[0])).unwrap();
        s.step().unwrap(); // the whole prompt (one chunk): the first is decoding now
        s.submit(request(&long, 8), sink(&outs[1])).unwrap();
        s.run_to_completion().unwrap();
        let full_blocks = (long.len() - 1) / 16 * 16;
        assert_eq!(s.stats().cached_tokens, full_blocks as u64);
        let o: Vec<Out> = outs.iter().map(|o| o.lock().unwrap().clone()).collect();
        assert_eq!(o[1].done.as_ref().unwrap().1.cached_tokens, full_blocks);
        same_until_near_tie(&o[1], &o[0], 4, "shared prefix");
        assert!(
            s.engine().computed_tokens() < 2 * long.len() as u64 - full_blocks as u64 + 20,
            "computed {}",
            s.engine().computed_tokens()
        );
    });
}

/// A ledger whose `kv` pool holds `kv_bytes`; weights and scratch have room.
fn kv_budget(kv_bytes: u64) -> Accounts {
    let big = Bytes(1 << 34);
    let b = BudgetBuilder::new(Bytes(2 * big.0 + kv_bytes))
        .pool("weights", Policy::Reserved, big)
        .pool("scratch", Policy::Reserved, big)
        .pool("kv", Policy::Tiered, Bytes(kv_bytes))
        .build()
        .unwrap();
    Accounts::of(&b).unwrap()
}

#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
#[test]
fn sixteen_requests_under_a_four_sequence_budget_all_finish_unchanged() {
    with_model(|tm| {
        let ps = prompts(tm, 16);
        let n_gen = 32;
        let reqs: Vec<(Vec<u32>, usize)> = ps.iter().map(|p| (p.clone(), n_gen)).collect();
        let bcfg = BatchConfig::new(256, 16, THREADS);
        let scfg = SchedConfig {
            prefill_chunk: 64,
            step_tokens: 256,
            ..SchedConfig::default()
        };
        let (free, free_stats) =
            run_all(&tm.model, &reqs, bcfg, scfg.clone(), &Accounts::unlimited());
        assert_eq!(free_stats.preemptions, 0);

        // About four sequences' KV: the longest prompt plus its answer, four times.
        let layout_bytes_per_token = {
            let c = &tm.model.cfg;
            (c.n_layers * c.n_kv_heads * c.head_dim * 2 * 2) as u64
        };
        let longest = ps.iter().map(Vec::len).max().unwrap() + n_gen;
        let budget = 4 * longest.div_ceil(16) as u64 * 16 * layout_bytes_per_token;

        // Rung by rung. Without a place to keep a preempted sequence's KV it is
        // recomputed; with a disk store it is written and read back exactly; with
        // demotion it is kept in fewer bits.
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            BlockStore::open(dir.path(), tm.model.digest, kvcache::Compression::None).unwrap(),
        );
        for (name, pressure) in [
            ("recompute", Pressure::default()),
            (
                "disk",
                Pressure {
                    demote: false,
                    store: Some(store.clone()),
                },
            ),
            (
                "demote",
                Pressure {
                    demote: true,
                    store: None,
                },
            ),
        ] {
            let accounts = kv_budget(budget);
            let (outs, stats) = run_all(
                &tm.model,
                &reqs,
                bcfg,
                SchedConfig {
                    pressure,
                    ..scfg.clone()
                },
                &accounts,
            );
            let snap = accounts.budget.snapshot();
            let kv = snap.pools.iter().find(|p| p.name.as_str() == "kv").unwrap();
            assert!(
                kv.peak.0 <= budget,
                "{name}: kv peak {} > {budget}",
                kv.peak.0
            );
            assert_eq!(stats.finished, 16, "{name}: {stats:?}");
            assert!(stats.preemptions > 0, "{name}: no pressure? {stats:?}");
            match name {
                "recompute" => assert!(stats.recomputes > 0, "{stats:?}"),
                "disk" => assert!(stats.disk_writes > 0, "{stats:?}"),
                _ => assert!(stats.demotions > 0, "{stats:?}"),
            }
            eprintln!("{name}: {stats:?}, kv peak {} of {budget}", kv.peak.0);
            for (i, (o, f)) in outs.iter().zip(&free).enumerate() {
                assert_eq!(
                    o.done.as_ref().unwrap().0,
                    FinishReason::Length,
                    "{name} {i}"
                );
                assert_eq!(o.tokens.len(), n_gen, "{name} {i}");
                match name {
                    // Exactly the blocks it had: the same tokens.
                    "disk" => assert_eq!(o.tokens, f.tokens, "{name}: request {i}"),
                    // Computed again in other chunks: the same up to a near-tie.
                    "recompute" => same_until_near_tie(o, f, 8, &format!("{name} {i}")),
                    // Fewer bits: answers may drift; they must still be complete.
                    _ => {}
                }
            }
        }
    });
}

#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
#[test]
fn the_service_answers_from_its_thread_and_gives_back_kv_under_pressure() {
    use engine::sched::service::Service;
    use engine::shared::SharedModel;
    use std::sync::mpsc;
    let Some(path) = model_path() else { return };
    let accounts = kv_budget(1 << 30);
    let model = SharedModel::load(&path, &accounts).unwrap();
    let ps = prompts(model.text(), 4);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        BlockStore::open(
            dir.path(),
            model.text().model.digest,
            kvcache::Compression::None,
        )
        .unwrap(),
    );
    let svc = Service::start(
        model.clone(),
        BatchConfig::new(256, 4, THREADS),
        SchedConfig {
            pressure: Pressure {
                demote: false,
                store: Some(store),
            },
            ..SchedConfig::default()
        },
        accounts.clone(),
    )
    .unwrap();
    let (tx, rx) = mpsc::channel::<(usize, Event)>();
    for (i, p) in ps.iter().enumerate() {
        let tx = tx.clone();
        svc.submit(
            Request::greedy(p.clone(), 24),
            Box::new(move |ev| tx.send((i, ev)).is_ok()),
        )
        .unwrap();
    }
    drop(tx);
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); 4];
    let mut asked = false;
    let mut done = 0;
    while done < 4 {
        let (i, ev) = rx.recv().unwrap();
        match ev {
            Event::Token { token, .. } => tokens[i].push(token),
            Event::Done { reason, .. } => {
                assert_eq!(reason, FinishReason::Length);
                done += 1;
            }
            Event::PromptLogprob { .. } => {}
        }
        // Mid-run, the pressure ladder asks the kv pool for everything it holds.
        if !asked && tokens.iter().all(|t| t.len() >= 4) {
            let kv_used = accounts.budget.used(accounts.kv).0;
            accounts.budget.reclaim(accounts.kv, Bytes(kv_used));
            asked = true;
        }
    }
    assert!(asked);
    svc.shutdown();
    let snap = svc.snapshot();
    assert!(snap.stats.pressure_reclaims >= 1, "{:?}", snap.stats);
    assert!(snap.stats.preemptions >= 1, "{:?}", snap.stats);
    assert!(snap.stats.disk_writes >= 1, "{:?}", snap.stats);
    for (i, p) in ps.iter().enumerate() {
        assert_eq!(tokens[i], alone(&model.text().model, p, 24), "request {i}");
    }
    assert_eq!(svc.in_flight(), 0);
}

#[test]
fn a_kept_sequence_serves_its_continuation_until_released_or_pressed_out() {
    with_model(|tm| {
        let ps = prompts(tm, 2);
        let long = long_prompt(&ps[0], &ps[1]);
        let mut s = plain_scheduler(tm);
        let first = Arc::<Mutex<Out>>::default();
        let id = s.submit(request(&long, 8), sink(&first)).unwrap();
        s.keep(id);
        s.run_to_completion().unwrap();
        assert_eq!(s.stats().kept, 1);
        assert!(s.is_known(id) && !s.is_live(id));
        // The continuation: the prompt, the reply as generated, a follow-up.
        let mut next = long.clone();
        next.extend_from_slice(&first.lock().unwrap().tokens);
        next.extend_from_slice(&ps[1][..8]);
        // The kept sequence holds every token but the last one generated (never fed).
        let held = long.len() + 8 - 1;
        let follow = |s: &mut Scheduler<'_, '_>| {
            let o = Arc::<Mutex<Out>>::default();
            s.submit(request(&next, 4), sink(&o)).unwrap();
            s.run_to_completion().unwrap();
            s.engine().check_invariants();
            let done = o.lock().unwrap().done.clone().unwrap();
            assert_eq!(done.0, FinishReason::Length);
            done.1.cached_tokens
        };
        assert_eq!(follow(&mut s), held / 16 * 16);
        s.release(id);
        assert_eq!(s.stats().kept, 0);
        assert!(!s.is_known(id));
        assert_eq!(follow(&mut s), 0, "released blocks are gone");

        // A cancelled request is not kept; a kept one is the first to go under pressure.
        let mut s = Scheduler::new(
            Engine::unbudgeted(
                &tm.model,
                BatchConfig {
                    kv_blocks: Some(20),
                    ..BatchConfig::new(512, 4, THREADS)
                },
            )
            .unwrap(),
            SchedConfig::default(),
        );
        let c = s.submit(request(&long, 8), sink(&Arc::default())).unwrap();
        s.keep(c);
        s.step().unwrap();
        s.cancel(c);
        assert_eq!(s.stats().kept, 0);
        let k = s.submit(request(&long, 8), sink(&Arc::default())).unwrap();
        s.keep(k);
        s.run_to_completion().unwrap();
        assert_eq!(s.stats().kept, 1);
        let other = Arc::<Mutex<Out>>::default();
        let unrelated = long_prompt(&ps[1], &ps[0]);
        s.submit(request(&unrelated, 8), sink(&other)).unwrap();
        s.run_to_completion().unwrap();
        s.engine().check_invariants();
        let st = s.stats();
        assert_eq!((st.kept, st.kept_dropped, st.preemptions), (0, 1, 0));
        assert_eq!(other.lock().unwrap().tokens.len(), 8);
    });
}

#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
#[test]
fn a_prefix_store_gives_a_later_scheduler_the_blocks_an_earlier_one_wrote() {
    use engine::sched::PrefixStore;
    with_model(|tm| {
        let ps = prompts(tm, 2);
        let shared = long_prompt(&ps[0], &ps[1]);
        let dir = tempfile::tempdir().unwrap();
        let bcfg = BatchConfig::new(512, 2, THREADS);
        // As a server on the same directory after a restart: a fresh store handle and a
        // fresh engine each time.
        let run = || {
            let id = bcfg.kv_store_identity(1, 2);
            let store = BlockStore::open(dir.path(), id, kvcache::Compression::None).unwrap();
            let scfg = SchedConfig {
                prefix_store: Some(PrefixStore {
                    store: Arc::new(store),
                    max_bytes: 1 << 30,
                }),
                ..SchedConfig::default()
            };
            run_all(
                &tm.model,
                &[(shared.clone(), 8)],
                bcfg,
                scfg,
                &Accounts::unlimited(),
            )
        };
        let (first, s1) = run();
        let (second, s2) = run();
        assert!(s1.prefix_writes > 0, "{s1:?}");
        assert_eq!(s1.cached_tokens, 0, "{s1:?}");
        // Whole blocks, short of the last token (its logits are wanted).
        let cached = second[0].done.as_ref().unwrap().1.cached_tokens;
        assert!(
            cached >= 192 && cached < shared.len(),
            "{cached} of {}",
            shared.len()
        );
        assert_eq!(s2.prefix_write_failures, 0);
        same_until_near_tie(&second[0], &first[0], 4, "after the restart");
        // Another identity (another model, KV type or evaluation) finds nothing.
        let other = BatchConfig {
            n_threads: THREADS + 1,
            ..bcfg
        };
        assert_ne!(other.kv_store_identity(1, 2), bcfg.kv_store_identity(1, 2));
        assert_ne!(bcfg.kv_store_identity(1, 2), bcfg.kv_store_identity(3, 2));
    });
}
