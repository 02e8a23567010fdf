//! The scheduler: continuous batching of many requests on one [`Engine`].
//!
//! Every [`Scheduler::step`] is one forward pass. Requests join the running batch at any
//! step and leave it when they finish or are cancelled. A step holds one token of every
//! running sequence that is decoding, plus prompt chunks of the ones still prefilling, up
//! to a per-step token budget ([`SchedConfig::step_tokens`]), so a long prompt is
//! prefilled over several steps beside the decodes and no stream stalls behind it.
//! Waiting requests are taken by priority, then arrival.
//!
//! **Under pressure** (the KV cache or its ledger pool has no room for the step) the
//! scheduler walks the pressure ladder of the design, in order, and retries the step:
//! 1. paused sequences' blocks give up RAM: demoted to a lower precision (only with
//!    [`Pressure::demote`], which changes their answers slightly) or written whole to the
//!    disk store ([`Pressure::store`]);
//! 2. the newest, lowest-priority running sequence is **preempted**: paused, its blocks
//!    now candidates for step 1; without a store or demotion its KV is dropped and its
//!    tokens (prompt and generated) computed again when it resumes.
//!
//! Accepted work is never dropped: a preempted request waits at the head of the queue and
//! resumes from its KV (read back from disk) or by recomputing it. Refusals happen at
//! [`Scheduler::submit`] only, for requests that can never fit ([`Refused`]).
//!
//! Logit processors ([`TokenHook`]) let a client constrain or stop generation (grammars,
//! stop strings, penalties) without the scheduler knowing their rules.
//!
//! **Kept sequences**: a request marked with [`Scheduler::keep`] leaves its sequence in the
//! cache when it ends, so a later request that continues it (its prompt starts with the
//! kept one's tokens) attaches those blocks instead of computing them. The client gives it
//! back with [`Scheduler::release`]; under pressure kept sequences are the first thing
//! dropped (oldest first), before any paused or running sequence gives way, so keeping
//! never costs accepted work anything but the recompute it meant to save.
//!
//! [`service::Service`] runs a scheduler on its own thread for servers and pipelines.

mod ladder;
mod request;
pub mod service;

pub use request::*;

use std::collections::{BTreeMap, BTreeSet};

use kvcache::{KvError, SeqId};

use crate::batch::{Batch, BatchItem, Engine};
use crate::forward::EvalError;
use crate::sampler::Sampler;

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Waiting,
    Running,
    /// Preempted with its KV kept (paused, maybe on disk).
    Paused,
}

struct Live {
    req: Request,
    sink: Sink,
    sampler: Sampler,
    phase: Phase,
    seq: Option<SeqId>,
    /// Prompt then generated tokens: everything the KV must hold before the next step,
    /// except the last generated token, which is fed by the next step.
    tokens: Vec<u32>,
    generated: usize,
    cached: usize,
    arrival: u64,
    /// Prompt log-probabilities already reported (prompt tokens 1..=this).
    prompt_lp_done: usize,
}

impl Live {
    fn rank(&self) -> (i32, std::cmp::Reverse<u64>) {
        (self.req.priority, std::cmp::Reverse(self.arrival))
    }
}

/// Continuous batching over one [`Engine`]. See the module docs.
///
/// # Invariants
/// - Every request in `live` is in exactly one phase; a running or paused one has a
///   sequence in the engine, a waiting one may (a request preempted with its KV dropped
///   has none).
/// - A sequence's engine tokens are a prefix of its request's `tokens`.
pub struct Scheduler<'a, 'm> {
    engine: Engine<'a, 'm>,
    cfg: SchedConfig,
    live: BTreeMap<ReqId, Live>,
    next_id: ReqId,
    clock: u64,
    stats: SchedStats,
    batch: Batch,
    /// Prompt tokens in `batch` (counted into `stats.computed_tokens` when it runs).
    batch_prompt_tokens: u64,
    /// Live requests whose sequence is kept when they end.
    keep: BTreeSet<ReqId>,
    /// Ended requests' kept sequences, oldest request first.
    kept: BTreeMap<ReqId, SeqId>,
}

