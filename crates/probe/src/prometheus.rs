//! Prometheus text exposition (format 0.0.4) of a [`Sample`], its health and alerts.
//!
//! Serve the string with `Content-Type: text/plain; version=0.0.4; charset=utf-8`.
//! Every family has `# HELP` and `# TYPE` lines and the `llmem_` prefix; names carry their
//! unit (`_bytes`, `_ratio`, `_seconds_total`). A family is written only when its value is
//! known, so an absent signal is an absent series, not a zero.

use std::fmt::Write as _;

use crate::health::HealthReport;
use crate::monitor::{Alert, AlertKind, Sample};
use crate::parse::PsiWindow;

/// The `Content-Type` to serve the exposition with.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy)]
enum Value {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Unsigned(v) => write!(f, "{v}"),
            Self::Signed(v) => write!(f, "{v}"),
            Self::Float(v) if v.is_nan() => f.write_str("NaN"),
            Self::Float(v) if v.is_infinite() => f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" }),
            Self::Float(v) => write!(f, "{v}"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

/// Label pairs of one series.
type Labels<'a> = Vec<(&'static str, &'a str)>;

struct Writer {
    out: String,
}

impl Writer {
    fn family<'a>(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        series: impl IntoIterator<Item = (Labels<'a>, Value)>,
    ) {
        let mut series = series.into_iter().peekable();
        if series.peek().is_none() {
            return;
        }
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in series {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (key, val)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{key}=\"{}\"", escape_label(val));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {value}");
        }
    }

    fn gauge(&mut self, name: &str, help: &str, value: Option<Value>) {
        self.family(name, help, Kind::Gauge, value.map(|v| (Vec::new(), v)));
    }
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn u(v: u64) -> Option<Value> {
    Some(Value::Unsigned(v))
}

fn f(v: f64) -> Option<Value> {
    Some(Value::Float(v))
}

