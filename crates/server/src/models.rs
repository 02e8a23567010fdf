//! The models a server answers for: loaded on first use, kept for their keep-alive, and
//! unloaded (least recently used first, never one with requests running) when the ledger
//! needs the room for another.
//!
//! One lock holds every model's state; loading and unloading happen outside it. A request
//! holds a [`Lease`] on its model while it runs: the model cannot be unloaded under it,
//! and when the last lease goes the model's expiry starts (`keep_alive` of the request,
//! else the server's default; `0` unloads it at once, a negative one never).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use engine::sched::service::{Service, Snapshot};
use hyper::StatusCode;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::hook::Vocab;
use crate::{FitHint, Ready};

/// How long a model stays loaded after its last request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    For(Duration),
    Forever,
}

impl KeepAlive {
    /// Parses Ollama's forms: a number of seconds (negative: forever) or a duration
    /// string such as `"30s"`, `"5m"`, `"1h"`, `"-1"`.
    pub fn parse(v: &Value) -> Result<KeepAlive, String> {
        let bad = || {
            format!(
                "keep_alive must be seconds or a duration such as \"30s\", \"5m\", \"1h\" \
                 (0 unloads after the request, negative never), got {v}"
            )
        };
        match v {
            Value::Number(n) => {
                let s = n.as_f64().ok_or_else(bad)?;
                Ok(Self::seconds(s))
            }
            Value::String(s) => Self::parse_str(s).ok_or_else(bad),
            _ => Err(bad()),
        }
    }

    /// The string forms of [`KeepAlive::parse`].
    pub fn parse_str(s: &str) -> Option<KeepAlive> {
        let s = s.trim();
        let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, "s"),
        };
        let n: f64 = num.trim().parse().ok()?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        n.is_finite().then(|| Self::seconds(n * scale))
    }

    fn seconds(s: f64) -> KeepAlive {
        if s < 0.0 {
            KeepAlive::Forever
        } else {
            KeepAlive::For(Duration::from_secs_f64(s.min(1e9)))
        }
    }
}

/// A model the server may load.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The name `/v1/models` lists and answers carry.
    pub id: String,
    /// Other names a request's `model` may use (catalog name, file stem).
    pub aliases: Vec<String>,
    /// Bytes the ledger must have free to load it (weights, scratch, one short
    /// sequence).
    pub need_bytes: u64,
}

/// What a loader brings back.
pub struct Loaded {
    pub svc: Arc<Service>,
    /// Sequences its scheduler runs at once.
    pub max_running: usize,
    /// Tells a request refused for its size what would fit.
    pub hint: Option<FitHint>,
}

/// Loads model `i` of the list (on a blocking thread); the error says why not.
pub type Loader = Arc<dyn Fn(usize) -> Result<Loaded, String> + Send + Sync>;

#[derive(Default)]
struct State {
    ready: Option<Arc<Ready>>,
    loading: bool,
    /// Requests waiting for it to load (or for room to load it), beside the one loading
    /// it: they count against the queue bound as the scheduler's waiting requests do.
    waiting: usize,
    /// Requests holding it.
    running: usize,
    last_used: Option<Instant>,
    /// When it unloads if still idle (`None`: never, or not loaded).
    expires: Option<Instant>,
    /// The keep-alive its last request asked for.
    keep: Option<KeepAlive>,
    /// Why its last load failed.
    failed: Option<String>,
}

struct Inner {
    states: Vec<State>,
    /// The scheduler counters of models unloaded since start (so totals never go back).
    retired: Snapshot,
}

/// Every configured model and its state.
pub struct Models {
    specs: Vec<ModelSpec>,
    inner: Mutex<Inner>,
    keep_default: KeepAlive,
    loader: Option<Loader>,
    ledger: Option<budget::Budget>,
    /// Most requests that may wait for one model to load (`--queue`).
    queue_limit: usize,
}

/// A request's place among those waiting for a model to load; leaving it (dropped)
/// frees the place.
struct WaitSlot<'m> {
    models: &'m Models,
    index: usize,
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        let mut g = self.models.lock();
        let st = &mut g.states[self.index];
        st.waiting = st.waiting.saturating_sub(1);
    }
}

