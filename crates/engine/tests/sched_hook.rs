//! A `TokenHook` forbids tokens by setting their logits to `-inf`, as its docs say: the
//! scheduler samples among the rest instead of failing the request as if the forward pass
//! had produced a non-finite logit.

use std::sync::{Arc, Mutex};

use engine::batch::{BatchConfig, Engine};
use engine::model::Model;
use engine::sampler::SamplerConfig;
use engine::sched::{Event, FinishReason, Request, SchedConfig, Scheduler, TokenHook};
use gguf::GgufFile;
use testkit::{TinyLlamaConfig, tiny_llama};

/// Allows only `allowed`; ends the request after `stop_after` tokens.
struct Only {
    allowed: Vec<u32>,
    seen: usize,
    stop_after: usize,
}

impl TokenHook for Only {
    fn mask(&mut self, logits: &mut [f32]) {
        for (i, l) in logits.iter_mut().enumerate() {
            if !self.allowed.contains(&(i as u32)) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    fn accept(&mut self, _token: u32) -> bool {
        self.seen += 1;
        self.seen >= self.stop_after
    }
}

#[test]
fn a_hook_that_masks_with_neg_infinity_constrains_sampling() {
    let bytes = tiny_llama(&TinyLlamaConfig::default()).bytes;
    let file = GgufFile::parse(&bytes).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let engine = Engine::new(&model, BatchConfig::new(128, 2, 1)).unwrap();
    let mut s = Scheduler::new(engine, SchedConfig::default());
    let allowed = vec![3, 5, 7];
    for temperature in [0.0, 1.0] {
        let got = Arc::new(Mutex::new((Vec::new(), None)));
        let g = got.clone();
        let req = Request {
            sampler: SamplerConfig {
                temperature,
                top_k: 0,
                top_p: 1.0,
                seed: 1,
            },
            hook: Some(Box::new(Only {
                allowed: allowed.clone(),
                seen: 0,
                stop_after: 6,
            })),
            ..Request::greedy(vec![1, 2, 3, 4], 20)
        };
        s.submit(
            req,
            Box::new(move |ev| {
                let mut g = g.lock().unwrap();
                match ev {
                    Event::Token { token, .. } => g.0.push(token),
                    Event::Done { reason, .. } => g.1 = Some(reason),
                    Event::PromptLogprob { .. } => {}
                }
                true
            }),
        )
        .unwrap();
        s.run_to_completion().unwrap();
        let g = got.lock().unwrap();
        assert_eq!(g.1, Some(FinishReason::Hook), "temperature {temperature}");
        // The 4-token prompt was computed once (nothing shared): the counter says so.
        let st = s.stats();
        assert_eq!(st.computed_tokens + st.cached_tokens, st.prompt_tokens);
        assert_eq!(g.0.len(), 6);
        assert!(g.0.iter().all(|t| allowed.contains(t)), "{:?}", g.0);
    }
}
