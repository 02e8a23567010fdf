//! A [`Scheduler`] on its own thread: [`Service`], for servers and pipelines.
//!
//! The engine, its thread pool and its KV cache live on the service's thread; callers on
//! any thread submit requests and get their events through the [`Sink`] they pass (it is
//! called on the service's thread: hand the events to a channel). Submission answers at
//! once — accepted or [`Refused`] — without waiting for a step to end.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{
    Event, FinishReason, Refused, ReqId, Request, SchedConfig, SchedStats, Scheduler, Sink,
};
use crate::batch::{BatchConfig, Engine};
use crate::forward::EvalError;
use crate::memory::Accounts;
use crate::shared::SharedModel;

/// What a service reports between steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub stats: SchedStats,
    /// KV storage bytes held now, and per tier (hot f16, warm, cold, disk).
    pub kv_bytes: u64,
    pub kv_tier_bytes: [u64; 4],
    /// Most KV storage bytes held at once.
    pub peak_kv_bytes: u64,
    /// Scratch, logits and attention workspace bytes.
    pub scratch_bytes: u64,
}

enum Cmd {
    /// The request, its sink, and whether its sequence is kept when it ends.
    Submit(ReqId, Request, Sink, bool),
    Cancel(ReqId),
    Release(ReqId),
    Embed(Embedding),
}

/// Receives an embedding request's vectors (one per prompt), or why it failed; called
/// once, on the service's thread.
pub type EmbedDone = Box<dyn FnOnce(Result<Vec<Vec<f32>>, String>) + Send>;

/// An embedding request waiting for its turn between steps.
struct Embedding {
    prompts: Vec<Vec<u32>>,
    done: EmbedDone,
}

/// The `kv` pool's reclaim hook: the ledger's pressure ladder asks for bytes from any
/// thread; the cache lives on the service's thread, which gives them back between steps
/// ([`Scheduler::ease`]). So the hook records the request and reports nothing freed yet.
#[derive(Default)]
struct PressureHook {
    want: AtomicU64,
}

impl budget::Reclaim for PressureHook {
    fn reclaim(&self, request: budget::ReclaimRequest) -> budget::Bytes {
        self.want.fetch_max(request.want.0, Ordering::AcqRel);
        budget::Bytes(0)
    }
}

struct Shared {
    next_id: AtomicU64,
    /// Requests accepted and not finished.
    in_flight: AtomicUsize,
    closing: AtomicBool,
    snapshot: Mutex<Snapshot>,
    n_ctx: usize,
    fits: usize,
    vocab: usize,
    queue_cap: usize,
    max_running: usize,
}

/// A scheduler running on its own thread. Dropping it finishes the accepted requests
/// first, then stops the thread.
pub struct Service {
    tx: Mutex<Option<Sender<Cmd>>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    model: Arc<SharedModel>,
    /// Registered (weakly) with the ledger as the `kv` pool's reclaim hook.
    _hook: Arc<PressureHook>,
}

impl Service {
    /// Starts a service for `model`: an engine with `batch` settings whose KV and
    /// scratch are reserved in `accounts`, scheduled by `sched`.
    pub fn start(
        model: Arc<SharedModel>,
        batch: BatchConfig,
        sched: SchedConfig,
        accounts: Accounts,
    ) -> Result<Service, EvalError> {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let hook = Arc::new(PressureHook::default());
        accounts.budget.set_reclaim(accounts.kv, &hook);
        let thread_hook = hook.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Arc<Shared>, EvalError>>();
        let m = model.clone();
        let thread = std::thread::Builder::new()
            .name("llmem-sched".into())
            .spawn(move || {
                let engine = match Engine::with_accounts(&m.text().model, batch, &accounts) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let queue_cap = sched.queue_cap;
                let max_running = sched.max_running;
                // The service bounds its queue itself, on submission (accepted requests
                // beyond the running slots): the scheduler's own bound counts requests not
                // yet admitted to a step, more than that between two steps, and refused
                // requests the service had accepted.
                let s = Scheduler::new(
                    engine,
                    SchedConfig {
                        queue_cap: usize::MAX,
                        ..sched
                    },
                );
                let shared = Arc::new(Shared {
                    next_id: AtomicU64::new(1),
                    in_flight: AtomicUsize::new(0),
                    closing: AtomicBool::new(false),
                    snapshot: Mutex::new(Snapshot::default()),
                    n_ctx: s.engine().config().n_ctx,
                    fits: s.engine().kv_capacity_tokens(),
                    vocab: s.engine().model().cfg.vocab,
                    queue_cap,
                    max_running,
                });
                let _ = ready_tx.send(Ok(shared.clone()));
                run(s, rx, &shared, &thread_hook);
            })
            .map_err(EvalError::Threads)?;
        let shared = ready_rx
            .recv()
            .map_err(|_| EvalError::Threads(std::io::Error::other("scheduler thread died")))??;
        Ok(Service {
            tx: Mutex::new(Some(tx)),
            shared,
            thread: Mutex::new(Some(thread)),
            model,
            _hook: hook,
        })
    }