/// A request's hold on a loaded model; dropping it starts the model's expiry.
pub struct Lease {
    models: Arc<Models>,
    index: usize,
    keep: KeepAlive,
    pub ready: Arc<Ready>,
}

impl Lease {
    /// The model's place in the server's list.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let now = Instant::now();
        let unload = {
            let mut g = self.models.lock();
            let st = &mut g.states[self.index];
            st.running = st.running.saturating_sub(1);
            st.last_used = Some(now);
            st.keep = Some(self.keep);
            st.expires = match self.keep {
                KeepAlive::Forever => None,
                KeepAlive::For(d) => Some(now + d),
            };
            if st.running == 0 && self.keep == KeepAlive::For(Duration::ZERO) {
                Models::take(&mut g, self.index)
            } else {
                None
            }
        };
        drop(unload);
    }
}

impl Models {
    pub fn new(
        specs: Vec<ModelSpec>,
        keep_default: KeepAlive,
        loader: Option<Loader>,
        ledger: Option<budget::Budget>,
        queue_limit: usize,
    ) -> Models {
        let states = specs.iter().map(|_| State::default()).collect();
        Models {
            specs,
            inner: Mutex::new(Inner {
                states,
                retired: Snapshot::default(),
            }),
            keep_default,
            loader,
            ledger,
            queue_limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn specs(&self) -> &[ModelSpec] {
        &self.specs
    }

    /// The configured model a request's `model` names: its id, an alias, or (with one
    /// model, or none named) the first.
    pub fn resolve(&self, name: Option<&str>) -> Result<usize, ApiError> {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Ok(0);
        };
        if let Some(i) = self
            .specs
            .iter()
            .position(|s| s.id == name || s.aliases.iter().any(|a| a == name))
        {
            return Ok(i);
        }
        if self.specs.len() == 1 {
            // One model: any name reaches it, as clients send their own defaults.
            return Ok(0);
        }
        let known: Vec<&str> = self.specs.iter().map(|s| s.id.as_str()).collect();
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "The model `{name}` does not exist on this server; it serves: {}",
                known.join(", ")
            ),
        )
        .param("model")
        .code("model_not_found"))
    }

    /// Model `i` is being loaded outside [`Models::acquire`] (the server's start):
    /// requests for it wait, in the queue, rather than load it again.
    pub fn set_loading(&self, i: usize) {
        self.lock().states[i].loading = true;
    }

    /// Sets model `i` loaded (the server's start, or a test), held by nobody.
    pub fn set_loaded(&self, i: usize, l: Loaded) {
        let ready = Arc::new(Ready::of(l));
        let mut g = self.lock();
        let st = &mut g.states[i];
        st.loading = false;
        st.ready = Some(ready);
        st.failed = None;
        st.last_used = Some(Instant::now());
        st.expires = match self.keep_default {
            KeepAlive::Forever => None,
            KeepAlive::For(d) => Some(Instant::now() + d),
        };
    }

    /// Model `i`'s last load failed: why.
    pub fn set_failed(&self, i: usize, why: String) {
        let mut g = self.lock();
        g.states[i].loading = false;
        g.states[i].failed = Some(why);
    }

    /// A place among the requests waiting for model `i` to load; a 503 with
    /// `Retry-After` when the queue's places are taken.
    fn wait_slot(&self, i: usize) -> Result<WaitSlot<'_>, ApiError> {
        let mut g = self.lock();
        let st = &mut g.states[i];
        if st.waiting >= self.queue_limit {
            return Err(ApiError::unavailable(
                format!(
                    "the server is busy ({} requests are waiting for the model to load); retry \
                     shortly",
                    st.waiting
                ),
                5,
            )
            .code("queue_full"));
        }
        st.waiting += 1;
        Ok(WaitSlot {
            models: self,
            index: i,
        })
    }

    /// Whether any model is loaded, and why the first one's load failed (if it did).
    pub fn health(&self) -> (bool, Option<String>) {
        let g = self.lock();
        let any = g.states.iter().any(|s| s.ready.is_some());
        let ever = g.states.iter().any(|s| s.last_used.is_some());
        let failed = g.states.first().and_then(|s| s.failed.clone());
        (any || (ever && self.loader.is_some()), failed)
    }

    /// Takes model `i` out of the table (to drop outside the lock), keeping its
    /// counters.
    fn take(g: &mut Inner, i: usize) -> Option<Arc<Ready>> {
        let st = &mut g.states[i];
        let r = st.ready.take()?;
        st.expires = None;
        add_counters(&mut g.retired, &r.svc.snapshot());
        Some(r)
    }

    /// A lease on model `i`, loading it first if it is not loaded (unloading idle models,
    /// least recently used first, while the ledger lacks the room). Waits while the room
    /// is held by models with requests running.
    pub async fn acquire(
        self: &Arc<Self>,
        i: usize,
        keep: Option<KeepAlive>,
    ) -> Result<Lease, ApiError> {
        let keep = keep.unwrap_or(self.keep_default);
        let mut waited = Duration::ZERO;
        let mut slot = None;
        loop {
            let mut evicted = Vec::new();
            let load = {
                let mut g = self.lock();
                if let Some(r) = g.states[i].ready.clone() {
                    return Ok(self.lease(&mut g.states[i], i, keep, r));
                }
                if g.states[i].loading {
                    false
                } else {
                    // Make room: unload idle models, least recently used first.
                    let need = self.specs[i].need_bytes;
                    let mut free = self.free_bytes();
                    let mut blocked = false;
                    while free < need {
                        let lru = (0..g.states.len())
                            .filter(|&j| {
                                let s = &g.states[j];
                                s.ready.is_some() && s.running == 0 && !s.loading
                            })
                            .min_by_key(|&j| g.states[j].last_used);
                        match lru {
                            Some(j) => {
                                let r = Self::take(&mut g, j).expect("loaded");
                                free += r.svc.model().reserved_bytes()
                                    + r.svc.snapshot().kv_bytes
                                    + r.svc.snapshot().scratch_bytes;
                                evicted.push(r);
                            }
                            None => {
                                blocked = g.states.iter().any(|s| s.running > 0 || s.loading);
                                break;
                            }
                        }
                    }
                    if blocked {
                        false
                    } else {
                        g.states[i].loading = true;
                        true
                    }
                }
            };
            if !load {
                drop(evicted);
                if slot.is_none() {
                    slot = Some(self.wait_slot(i)?);
                }
                if waited > Duration::from_secs(600) {
                    return Err(ApiError::unavailable(
                        "the model is waiting for room that other models' requests hold",
                        5,
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                waited += Duration::from_millis(50);
                continue;
            }
            // The request that loads the model waits for no one: it leaves the queue.
            drop(slot.take());
            let Some(loader) = self.loader.clone() else {
                self.lock().states[i].loading = false;
                return Err(loading_error(None));
            };
            // Unloading joins the evicted models' threads: off the async workers, and
            // before the new model reserves anything.
            let got = tokio::task::spawn_blocking(move || {
                drop(evicted);
                loader(i)
            })
            .await
            .unwrap_or_else(|e| Err(format!("the loader panicked: {e}")));
            let mut g = self.lock();
            let st = &mut g.states[i];
            st.loading = false;
            match got {
                Ok(l) => {
                    let ready = Arc::new(Ready::of(l));
                    st.ready = Some(ready.clone());
                    st.failed = None;
                    st.last_used = Some(Instant::now());
                    return Ok(self.lease(st, i, keep, ready));
                }
                Err(why) => {
                    st.failed = Some(why.clone());
                    return Err(loading_error(Some(&why)));
                }
            }
        }
    }

    /// A lease on loaded model `i` (its state `st`): counted running, no expiry.
    fn lease(
        self: &Arc<Self>,
        st: &mut State,
        i: usize,
        keep: KeepAlive,
        ready: Arc<Ready>,
    ) -> Lease {
        st.running += 1;
        st.expires = None;
        Lease {
            models: self.clone(),
            index: i,
            keep,
            ready,
        }
    }

    /// Bytes the ledger could still grant (its total less what is held).
    fn free_bytes(&self) -> u64 {
        self.ledger.as_ref().map_or(u64::MAX, |b| {
            let s = b.snapshot();
            s.total.0.saturating_sub(s.used.0)
        })
    }

    /// Unloads the idle models whose keep-alive has run out; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let gone: Vec<Arc<Ready>> = {
            let mut g = self.lock();
            let due: Vec<usize> = (0..g.states.len())
                .filter(|&j| {
                    let s = &g.states[j];
                    s.ready.is_some() && s.running == 0 && s.expires.is_some_and(|e| e <= now)
                })
                .collect();
            due.into_iter()
                .filter_map(|j| Self::take(&mut g, j))
                .collect()
        };
        gone.len()
    }

    /// Every loaded model's scheduler snapshot summed, with the counters of those
    /// unloaded since start; `None` before any model ran.
    pub fn snapshot(&self) -> Option<Snapshot> {
        let g = self.lock();
        let mut total = g.retired;
        let mut any = g.states.iter().any(|s| s.last_used.is_some());
        for r in g.states.iter().filter_map(|s| s.ready.as_ref()) {
            let s = r.svc.snapshot();
            add_counters(&mut total, &s);
            let t = &mut total;
            t.stats.waiting += s.stats.waiting;
            t.stats.running += s.stats.running;
            t.stats.peak_running = t.stats.peak_running.max(s.stats.peak_running);
            t.kv_bytes += s.kv_bytes;
            for (a, b) in t.kv_tier_bytes.iter_mut().zip(s.kv_tier_bytes) {
                *a += b;
            }
            t.peak_kv_bytes = t.peak_kv_bytes.max(s.peak_kv_bytes);
            t.scratch_bytes += s.scratch_bytes;
            any = true;
        }
        any.then_some(total)
    }

    /// One JSON object per configured model: loaded or not, its bytes, KV, requests
    /// running and when it unloads.
    pub fn describe(&self) -> Vec<Value> {
        let g = self.lock();
        let now = Instant::now();
        let wall = SystemTime::now();
        self.specs
            .iter()
            .zip(&g.states)
            .map(|(spec, st)| {
                let snap = st.ready.as_ref().map(|r| r.svc.snapshot());
                let expires = st.expires.map(|e| {
                    let at = wall + e.saturating_duration_since(now);
                    rfc3339(at)
                });
                json!({
                    "id": spec.id,
                    "aliases": spec.aliases,
                    "loaded": st.ready.is_some(),
                    "loading": st.loading,
                    "weights_bytes": st.ready.as_ref().map_or(0, |r| r.svc.model().reserved_bytes()),
                    "kv_bytes": snap.map_or(0, |s| s.kv_bytes),
                    "scratch_bytes": snap.map_or(0, |s| s.scratch_bytes),
                    "requests_running": st.running,
                    "sequences_running": snap.map_or(0, |s| s.stats.running),
                    "sequences_waiting": snap.map_or(0, |s| s.stats.waiting),
                    "expires_at": expires,
                    "keep_alive": match st.keep.unwrap_or(self.keep_default) {
                        KeepAlive::Forever => Value::from(-1),
                        KeepAlive::For(d) => Value::from(d.as_secs_f64()),
                    },
                    "failed": st.failed,
                })
            })
            .collect()
    }
}