impl<'a, 'm> Scheduler<'a, 'm> {
    pub fn new(engine: Engine<'a, 'm>, cfg: SchedConfig) -> Self {
        Scheduler {
            engine,
            cfg: SchedConfig {
                step_tokens: cfg.step_tokens.max(1),
                prefill_chunk: cfg.prefill_chunk.max(1),
                max_running: cfg.max_running.max(1),
                ..cfg
            },
            live: BTreeMap::new(),
            next_id: 1,
            clock: 0,
            stats: SchedStats::default(),
            batch: Batch::new(),
            batch_prompt_tokens: 0,
            keep: BTreeSet::new(),
            kept: BTreeMap::new(),
        }
    }

    pub fn engine(&self) -> &Engine<'a, 'm> {
        &self.engine
    }

    /// The engine, for work between steps that leaves no sequence behind
    /// ([`Engine::embed`]).
    pub fn engine_mut(&mut self) -> &mut Engine<'a, 'm> {
        &mut self.engine
    }

    pub fn stats(&self) -> SchedStats {
        let mut s = self.stats;
        s.waiting = self
            .live
            .values()
            .filter(|l| l.phase != Phase::Running)
            .count();
        s.running = self.live.len() - s.waiting;
        s.kept = self.kept.len();
        s
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.live.is_empty()
    }

    /// The most tokens (prompt + generated) one request can hold.
    pub fn max_request_tokens(&self) -> usize {
        self.engine
            .config()
            .n_ctx
            .min(self.engine.kv_capacity_tokens())
    }

