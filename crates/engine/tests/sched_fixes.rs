//! Scheduler fixes: a [`TokenHook`] forbids tokens by setting their logits to `-inf`, as
//! its docs say (the scheduler samples among the rest instead of taking the mask for a
//! broken forward pass); a service finishes every request it accepted (its scheduler does
//! not refuse them again by a queue count of its own).

use std::sync::{Arc, Mutex};

use engine::batch::{BatchConfig, Engine};
use engine::model::Model;
use engine::sampler::SamplerConfig;
use engine::sched::{Event, FinishReason, Request, SchedConfig, Scheduler, TokenHook};
use gguf::GgufFile;
use testkit::{TinyLlamaConfig, tiny_llama};

/// Allows only `allowed`.
struct Only(Vec<u32>);

impl TokenHook for Only {
    fn mask(&mut self, logits: &mut [f32]) {
        for (i, l) in logits.iter_mut().enumerate() {
            if !self.0.contains(&(i as u32)) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    fn accept(&mut self, _token: u32) -> bool {
        false
    }
}

#[test]
fn a_hook_that_masks_tokens_with_neg_infinity_is_obeyed() {
    let bytes = tiny_llama(&TinyLlamaConfig::default()).bytes;
    let file = GgufFile::parse(&bytes).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let engine = Engine::unbudgeted(&model, BatchConfig::new(64, 2, 1)).unwrap();
    let mut s = Scheduler::new(engine, SchedConfig::default());
    for temperature in [0.0, 1.0] {
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let req = Request {
            sampler: SamplerConfig {
                temperature,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: 1,
            },
            hook: Some(Box::new(Only(vec![5, 7]))),
            ..Request::greedy(vec![1, 2, 3], 6)
        };
        s.submit(
            req,
            Box::new(move |e| {
                ev.lock().unwrap().push(e);
                true
            }),
        )
        .unwrap();
        s.run_to_completion().unwrap();
        let events = events.lock().unwrap();
        let tokens: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                Event::Token { token, .. } => Some(*token),
                _ => None,
            })
            .collect();
        assert_eq!(tokens.len(), 6, "{events:?}");
        assert!(tokens.iter().all(|t| *t == 5 || *t == 7), "{tokens:?}");
        assert!(
            matches!(
                events.last(),
                Some(Event::Done {
                    reason: FinishReason::Length,
                    ..
                })
            ),
            "{events:?}"
        );
    }
}

#[test]
fn a_service_finishes_every_request_it_accepted_within_its_queue_bound() {
    use engine::memory::Accounts;
    use engine::sched::service::Service;
    use engine::shared::SharedModel;
    use std::sync::mpsc;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny_llama(&TinyLlamaConfig::default()).bytes).unwrap();
    let accounts = Accounts::unlimited();
    let model = SharedModel::load(&path, &accounts).unwrap();
    let sched = SchedConfig {
        max_running: 4,
        queue_cap: 1,
        ..SchedConfig::default()
    };
    let svc = Service::start(model, BatchConfig::new(64, 4, 1), sched, accounts).unwrap();
    let (tx, rx) = mpsc::channel();
    // Four fit the running slots: all are accepted at once, before any step admits them.
    for i in 0..4u32 {
        let tx = tx.clone();
        svc.submit(
            Request::greedy(vec![1, 2, 3 + i], 4),
            Box::new(move |e| {
                if let Event::Done { reason, .. } = e {
                    let _ = tx.send(reason);
                }
                true
            }),
        )
        .unwrap();
    }
    for _ in 0..4 {
        let reason = rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap();
        assert_eq!(reason, FinishReason::Length);
    }
}

#[test]
fn a_cancellation_shows_in_the_snapshot_when_nothing_else_runs() {
    use engine::memory::Accounts;
    use engine::sched::service::Service;
    use engine::shared::SharedModel;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny_llama(&TinyLlamaConfig::default()).bytes).unwrap();
    let accounts = Accounts::unlimited();
    let model = SharedModel::load(&path, &accounts).unwrap();
    let svc = Service::start(
        model,
        BatchConfig::new(512, 1, 1),
        SchedConfig::default(),
        accounts,
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let id = svc
        .submit(
            Request::greedy(vec![1, 2, 3], 400),
            Box::new(move |e| {
                let _ = tx.send(e);
                true
            }),
        )
        .unwrap();
    // Once it has generated a token, cancel it; nothing else is submitted after.
    while !matches!(rx.recv().unwrap(), Event::Token { .. }) {}
    svc.cancel(id);
    while !matches!(rx.recv().unwrap(), Event::Done { .. }) {}
    let t = Instant::now();
    while svc.snapshot().stats.cancelled != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            svc.snapshot().stats
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(svc.snapshot().stats.running, 0);
}

/// The tokens (with their log-probabilities' bits) a request got, and how it ended.
fn tokens_of(events: &[Event]) -> Vec<(u32, Option<u32>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Token { token, logprob, .. } => Some((*token, logprob.map(f32::to_bits))),
            _ => None,
        })
        .collect()
}

#[test]
fn many_requests_with_their_own_hooks_and_seeds_sample_as_they_would_alone() {
    // A decoded batch's rows are masked and sampled on the engine's threads at once: each
    // row must meet its own request's hook and sampler, whatever thread takes it.
    let bytes = tiny_llama(&TinyLlamaConfig::default()).bytes;
    let file = GgufFile::parse(&bytes).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let vocab = model.cfg.vocab as u32;
    let n = 6u32;
    let request = |i: u32| {
        // Request i may write only its own four tokens.
        let allowed: Vec<u32> = (0..4).map(|k| (3 + 4 * i + k) % vocab).collect();
        let req = Request {
            sampler: SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: 100 + u64::from(i),
            },
            hook: Some(Box::new(Only(allowed.clone()))),
            logprobs: true,
            ..Request::greedy(vec![1, 2 + i, 3], 12)
        };
        (req, allowed)
    };
    let run = |ids: &[u32]| -> Vec<Vec<Event>> {
        let engine = Engine::unbudgeted(&model, BatchConfig::new(64, 8, 3)).unwrap();
        let mut s = Scheduler::new(engine, SchedConfig::default());
        let logs: Vec<Arc<Mutex<Vec<Event>>>> = ids
            .iter()
            .map(|_| Arc::new(Mutex::new(Vec::new())))
            .collect();
        for (&i, log) in ids.iter().zip(&logs) {
            let log = log.clone();
            s.submit(
                request(i).0,
                Box::new(move |e| {
                    log.lock().unwrap().push(e);
                    true
                }),
            )
            .unwrap();
        }
        s.run_to_completion().unwrap();
        logs.iter()
            .map(|l| std::mem::take(&mut *l.lock().unwrap()))
            .collect()
    };
    let all: Vec<u32> = (0..n).collect();
    let together = run(&all);
    for i in 0..n {
        let alone = run(&[i]);
        let (got, want) = (tokens_of(&together[i as usize]), tokens_of(&alone[0]));
        assert_eq!(got.len(), 12, "request {i}: {:?}", together[i as usize]);
        let allowed = request(i).1;
        assert!(
            got.iter().all(|(t, _)| allowed.contains(t)),
            "request {i} wrote tokens outside its hook's {allowed:?}: {got:?}"
        );
        assert!(
            got.iter().all(|(_, lp)| lp.is_some()),
            "request {i}: {got:?}"
        );
        assert_eq!(got, want, "request {i}: together and alone differ");
    }
}