    pub fn model(&self) -> &Arc<SharedModel> {
        &self.model
    }

    /// The context size of one request (prompt + generated).
    pub fn n_ctx(&self) -> usize {
        self.shared.n_ctx
    }

    /// The most tokens one request can hold under this service's KV budget.
    pub fn max_request_tokens(&self) -> usize {
        self.shared.n_ctx.min(self.shared.fits)
    }

    /// Queues `req`; its events go to `sink` (on the service's thread). Refused at once
    /// when it can never fit, or when the queue is full.
    pub fn submit(&self, req: Request, sink: Sink) -> Result<ReqId, Refused> {
        self.submit_with(req, sink, false)
    }

    /// As [`Service::submit`], and the request's sequence stays in the cache when it
    /// ends, for requests that continue it ([`Scheduler::keep`]), until
    /// [`Service::release`] (or pressure) drops it.
    pub fn submit_kept(&self, req: Request, sink: Sink) -> Result<ReqId, Refused> {
        self.submit_with(req, sink, true)
    }

    fn submit_with(&self, req: Request, sink: Sink, keep: bool) -> Result<ReqId, Refused> {
        self.check(&req.prompt, req.max_tokens)?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(Cmd::Submit(id, req, sink, keep))?;
        Ok(id)
    }

    /// Gives back the sequence a [`Service::submit_kept`] request kept (or will keep);
    /// unknown ids are ignored.
    pub fn release(&self, id: ReqId) {
        if let Some(t) = self.tx.lock().expect("not poisoned").as_ref() {
            let _ = t.send(Cmd::Release(id));
        }
    }

    /// Queues the embedding of each of `prompts` ([`Engine::embed`], one prompt at a
    /// time, between steps, under the same ledger and queue bound as generation); `done`
    /// gets the vectors. Refused at once as [`Service::submit`] refuses a prompt with no
    /// tokens to generate. While the cache has no room for a prompt it waits for the
    /// running sequences to give some back.
    pub fn embed(&self, prompts: Vec<Vec<u32>>, done: EmbedDone) -> Result<(), Refused> {
        if prompts.is_empty() {
            return Err(Refused::EmptyPrompt);
        }
        let longest = prompts.iter().max_by_key(|p| p.len()).expect("not empty");
        for p in &prompts {
            if p.is_empty() {
                return Err(Refused::EmptyPrompt);
            }
        }
        let bad = prompts
            .iter()
            .flatten()
            .find(|&&t| t as usize >= self.shared.vocab);
        if let Some(&id) = bad {
            return Err(Refused::BadToken {
                id,
                vocab: self.shared.vocab,
            });
        }
        self.check(longest, 0)?;
        self.send(Cmd::Embed(Embedding { prompts, done }))
    }