    /// Whether `req` would be accepted now (see [`Refused`]).
    pub fn check(&self, req: &Request) -> Result<(), Refused> {
        if req.prompt.is_empty() {
            return Err(Refused::EmptyPrompt);
        }
        let vocab = self.engine.model().cfg.vocab;
        if let Some(&id) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Refused::BadToken { id, vocab });
        }
        let n_ctx = self.engine.config().n_ctx;
        let needed = req.prompt.len().saturating_add(req.max_tokens);
        if needed > n_ctx {
            return Err(Refused::TooLong {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                n_ctx,
            });
        }
        let fits = self.engine.kv_capacity_tokens();
        if needed > fits {
            return Err(Refused::NeverFits { needed, fits });
        }
        let waiting = self
            .live
            .values()
            .filter(|l| l.phase == Phase::Waiting)
            .count();
        if waiting >= self.cfg.queue_cap {
            return Err(Refused::QueueFull { waiting });
        }
        Ok(())
    }

    /// Checks `req` against what can ever fit ([`Scheduler::check`]), and queues it.
    pub fn submit(&mut self, req: Request, sink: Sink) -> Result<ReqId, Refused> {
        if let Err(r) = self.check(&req) {
            self.stats.refused += 1;
            return Err(r);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.clock += 1;
        self.stats.submitted += 1;
        self.live.insert(
            id,
            Live {
                sampler: Sampler::new(req.sampler),
                tokens: req.prompt.clone(),
                req,
                sink,
                phase: Phase::Waiting,
                seq: None,
                generated: 0,
                cached: 0,
                arrival: self.clock,
                prompt_lp_done: 0,
            },
        );
        Ok(id)
    }

    /// Ends request `id` now (its sink gets `Done` with [`FinishReason::Cancelled`]);
    /// its blocks return to the pool. Unknown ids are ignored.
    pub fn cancel(&mut self, id: ReqId) {
        if self.live.contains_key(&id) {
            self.stats.cancelled += 1;
            self.finish(id, FinishReason::Cancelled);
        }
    }

    /// Whether request `id` is waiting or running.
    pub fn is_live(&self, id: ReqId) -> bool {
        self.live.contains_key(&id)
    }

    /// Keeps live request `id`'s sequence in the cache when it ends (stopped, ended by
    /// its hook or its length; a cancelled or failed one is not kept), until
    /// [`Scheduler::release`] or pressure drops it. Unknown ids are ignored.
    pub fn keep(&mut self, id: ReqId) {
        if self.live.contains_key(&id) {
            self.keep.insert(id);
        }
    }

    /// Whether request `id` is live or its sequence kept.
    pub fn is_known(&self, id: ReqId) -> bool {
        self.live.contains_key(&id) || self.kept.contains_key(&id)
    }

    /// Gives back request `id`'s kept sequence (its blocks return to the pool, except
    /// those other sequences share); a live request is no longer kept when it ends.
    /// Unknown ids are ignored.
    pub fn release(&mut self, id: ReqId) {
        self.keep.remove(&id);
        if let Some(seq) = self.kept.remove(&id) {
            self.engine.seq_remove(seq);
        }
    }

    /// Drops the oldest kept sequence (rung 0 of the pressure ladder); returns whether
    /// there was one.
    fn drop_kept(&mut self) -> bool {
        let Some((_, seq)) = self.kept.pop_first() else {
            return false;
        };
        self.engine.seq_remove(seq);
        self.stats.kept_dropped += 1;
        true
    }

    /// Ends every request with `reason`.
    pub fn fail_all(&mut self, reason: &FinishReason) {
        let ids: Vec<ReqId> = self.live.keys().copied().collect();
        for id in ids {
            self.finish(id, reason.clone());
        }
    }

    /// Runs one step: admits waiting requests, runs one forward pass of the running
    /// ones, samples and reports their tokens. Returns the tokens computed (0 when idle).
    ///
    /// # Errors
    /// Only what is not a matter of room (a broken cache, threads that cannot start);
    /// the requests stay as they were.
    pub fn step(&mut self) -> Result<usize, EvalError> {
        if self.live.is_empty() {
            return Ok(0);
        }
        self.admit()?;
        loop {
            self.build_batch();
            if self.batch.is_empty() {
                // Everything waits for room that only finishing requests can free: with
                // nothing running, that is a request that cannot resume at all.
                if !self.live.values().any(|l| l.phase == Phase::Running) {
                    self.fail_stuck();
                }
                return Ok(0);
            }
            let batch = std::mem::take(&mut self.batch);
            crate::phases::enable(self.cfg.time_phases);
            let started = std::time::Instant::now();
            let r = self.engine.decode(&batch).map(|_| ());
            let by_phase = if self.cfg.time_phases {
                crate::phases::take()
            } else {
                Vec::new()
            };
            match r {
                Ok(()) => {
                    let n = batch.len();
                    let class = request::step_class(n);
                    self.stats.steps_by_tokens[class] += 1;
                    self.stats.step_us_by_tokens[class] += started.elapsed().as_micros() as u64;
                    for (p, d) in by_phase {
                        self.stats.phase_us_by_tokens[class][p as usize] += d.as_micros() as u64;
                    }
                    let after = std::time::Instant::now();
                    self.after_decode(&batch);
                    self.stats.after_us_by_tokens[class] += after.elapsed().as_micros() as u64;
                    self.batch = batch;
                    self.stats.steps += 1;
                    self.stats.computed_tokens += self.batch_prompt_tokens;
                    return Ok(n);
                }
                Err(e) if is_room(&e) => {
                    self.batch = batch;
                    self.stats.pressure_steps += 1;
                    if !self.relieve(room_short(&e))? {
                        // One sequence runs and even it cannot grow: the cache cannot
                        // hold what it was admitted with (the ledger shrank under it).
                        self.fail_running(&e);
                        return Ok(0);
                    }
                }
                Err(e) => {
                    self.batch = batch;
                    return Err(e);
                }
            }
        }
    }

    /// Runs steps until every request has finished.
    pub fn run_to_completion(&mut self) -> Result<(), EvalError> {
        while self.has_work() {
            self.step()?;
        }
        Ok(())
    }

    /// Starts waiting requests while there are running slots and room: paused ones
    /// first (their blocks read back), then new ones (a shared prefix attached).
    fn admit(&mut self) -> Result<(), EvalError> {
        let order = self.ranked(|p| p != Phase::Running);
        for id in order {
            let running = self
                .live
                .values()
                .filter(|l| l.phase == Phase::Running)
                .count();
            if running >= self.cfg.max_running {
                break;
            }
            // A new sequence needs room for its first chunk; keep one block per running
            // sequence free for their decodes, so admitting does not preempt at once.
            let bt = self.engine.kv().layout().block_tokens();
            let l = &self.live[&id];
            let first = (l.tokens.len() - self.held(id)).min(self.cfg.prefill_chunk);
            let want = first.div_ceil(bt) + 1 + running;
            // Kept sequences make way for new work, oldest first.
            while running > 0 && want > self.free_blocks() && self.drop_kept() {}
            if running > 0 && want > self.free_blocks() {
                break;
            }
            let l = self.live.get_mut(&id).expect("listed above");
            match (l.phase, l.seq) {
                (Phase::Paused, Some(seq)) => {
                    if !self.resume(seq)? {
                        break;
                    }
                    self.live.get_mut(&id).expect("listed").phase = Phase::Running;
                }
                (_, None) => {
                    let seq = self.engine.seq_new();
                    let l = self.live.get_mut(&id).expect("listed");
                    l.seq = Some(seq);
                    l.phase = Phase::Running;
                    if !l.req.prompt_logprobs && l.generated == 0 && l.cached == 0 {
                        let prompt = l.req.prompt.clone();
                        let store = self.cfg.prefix_store.as_ref().map(|p| p.store.clone());
                        let n = self
                            .engine
                            .seq_attach_prefix(seq, &prompt, store.as_deref())?;
                        let l = self.live.get_mut(&id).expect("listed");
                        l.cached = n;
                        self.stats.cached_tokens += n as u64;
                    }
                    self.engine.seq_set_running(seq, true)?;
                }
                (Phase::Waiting | Phase::Running, Some(_)) => {
                    self.live.get_mut(&id).expect("listed").phase = Phase::Running;
                }
            }
        }
        let running = self
            .live
            .values()
            .filter(|l| l.phase == Phase::Running)
            .count();
        self.stats.peak_running = self.stats.peak_running.max(running);
        Ok(())
    }

    /// Requests in a phase `keep` accepts, best ranked first (priority, then arrival).
    fn ranked(&self, keep: impl Fn(Phase) -> bool) -> Vec<ReqId> {
        let mut v: Vec<(ReqId, (i32, std::cmp::Reverse<u64>))> = self
            .live
            .iter()
            .filter(|(_, l)| keep(l.phase))
            .map(|(&id, l)| (id, l.rank()))
            .collect();
        v.sort_by_key(|&(_, r)| std::cmp::Reverse(r));
        v.into_iter().map(|(id, _)| id).collect()
    }

    fn free_blocks(&self) -> usize {
        let p = self.engine.kv().pool();
        let fmt_block = p.layout().block_bytes().max(1);
        let by_bytes = p
            .available_bytes()
            .map_or(usize::MAX, |a| (a / fmt_block) as usize);
        p.free_blocks().min(by_bytes)
    }

    /// Tokens of request `id` its sequence holds.
    fn held(&self, id: ReqId) -> usize {
        self.live[&id]
            .seq
            .and_then(|s| self.engine.seq_tokens(s))
            .map_or(0, <[u32]>::len)
    }

    /// The step's batch: one token of each decoding sequence, then prompt chunks in
    /// rank order until the token budget is spent.
    fn build_batch(&mut self) {
        self.batch.clear();
        self.batch_prompt_tokens = 0;
        let running = self.ranked(|p| p == Phase::Running);
        let mut budget = self.cfg.step_tokens;
        // Decodes first: a stream never waits behind a prompt.
        for pass in [true, false] {
            for &id in &running {
                let mut held = self.held(id);
                let l = &self.live[&id];
                if held == l.tokens.len() && pass {
                    // A failed step computed its last token but lost the logits: compute
                    // that token again.
                    let seq = l.seq.expect("running sequences have one");
                    if let Ok(kept) = self.engine.seq_truncate(seq, held - 1) {
                        held = kept;
                    }
                }
                let l = &self.live[&id];
                let todo = l.tokens.len() - held;
                if (todo == 1) != pass || todo == 0 || budget == 0 {
                    continue;
                }
                let n = todo.min(self.cfg.prefill_chunk).min(budget);
                budget -= n;
                let seq = l.seq.expect("running sequences have one");
                let end = held + n;
                let prompt_lp = l.req.prompt_logprobs && held < l.req.prompt.len();
                self.batch_prompt_tokens +=
                    l.req.prompt.len().clamp(held, end) as u64 - held as u64;
                for (i, &token) in l.tokens[held..end].iter().enumerate() {
                    let pos = held + i;
                    self.batch.push(BatchItem {
                        seq,
                        pos,
                        token,
                        wants_logits: pos + 1 == l.tokens.len()
                            || (prompt_lp && pos + 1 < l.req.prompt.len()),
                    });
                }
            }
        }
    }

    /// Samples and reports what the decoded batch produced.
    fn after_decode(&mut self, batch: &Batch) {
        // Logits rows follow the items that asked, in batch order.
        let vocab = self.engine.model().cfg.vocab;
        let by_seq: BTreeMap<SeqId, ReqId> = self
            .live
            .iter()
            .filter_map(|(&id, l)| l.seq.map(|s| (s, id)))
            .collect();
        let wanted: Vec<(usize, BatchItem)> = batch
            .items()
            .iter()
            .enumerate()
            .filter(|(_, it)| it.wants_logits)
            .map(|(i, it)| (i, *it))
            .collect();
        let mut done: Vec<(ReqId, FinishReason)> = Vec::new();
        let mut picks = self.pick_all(&wanted, &by_seq);
        let mut row = vec![0.0f32; vocab];
        for (n, (i, it)) in wanted.into_iter().enumerate() {
            let Some(&id) = by_seq.get(&it.seq) else {
                continue;
            };
            let l = self.live.get_mut(&id).expect("mapped above");
            if it.pos + 1 < l.tokens.len() {
                // A prompt position: its log-probability of the next prompt token
                // (reported once, even when a preempted prompt is computed again).
                if it.pos < l.prompt_lp_done {
                    continue;
                }
                // Re-borrow the output per row: the engine keeps the last batch's logits.
                row.copy_from_slice(self.engine.last_logits(i).expect("asked for logits"));
                let next = l.tokens[it.pos + 1];
                let lp = log_softmax_at(&row, next);
                l.prompt_lp_done = it.pos + 1;
                if !(l.sink)(Event::PromptLogprob {
                    index: it.pos + 1,
                    token: next,
                    logprob: lp,
                }) {
                    done.push((id, FinishReason::Cancelled));
                }
                continue;
            }
            let Some(picked) = picks[n].take() else {
                debug_assert!(false, "every generating row is picked");
                continue;
            };
            let (token, logprob, top) = match picked {
                Ok(p) => p,
                Err(why) => {
                    done.push((id, FinishReason::Failed(why)));
                    continue;
                }
            };
            l.generated += 1;
            self.stats.generated_tokens += 1;
            let hook_stop = l.req.hook.as_mut().is_some_and(|h| h.accept(token));
            let alive = (l.sink)(Event::Token {
                token,
                logprob,
                top,
            });
            let reason = if !alive {
                Some(FinishReason::Cancelled)
            } else if l.req.stop_tokens.contains(&token) {
                Some(FinishReason::Stop)
            } else if hook_stop {
                Some(FinishReason::Hook)
            } else if l.generated >= l.req.max_tokens
                || l.tokens.len() + 1 > self.engine.config().n_ctx
            {
                Some(FinishReason::Length)
            } else {
                None
            };
            match reason {
                Some(r) => done.push((id, r)),
                None => l.tokens.push(token),
            }
        }
        for (id, r) in done {
            if r == FinishReason::Cancelled {
                self.stats.cancelled += 1;
            }
            self.finish(id, r);
        }
    }

    fn finish(&mut self, id: ReqId, reason: FinishReason) {
        let Some(mut l) = self.live.remove(&id) else {
            return;
        };
        let keep = self.keep.remove(&id)
            && l.phase == Phase::Running
            && matches!(
                reason,
                FinishReason::Stop | FinishReason::Hook | FinishReason::Length
            );
        // A cancelled sequence's blocks are as exact as a finished one's (a stop string
        // cancels): only a failed step leaves nothing worth keeping.
        if let Some(seq) = l.seq
            && !matches!(reason, FinishReason::Failed(_))
        {
            self.persist(seq);
        }
        match l.seq {
            Some(seq) if keep => {
                self.kept.insert(id, seq);
            }
            Some(seq) => self.engine.seq_remove(seq),
            None => {}
        }
        if reason != FinishReason::Cancelled {
            self.stats.finished += 1;
        }
        let usage = Usage {
            prompt_tokens: l.req.prompt.len(),
            completion_tokens: l.generated,
            cached_tokens: l.cached,
        };
        self.stats.prompt_tokens += l.req.prompt.len() as u64;
        let _ = (l.sink)(Event::Done { reason, usage });
    }
}