/// `t` as an RFC 3339 time in UTC, to the second (as Ollama's `expires_at`).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Adds `s`'s counters (not its gauges) into `into`.
fn add_counters(into: &mut Snapshot, s: &Snapshot) {
    let (a, b) = (&mut into.stats, &s.stats);
    a.steps += b.steps;
    a.submitted += b.submitted;
    a.finished += b.finished;
    a.cancelled += b.cancelled;
    a.refused += b.refused;
    a.prompt_tokens += b.prompt_tokens;
    a.generated_tokens += b.generated_tokens;
    a.computed_tokens += b.computed_tokens;
    a.cached_tokens += b.cached_tokens;
    a.demotions += b.demotions;
    a.disk_writes += b.disk_writes;
    a.prefix_writes += b.prefix_writes;
    a.prefix_write_failures += b.prefix_write_failures;
    a.preemptions += b.preemptions;
    a.recomputes += b.recomputes;
    a.pressure_steps += b.pressure_steps;
    a.pressure_reclaims += b.pressure_reclaims;
}

pub(crate) fn loading_error(why: Option<&str>) -> ApiError {
    ApiError::unavailable(
        match why {
            Some(w) => format!("the model failed to load: {w}"),
            None => "the model is loading".to_string(),
        },
        2,
    )
}