    /// Refuses what can never run, then counts the request in flight, bounded by the
    /// queue (accepted requests beyond the running slots wait).
    fn check(&self, prompt: &[u32], max_tokens: usize) -> Result<(), Refused> {
        let sh = &self.shared;
        if sh.closing.load(Ordering::Acquire) {
            return Err(Refused::ShuttingDown);
        }
        if prompt.is_empty() {
            return Err(Refused::EmptyPrompt);
        }
        if let Some(&id) = prompt.iter().find(|&&t| t as usize >= sh.vocab) {
            return Err(Refused::BadToken {
                id,
                vocab: sh.vocab,
            });
        }
        let needed = prompt.len().saturating_add(max_tokens);
        if needed > sh.n_ctx {
            return Err(Refused::TooLong {
                prompt: prompt.len(),
                max_tokens,
                n_ctx: sh.n_ctx,
            });
        }
        if needed > sh.fits {
            return Err(Refused::NeverFits {
                needed,
                fits: sh.fits,
            });
        }
        let in_flight = sh.in_flight.fetch_add(1, Ordering::AcqRel);
        let waiting = in_flight.saturating_sub(sh.max_running);
        if waiting >= sh.queue_cap {
            sh.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::QueueFull { waiting });
        }
        Ok(())
    }

    /// Hands a counted request to the service's thread (uncounts it if that is gone).
    fn send(&self, cmd: Cmd) -> Result<(), Refused> {
        let tx = self.tx.lock().expect("not poisoned");
        let sent = tx.as_ref().is_some_and(|t| t.send(cmd).is_ok());
        if !sent {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::ShuttingDown);
        }
        Ok(())
    }

    /// Cancels request `id` (its sink gets `Done` with `Cancelled`); unknown or finished
    /// ids are ignored.
    pub fn cancel(&self, id: ReqId) {
        if let Some(t) = self.tx.lock().expect("not poisoned").as_ref() {
            let _ = t.send(Cmd::Cancel(id));
        }
    }

    /// Counters and KV bytes as of the last step.
    pub fn snapshot(&self) -> Snapshot {
        *self.shared.snapshot.lock().expect("not poisoned")
    }

    /// Requests accepted and not finished.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Stops accepting requests, finishes the accepted ones, and stops the thread.
    pub fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::Release);
        drop(self.tx.lock().expect("not poisoned").take());
        if let Some(t) = self.thread.lock().expect("not poisoned").take() {
            let _ = t.join();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The service thread: commands between steps, steps while there is work, until the
/// command channel closes and every accepted request has finished.
fn run(mut s: Scheduler<'_, '_>, rx: Receiver<Cmd>, shared: &Arc<Shared>, hook: &PressureHook) {
    // Service ids → scheduler ids.
    let mut ids: HashMap<ReqId, ReqId> = HashMap::new();
    let mut embeds: VecDeque<Embedding> = VecDeque::new();
    let mut open = true;
    loop {
        let want = hook.want.swap(0, Ordering::AcqRel);
        if want > 0 {
            s.ease(want);
        }
        let cmd = if s.has_work() || !open || !embeds.is_empty() {
            rx.try_recv().ok()
        } else {
            // Idle: wake now and then for the pressure ladder's requests.
            match rx.recv_timeout(std::time::Duration::from_millis(200)) {
                Ok(c) => Some(c),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            }
        };
        if let Some(cmd) = cmd {
            match cmd {
                Cmd::Submit(id, req, mut sink, keep) => {
                    let sh = shared.clone();
                    let wrapped: Sink = Box::new(move |ev: Event| {
                        if matches!(ev, Event::Done { .. }) {
                            sh.in_flight.fetch_sub(1, Ordering::AcqRel);
                        }
                        sink(ev)
                    });
                    if let Err(r) = s.check(&req) {
                        // Checked on submission already; a refusal here (a race with the
                        // queue's bound) still reaches the client.
                        let mut w = wrapped;
                        w(Event::Done {
                            reason: FinishReason::Failed(r.to_string()),
                            usage: super::Usage::default(),
                        });
                        continue;
                    }
                    if let Ok(sid) = s.submit(req, wrapped) {
                        if keep {
                            s.keep(sid);
                        }
                        ids.insert(id, sid);
                    }
                }
                Cmd::Embed(e) => embeds.push_back(e),
                Cmd::Release(id) => {
                    if let Some(sid) = ids.remove(&id) {
                        s.release(sid);
                        publish(&s, shared);
                    }
                }
                Cmd::Cancel(id) => {
                    // A kept sequence stays until it is released.
                    if let Some(sid) = ids.get(&id).copied().filter(|&sid| s.is_live(sid)) {
                        ids.remove(&id);
                        s.cancel(sid);
                        // No step may follow (nothing else runs): report the cancellation
                        // now, not at the next request.
                        publish(&s, shared);
                    }
                }
            }
            continue;
        }
        if !embeds.is_empty() {
            run_embeds(&mut s, &mut embeds, shared);
            publish(&s, shared);
        }
        if !s.has_work() {
            if !open && embeds.is_empty() {
                break;
            }
            continue;
        }
        if let Err(e) = s.step() {
            // Not a matter of room (that is handled inside): the running requests end
            // with the reason, the service goes on for the rest.
            s.fail_all(&FinishReason::Failed(e.to_string()));
        }
        ids.retain(|_, sid| s.is_known(*sid));
        publish(&s, shared);
    }
}

/// Runs the waiting embeddings in order until one finds no room in the cache while
/// sequences run (it waits for them to give some back; with none running there is no
/// more room to wait for, and it fails).
fn run_embeds(s: &mut Scheduler<'_, '_>, embeds: &mut VecDeque<Embedding>, shared: &Shared) {
    while let Some(e) = embeds.front() {
        let mut out = Vec::with_capacity(e.prompts.len());
        let mut failed = None;
        for p in &e.prompts {
            match s.engine_mut().embed(&[p]) {
                Ok(mut v) => out.push(v.pop().unwrap_or_default()),
                Err(EvalError::NoRoom(_)) if s.has_work() => return,
                Err(err) => {
                    failed = Some(err.to_string());
                    break;
                }
            }
        }
        let e = embeds.pop_front().expect("front exists");
        shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        (e.done)(match failed {
            None => Ok(out),
            Some(why) => Err(why),
        });
    }
}

/// Writes the scheduler's counters and KV bytes where [`Service::snapshot`] reads them.
fn publish(s: &Scheduler<'_, '_>, shared: &Shared) {
    let e = s.engine();
    *shared.snapshot.lock().expect("not poisoned") = Snapshot {
        stats: s.stats(),
        kv_bytes: e.kv_bytes(),
        kv_tier_bytes: e.kv().pool().tier_bytes(),
        peak_kv_bytes: e.peak_kv_bytes(),
        scratch_bytes: e.scratch_bytes(),
    };
}