/// Renders the exposition. `health` and `alerts` (a monitor's alerts in force) add their
/// families when given.
#[must_use]
pub fn render_prometheus(
    sample: &Sample,
    health: Option<&HealthReport>,
    alerts: Option<&[Alert]>,
) -> String {
    let mut w = Writer { out: String::new() };
    let s = &sample.system;
    w.gauge(
        "llmem_mem_total_bytes",
        "Physical memory.",
        u(s.mem_total_bytes),
    );
    w.gauge(
        "llmem_mem_available_bytes",
        "Memory that can be allocated without swapping (Linux MemAvailable).",
        u(s.mem_available_bytes),
    );
    w.gauge(
        "llmem_mem_free_bytes",
        "Memory nobody uses.",
        u(s.mem_free_bytes),
    );
    w.gauge(
        "llmem_mem_cached_bytes",
        "Page cache as free(1) counts it.",
        u(s.cached_bytes),
    );
    w.family(
        "llmem_mem_category_bytes",
        "Memory by the OS's own categories.",
        Kind::Gauge,
        s.categories.iter().map(|c| {
            (
                vec![("category", c.name.as_str())],
                Value::Unsigned(c.bytes),
            )
        }),
    );
    w.gauge(
        "llmem_swap_total_bytes",
        "Swap configured.",
        u(s.swap_total_bytes),
    );
    w.gauge(
        "llmem_swap_used_bytes",
        "Swap in use.",
        u(s.swap_used_bytes),
    );
    w.gauge(
        "llmem_mem_fragmentation_ratio",
        "Share of free memory unusable for 2 MiB blocks (Linux buddyinfo).",
        s.fragmentation.and_then(f),
    );

    let p = &sample.pressure;
    w.gauge(
        "llmem_pressure_ratio",
        "Memory pressure on llmem's 0..1 scale.",
        f(p.value),
    );
    w.gauge(
        "llmem_pressure_level",
        "Pressure level: 0 normal, 1 warning, 2 critical.",
        u(u64::from(p.level.as_number())),
    );
    if let Some(psi) = &s.signals.psi {
        let windows = |kind: &'static str, w: &PsiWindow| {
            [
                ("10", w.avg10_pct),
                ("60", w.avg60_pct),
                ("300", w.avg300_pct),
            ]
            .into_iter()
            .map(move |(window, pct)| {
                (
                    vec![("kind", kind), ("window_seconds", window)],
                    Value::Float(pct / 100.0),
                )
            })
        };
        let mut stall: Vec<_> = windows("some", &psi.some).collect();
        let mut totals = vec![(vec![("kind", "some")], psi.some.total_us)];
        if let Some(full) = &psi.full {
            stall.extend(windows("full", full));
            totals.push((vec![("kind", "full")], full.total_us));
        }
        w.family(
            "llmem_psi_memory_stall_ratio",
            "Share of time tasks stalled on memory (PSI), averaged over the window.",
            Kind::Gauge,
            stall,
        );
        w.family(
            "llmem_psi_memory_stall_seconds_total",
            "Time tasks stalled on memory since boot (PSI).",
            Kind::Counter,
            totals
                .into_iter()
                .map(|(l, us)| (l, Value::Float(us as f64 / 1e6))),
        );
    }
    if let Some(cg) = &s.signals.cgroup {
        w.gauge(
            "llmem_cgroup_memory_current_bytes",
            "cgroup memory.current.",
            u(cg.current_bytes),
        );
        w.gauge(
            "llmem_cgroup_memory_working_set_bytes",
            "cgroup memory.current less inactive page cache.",
            u(cg.working_set_bytes()),
        );
        w.gauge(
            "llmem_cgroup_memory_max_bytes",
            "Tightest memory.max of the cgroup and its ancestors.",
            cg.max_bytes.and_then(u),
        );
        if let Some(ev) = &cg.events {
            w.family(
                "llmem_cgroup_memory_events_total",
                "cgroup memory.events counters.",
                Kind::Counter,
                [
                    ("low", ev.low),
                    ("high", ev.high),
                    ("max", ev.max),
                    ("oom", ev.oom),
                ]
                .into_iter()
                .chain([("oom_kill", ev.oom_kill)])
                .map(|(event, n)| (vec![("event", event)], Value::Unsigned(n))),
            );
        }
    }

    let pr = &sample.process;
    w.gauge(
        "llmem_process_rss_bytes",
        "Resident set of this process.",
        u(pr.rss_bytes),
    );
    w.family(
        "llmem_process_rss_kind_bytes",
        "Resident set by kind.",
        Kind::Gauge,
        [
            ("anon", pr.rss_anon_bytes),
            ("file", pr.rss_file_bytes),
            ("shmem", pr.rss_shmem_bytes),
        ]
        .into_iter()
        .filter_map(|(kind, v)| Some((vec![("kind", kind)], Value::Unsigned(v?)))),
    );
    w.gauge(
        "llmem_process_rss_peak_bytes",
        "Peak resident set.",
        pr.rss_peak_bytes.and_then(u),
    );
    w.gauge(
        "llmem_process_swap_bytes",
        "This process's pages in swap.",
        pr.swap_bytes.and_then(u),
    );
    w.gauge(
        "llmem_process_phys_footprint_bytes",
        "macOS phys_footprint of this process.",
        pr.phys_footprint_bytes.and_then(u),
    );

    let indices: Vec<String> = sample.gpus.iter().map(|g| g.index.to_string()).collect();
    let gpu_family =
        |w: &mut Writer, name: &str, help: &str, pick: &dyn Fn(usize) -> Option<Value>| {
            w.family(
                name,
                help,
                Kind::Gauge,
                sample.gpus.iter().enumerate().filter_map(|(i, g)| {
                    Some((
                        vec![("gpu", indices[i].as_str()), ("name", g.name.as_str())],
                        pick(i)?,
                    ))
                }),
            );
        };
    let gpus = &sample.gpus;
    gpu_family(
        &mut w,
        "llmem_gpu_memory_total_bytes",
        "GPU memory.",
        &|i| u(gpus[i].total_bytes),
    );
    gpu_family(
        &mut w,
        "llmem_gpu_memory_used_bytes",
        "GPU memory in use.",
        &|i| u(gpus[i].used_bytes),
    );
    gpu_family(
        &mut w,
        "llmem_gpu_memory_free_bytes",
        "GPU memory free.",
        &|i| u(gpus[i].free_bytes),
    );
    gpu_family(
        &mut w,
        "llmem_gpu_utilization_ratio",
        "GPU busy share.",
        &|i| gpus[i].utilization.and_then(f),
    );
    gpu_family(
        &mut w,
        "llmem_gpu_working_set_bytes",
        "Metal recommendedMaxWorkingSetSize.",
        &|i| gpus[i].working_set_bytes.and_then(u),
    );

    if let Some(ledger) = &sample.ledger {
        let pools = |pick: fn(&crate::ledger::PoolUsage) -> u64| {
            ledger
                .pools
                .iter()
                .map(move |p| (vec![("pool", p.name.as_str())], Value::Unsigned(pick(p))))
        };
        w.family(
            "llmem_pool_limit_bytes",
            "Budget of each ledger pool.",
            Kind::Gauge,
            pools(|p| p.limit_bytes),
        );
        w.family(
            "llmem_pool_used_bytes",
            "Reserved from each ledger pool.",
            Kind::Gauge,
            pools(|p| p.used_bytes),
        );
        w.gauge(
            "llmem_ledger_tracked_bytes",
            "Bytes llmem's ledger accounts for.",
            u(ledger.total_tracked_bytes),
        );
    }
    w.gauge(
        "llmem_untracked_bytes",
        "Process footprint less the ledger's total (negative: reserved, not yet resident).",
        sample.untracked_bytes.map(Value::Signed),
    );

    if let Some(h) = health {
        w.gauge(
            "llmem_health_score_ratio",
            "Weighted health score.",
            f(h.health_score),
        );
        w.family(
            "llmem_health_component_ratio",
            "Health sub-scores.",
            Kind::Gauge,
            h.components.iter().filter_map(|c| {
                Some((
                    vec![("component", c.component.name())],
                    Value::Float(c.score?),
                ))
            }),
        );
        w.gauge(
            "llmem_health_recommendations",
            "Recommendations in the health report.",
            u(h.recommendations.len() as u64),
        );
    }
    if let Some(alerts) = alerts {
        w.family(
            "llmem_alert_active",
            "1 while an alert is raised.",
            Kind::Gauge,
            AlertKind::ALL.into_iter().map(|kind| {
                let on = alerts.iter().any(|a| a.kind == kind);
                (vec![("alert", kind.name())], Value::Unsigned(u64::from(on)))
            }),
        );
    }
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_labels_escape() {
        assert_eq!(Value::Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Value::Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Value::Float(1e-7).to_string(), "0.0000001");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