impl Ready {
    fn of(l: Loaded) -> Ready {
        let vocab = Arc::new(Vocab::of(&l.svc.model().text().tokenizer));
        Ready {
            svc: l.svc,
            vocab,
            max_running: l.max_running,
            hint: l.hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_takes_ollamas_forms() {
        let p = |v: Value| KeepAlive::parse(&v);
        assert_eq!(p(json!("5m")), Ok(KeepAlive::For(Duration::from_secs(300))));
        assert_eq!(p(json!("30s")), Ok(KeepAlive::For(Duration::from_secs(30))));
        assert_eq!(
            p(json!("1h")),
            Ok(KeepAlive::For(Duration::from_secs(3600)))
        );
        assert_eq!(p(json!(0)), Ok(KeepAlive::For(Duration::ZERO)));
        assert_eq!(p(json!("0")), Ok(KeepAlive::For(Duration::ZERO)));
        assert_eq!(p(json!(-1)), Ok(KeepAlive::Forever));
        assert_eq!(p(json!("-1m")), Ok(KeepAlive::Forever));
        assert_eq!(p(json!(90)), Ok(KeepAlive::For(Duration::from_secs(90))));
        for bad in [
            json!("5 parsecs"),
            json!("soon"),
            json!(true),
            json!(null),
            json!(""),
        ] {
            let e = p(bad.clone()).unwrap_err();
            assert!(e.contains("keep_alive"), "{bad}: {e}");
        }
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn an_unknown_model_is_a_404_in_openais_shape() {
        let spec = |id: &str| ModelSpec {
            id: id.into(),
            aliases: vec![format!("{id}-alias")],
            need_bytes: 1,
        };
        let m = Models::new(
            vec![spec("a"), spec("b")],
            KeepAlive::Forever,
            None,
            None,
            4,
        );
        assert_eq!(m.resolve(Some("b")).unwrap(), 1);
        assert_eq!(m.resolve(Some("a-alias")).unwrap(), 0);
        assert_eq!(m.resolve(None).unwrap(), 0);
        let e = m.resolve(Some("gpt-4")).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let b = e.body();
        assert_eq!(b["error"]["code"], "model_not_found");
        assert_eq!(b["error"]["param"], "model");
        assert!(b["error"]["message"].as_str().unwrap().contains("gpt-4"));
    }

    #[test]
    fn requests_waiting_for_a_load_count_against_the_queue_bound() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let go = Arc::new(AtomicBool::new(false));
        let g = go.clone();
        // A load that takes until the test says, then fails (no model is needed).
        let loader: Loader = Arc::new(move |_| {
            while !g.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err("no such model".into())
        });
        let spec = ModelSpec {
            id: "m".into(),
            aliases: Vec::new(),
            need_bytes: 0,
        };
        let models = Arc::new(Models::new(
            vec![spec],
            KeepAlive::Forever,
            Some(loader),
            None,
            1,
        ));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let until = |f: &dyn Fn(&State) -> bool| {
                let t = Instant::now();
                while !f(&models.lock().states[0]) {
                    assert!(t.elapsed() < Duration::from_secs(10), "never got there");
                    std::thread::sleep(Duration::from_millis(5));
                }
            };
            let m = models.clone();
            let loading = tokio::spawn(async move { m.acquire(0, None).await.map(|_| ()) });
            until(&|s| s.loading);
            let m = models.clone();
            let waiting = tokio::spawn(async move { m.acquire(0, None).await.map(|_| ()) });
            until(&|s| s.waiting == 1);
            // The queue's one place is taken: the next request is refused at once.
            let e = models.acquire(0, None).await.err().expect("refused");
            assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.code, Some("queue_full"));
            assert!(e.retry_after.is_some());
            go.store(true, Ordering::Release);
            let a = loading.await.unwrap().unwrap_err();
            assert!(a.message.contains("no such model"), "{}", a.message);
            assert!(waiting.await.unwrap().is_err());
            assert_eq!(models.lock().states[0].waiting, 0);
        });
    }
}