/// What one generating row of a decoded batch sampled: the token, its log-probability
/// (if asked) and the top alternatives; or why it could not.
type Picked = Result<(u32, Option<f32>, Vec<(u32, f32)>), String>;

/// One generating row's sampling job ([`Scheduler::pick_all`]).
struct PickJob<'r> {
    /// The row's index among `wanted` (its place in the output).
    at: usize,
    logits: &'r [f32],
    hook: Option<&'r mut Box<dyn TokenHook>>,
    sampler: &'r mut Sampler,
    logprobs: bool,
    top: usize,
    /// What [`PickJob::run`] gave.
    picked: Option<Picked>,
}

impl PickJob<'_> {
    /// Masks and samples into `row` (a vocabulary-long buffer of this thread's).
    fn run(&mut self, row: &mut [f32]) -> Picked {
        row.copy_from_slice(self.logits);
        // A broken forward pass is named before a hook masks tokens with -inf.
        crate::sampler::check_finite(row).map_err(|e| e.to_string())?;
        if let Some(h) = self.hook.as_mut() {
            h.mask(row);
        }
        let token = self.sampler.sample_masked(row).map_err(|e| e.to_string())?;
        let logprob = self.logprobs.then(|| log_softmax_at(row, token));
        Ok((token, logprob, top_logprobs(row, self.top)))
    }
}

