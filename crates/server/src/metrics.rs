//! The server's counters and latency histograms, and `/metrics` in Prometheus text.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use engine::sched::service::Snapshot;
use probe::MemoryProbe;

/// Upper bounds (seconds) of the latency buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A cumulative histogram in fixed buckets.
#[derive(Default)]
pub struct Histogram {
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.0.is_empty() {
            g.0 = vec![0; BUCKETS.len()];
        }
        for (i, &b) in BUCKETS.iter().enumerate() {
            if seconds <= b {
                g.0[i] += 1;
            }
        }
        g.1 += seconds;
        g.2 += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                g.0.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", g.2);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", g.1, g.2);
    }
}

/// Everything the server counts itself (the scheduler counts the rest).
#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub rejected_queue: AtomicU64,
    pub rejected_fit: AtomicU64,
    pub bad_requests: AtomicU64,
    pub unauthorized: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

impl Metrics {
    /// The exposition: this server's counters, the scheduler's snapshot, the ledger's
    /// pools and the process's resident memory.
    pub fn render(&self, snap: Option<&Snapshot>, ledger: Option<&budget::Budget>) -> String {
        let mut o = String::new();
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut o,
            "llmem_http_requests_total",
            "Generation requests received.",
            c(&self.requests),
        );
        let _ = writeln!(
            o,
            "# HELP llmem_requests_rejected_total Requests refused, by reason.\n# TYPE llmem_requests_rejected_total counter\n\
             llmem_requests_rejected_total{{reason=\"queue_full\"}} {}\n\
             llmem_requests_rejected_total{{reason=\"never_fits\"}} {}\n\
             llmem_requests_rejected_total{{reason=\"bad_request\"}} {}\n\
             llmem_requests_rejected_total{{reason=\"unauthorized\"}} {}",
            c(&self.rejected_queue),
            c(&self.rejected_fit),
            c(&self.bad_requests),
            c(&self.unauthorized)
        );
        self.ttft.write(
            &mut o,
            "llmem_time_to_first_token_seconds",
            "Time from a request's arrival to its first token.",
        );
        self.itl.write(
            &mut o,
            "llmem_inter_token_latency_seconds",
            "Time between consecutive tokens of a request.",
        );
        self.e2e.write(
            &mut o,
            "llmem_request_duration_seconds",
            "Time from a request's arrival to its end.",
        );
        if let Some(s) = snap {
            let st = &s.stats;
            gauge(
                &mut o,
                "llmem_requests_running",
                "Sequences running now.",
                st.running,
            );
            gauge(
                &mut o,
                "llmem_requests_waiting",
                "Requests queued or preempted, waiting to run.",
                st.waiting,
            );
            gauge(
                &mut o,
                "llmem_requests_running_peak",
                "Most sequences running in one step.",
                st.peak_running,
            );
            counter(
                &mut o,
                "llmem_prompt_tokens_total",
                "Prompt tokens of finished requests.",
                st.prompt_tokens,
            );
            counter(
                &mut o,
                "llmem_generated_tokens_total",
                "Tokens generated.",
                st.generated_tokens,
            );
            counter(
                &mut o,
                "llmem_prompt_tokens_computed_total",
                "Prompt tokens run through the model.",
                st.computed_tokens,
            );
            counter(
                &mut o,
                "llmem_prompt_tokens_cached_total",
                "Prompt tokens taken from a shared prefix.",
                st.cached_tokens,
            );
            let seen = st.computed_tokens + st.cached_tokens;
            gauge(
                &mut o,
                "llmem_prefix_cache_hit_ratio",
                "Share of prompt tokens taken from a shared prefix.",
                if seen == 0 {
                    0.0
                } else {
                    st.cached_tokens as f64 / seen as f64
                },
            );
            counter(
                &mut o,
                "llmem_requests_cancelled_total",
                "Sequences cancelled (clients that went away, stop strings).",
                st.cancelled,
            );
            counter(
                &mut o,
                "llmem_requests_finished_total",
                "Sequences that ran to their end.",
                st.finished,
            );
            counter(
                &mut o,
                "llmem_preemptions_total",
                "Sequences preempted under KV pressure.",
                st.preemptions,
            );
            counter(
                &mut o,
                "llmem_recomputes_total",
                "Preempted sequences whose KV was computed again.",
                st.recomputes,
            );
            counter(
                &mut o,
                "llmem_kv_demotions_total",
                "KV blocks demoted under pressure.",
                st.demotions,
            );
            counter(
                &mut o,
                "llmem_kv_disk_writes_total",
                "KV blocks written to disk under pressure.",
                st.disk_writes,
            );
            counter(
                &mut o,
                "llmem_kv_prefix_writes_total",
                "Prefix blocks written to the --kv-dir store.",
                st.prefix_writes,
            );
            counter(
                &mut o,
                "llmem_kv_prefix_write_failures_total",
                "Writes to the --kv-dir store that failed (it is only read after one).",
                st.prefix_write_failures,
            );
            counter(
                &mut o,
                "llmem_pressure_steps_total",
                "Steps that found no room and walked the pressure ladder.",
                st.pressure_steps,
            );
            counter(
                &mut o,
                "llmem_scheduler_steps_total",
                "Forward passes run.",
                st.steps,
            );
            let _ = writeln!(
                o,
                "# HELP llmem_kv_bytes KV storage bytes held, by tier.\n# TYPE llmem_kv_bytes gauge"
            );
            for (tier, b) in ["hot", "warm", "cold", "disk"].iter().zip(s.kv_tier_bytes) {
                let _ = writeln!(o, "llmem_kv_bytes{{tier=\"{tier}\"}} {b}");
            }
            gauge(
                &mut o,
                "llmem_kv_bytes_peak",
                "Most KV storage bytes held at once.",
                s.peak_kv_bytes,
            );
            gauge(
                &mut o,
                "llmem_scratch_bytes",
                "Scratch, logits and attention workspace bytes.",
                s.scratch_bytes,
            );
        }
        if let Some(b) = ledger {
            let snap = b.snapshot();
            gauge(
                &mut o,
                "llmem_ledger_total_bytes",
                "The budget's total.",
                snap.total.0,
            );
            gauge(
                &mut o,
                "llmem_ledger_used_bytes",
                "Bytes held by all reservations.",
                snap.used.0,
            );
            let _ = writeln!(
                o,
                "# HELP llmem_ledger_pool_used_bytes Bytes each pool holds.\n# TYPE llmem_ledger_pool_used_bytes gauge"
            );
            for p in &snap.pools {
                let _ = writeln!(
                    o,
                    "llmem_ledger_pool_used_bytes{{pool=\"{}\"}} {}",
                    p.name, p.used.0
                );
            }
            let _ = writeln!(
                o,
                "# HELP llmem_ledger_pool_limit_bytes Bytes each pool is entitled to.\n# TYPE llmem_ledger_pool_limit_bytes gauge"
            );
            for p in &snap.pools {
                let _ = writeln!(
                    o,
                    "llmem_ledger_pool_limit_bytes{{pool=\"{}\"}} {}",
                    p.name, p.limit.0
                );
            }
        }
        if let Ok(p) = probe::NativeProbe::new().process() {
            gauge(
                &mut o,
                "llmem_process_rss_bytes",
                "Resident memory of this process.",
                p.rss_bytes,
            );
        }
        o
    }
}