impl Scheduler<'_, '_> {
    /// Masks and samples every generating row of the decoded batch, on the engine's
    /// threads at once: per row a copy of the logits, a finiteness check, the request's
    /// hook (a grammar visits the whole vocabulary) and the sampler, about half a
    /// millisecond over a 152k-token vocabulary, which on the scheduler's thread alone
    /// held a 24-sequence decode step to one core (7.5 s of a 22.6 s `llmem qa` run on
    /// 16 cores). Each row is its own request's (its hook and sampler are
    /// touched by one thread), so the tokens are those of the rows taken one by one.
    /// Result `n` belongs to `wanted[n]`; `None` for prompt positions and rows whose
    /// request is gone.
    fn pick_all(
        &mut self,
        wanted: &[(usize, BatchItem)],
        by_seq: &BTreeMap<SeqId, ReqId>,
    ) -> Vec<Option<Picked>> {
        let vocab = self.engine.model().cfg.vocab;
        let mut at: BTreeMap<ReqId, usize> = BTreeMap::new();
        for (n, (_, it)) in wanted.iter().enumerate() {
            if let Some(&id) = by_seq.get(&it.seq) {
                at.insert(id, n);
            }
        }
        let engine = &self.engine;
        let mut jobs: Vec<std::sync::Mutex<PickJob<'_>>> = Vec::new();
        for (id, l) in self.live.iter_mut() {
            let Some(&n) = at.get(id) else {
                continue;
            };
            let (i, it) = wanted[n];
            if it.pos + 1 < l.tokens.len() {
                continue; // a prompt position: reported by the caller
            }
            jobs.push(std::sync::Mutex::new(PickJob {
                at: n,
                logits: engine.last_logits(i).expect("asked for logits"),
                hook: l.req.hook.as_mut(),
                sampler: &mut l.sampler,
                logprobs: l.req.logprobs,
                top: l.req.top_logprobs,
                picked: None,
            }));
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = |_: usize| {
            let mut row = Vec::new();
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(job) = jobs.get(k) else { break };
                if row.is_empty() {
                    row = vec![0.0f32; vocab];
                }
                let mut job = job.lock().unwrap_or_else(|e| e.into_inner());
                job.picked = Some(job.run(&mut row));
            }
        };
        if jobs.len() > 1 {
            engine.pool().run(work);
        } else {
            work(0);
        }
        let mut out: Vec<Option<Picked>> = (0..wanted.len()).map(|_| None).collect();
        for job in jobs {
            let job = job.into_inner().unwrap_or_else(|e| e.into_inner());
            out[job.at] = job.picked;
        }
        out
    }
}

impl Scheduler<'_, '_> {
    /// Writes a finished sequence's blocks to the prefix store, if there is one that no
    /// write has failed on yet; now and then holds the store to its size.
    fn persist(&mut self, seq: SeqId) {
        let Some(p) = self.cfg.prefix_store.clone() else {
            return;
        };
        if self.stats.prefix_write_failures > 0 || p.store.access() != kvcache::Access::Exclusive {
            return;
        }
        // A lost or unreadable block only ends what is written: the cache stays valid.
        let Ok(done) = self.engine.seq_persist(seq, &p.store) else {
            return;
        };
        if done.failure.is_some() {
            self.stats.prefix_write_failures += 1;
        }
        let before = self.stats.prefix_writes / TRIM_EVERY_BLOCKS;
        self.stats.prefix_writes += done.written as u64;
        if self.stats.prefix_writes / TRIM_EVERY_BLOCKS != before {
            let _ = self.engine.trim_store(&p.store, p.max_bytes);
        }
    }
}

/// The prefix store is trimmed to its size after every this many blocks written (listing
/// its files each time a sequence ends would cost more than the blocks save).
const TRIM_EVERY_BLOCKS: u64 = 64;

fn is_room(e: &EvalError) -> bool {
    matches!(
        e,
        EvalError::NoRoom(_)
            | EvalError::Kv(KvError::OverBudget(_))
            | EvalError::Kv(KvError::NoRoom { .. })
    )
}

fn room_short(e: &EvalError) -> u64 {
    match e {
        EvalError::NoRoom(n) => n.short_bytes(),
        EvalError::Kv(KvError::OverBudget(o)) => o.shortfall().0,
        _ => 0,
    }
}

/// `log softmax(logits)[i]`, computed in f64.
pub fn log_softmax_at(logits: &[f32], i: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    (logits[i as usize] as f64 - max - sum.ln()) as f32
}

/// The `k` largest log-probabilities of `logits`, most likely first.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    let by = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    idx.select_nth_unstable_by(k - 1, by);
    idx.truncate(k);
    idx.sort_by(by);
    idx.into_iter()
        .map(|i| (i, (logits[i as usize] as f64 - lse) as f32))
        .collect()
}
