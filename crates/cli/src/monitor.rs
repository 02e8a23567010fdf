//! `llmem monitor`: the probe sampled at a steady rate, shown live, printed once, or
//! served to Prometheus.
//!
//! Three ways to run it:
//! - default: a terminal view (see [`ui`]), redrawn each sample; q, Esc or Ctrl-C quits;
//! - `--once`: one plain-text snapshot on stdout, for scripts;
//! - `--headless --prometheus ADDR`: no view, sample and serve `/metrics` until killed.
//!
//! - `--attach URL`: a running `llmem serve`'s ledger, sequences and models (see
//!   [`attach`]), live or `--once` (`--json`).
//!
//! `--prometheus ADDR` also works beside the terminal view. Nothing listens unless it is
//! given, and only on the address given.

mod attach;
mod ui;

use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use clap::Args;
use probe::{HealthContext, HealthReport, LedgerView, Monitor, NativeProbe, render_prometheus};

use crate::exit::{CliError, input};
use crate::health::{self, ModelArgs, ModelFacts};
use crate::metrics_http::{self, Exposition};

#[derive(Args, Debug)]
#[command(after_help = "\
Modes:
  llmem monitor                                     live view; q, Esc or Ctrl-C quits
  llmem monitor --prometheus 127.0.0.1:9184         live view, and /metrics served
  llmem monitor --headless --prometheus 127.0.0.1:9184   /metrics only, until killed
  llmem monitor --once                              one plain-text snapshot
  llmem monitor --attach http://127.0.0.1:8080      a running llmem serve's view")]
pub struct MonitorArgs {
    /// Print one plain-text snapshot and exit, without the terminal view (for scripts).
    #[arg(long, conflicts_with_all = ["headless", "prometheus"])]
    pub once: bool,
    /// Time between samples, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub interval_ms: u64,
    /// Serve GET /metrics in Prometheus text format on this address, e.g. 127.0.0.1:9184
    /// (port 0 picks a free port; the address is printed). Nothing listens without it.
    #[arg(long, value_name = "ADDR")]
    pub prometheus: Option<SocketAddr>,
    /// Show a running `llmem serve` (its ledger, sequences, KV and models) instead of
    /// this machine; loads no model.
    #[arg(long, value_name = "URL", conflicts_with_all = ["prometheus", "headless"])]
    pub attach: Option<String>,
    /// With --once: the snapshot as JSON.
    #[arg(long, requires = "once")]
    pub json: bool,
    /// No terminal view: sample and serve --prometheus until killed.
    #[arg(long, requires = "prometheus")]
    pub headless: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// llmem's ledger for this tick.
///
/// A `llmem monitor` process loads no model, so it holds no reservations and has no ledger
/// of its own: the view says so and shows the whole process as untracked, and the health
/// score leaves allocation efficiency out rather than judging an empty ledger.
/// TODO(issue 5): when a model-serving process runs the monitor in-process, feed its
/// `Budget::snapshot()` here as a `LedgerView`.
fn ledger_view() -> Option<LedgerView> {
    None
}

/// The monitor, what it needs to judge health, and where its numbers go.
pub struct Session {
    monitor: Monitor<NativeProbe>,
    context: HealthContext,
    report: Option<HealthReport>,
    /// The last sampling failure, shown until a sample succeeds.
    last_error: Option<String>,
    exposition: Option<Exposition>,
    interval: Duration,
    metrics_addr: Option<SocketAddr>,
}

impl Session {
    fn new(args: &MonitorArgs, facts: Option<&ModelFacts>) -> Self {
        Self {
            monitor: Monitor::new(NativeProbe::new()),
            context: facts.map_or_else(HealthContext::new, ModelFacts::context),
            report: None,
            last_error: None,
            exposition: None,
            interval: Duration::from_millis(args.interval_ms),
            metrics_addr: None,
        }
    }

    /// Samples once, scores, and publishes the exposition. A failed reading keeps the
    /// previous sample and is remembered for display.
    fn tick(&mut self) {
        match self.monitor.sample(ledger_view()) {
            Ok(_) => {
                self.last_error = None;
                self.report = self.monitor.health(&self.context);
                if let (Some(exposition), Some(sample)) = (&self.exposition, self.monitor.latest())
                {
                    exposition.publish(render_prometheus(
                        sample,
                        self.report.as_ref(),
                        Some(self.monitor.alerts()),
                    ));
                }
            }
            Err(e) => self.last_error = Some(format!("{:#}", anyhow!(e))),
        }
    }

    /// Starts the metrics endpoint if asked for, after the first sample so that the first
    /// scrape already has numbers.
    fn serve(&mut self, addr: Option<SocketAddr>) -> Result<(), CliError> {
        let Some(addr) = addr else { return Ok(()) };
        let exposition = Exposition::default();
        self.exposition = Some(exposition.clone());
        if let Some(sample) = self.monitor.latest() {
            exposition.publish(render_prometheus(
                sample,
                self.report.as_ref(),
                Some(self.monitor.alerts()),
            ));
        }
        let bound = metrics_http::serve(addr, exposition)
            .with_context(|| format!("cannot serve metrics on {addr}"))
            .map_err(input)?;
        if !bound.ip().is_loopback() {
            eprintln!(
                "llmem monitor: warning: /metrics on {bound} is reachable from other machines; \
                 bind 127.0.0.1 to keep it to this one"
            );
        }
        self.metrics_addr = Some(bound);
        Ok(())
    }
}

pub fn run(args: &MonitorArgs) -> Result<(), CliError> {
    if let Some(url) = &args.attach {
        return attach::run(
            url,
            args.once,
            args.json,
            Duration::from_millis(args.interval_ms),
        );
    }
    if args.json {
        return Err(input(anyhow!("--json is for --attach URL --once")));
    }
    let live_view = !args.once && !args.headless;
    if live_view && !(io::stdout().is_terminal() && io::stdin().is_terminal()) {
        return Err(input(anyhow!(
            "the live view needs a terminal; use --once for a snapshot or --headless \
             --prometheus ADDR to serve metrics"
        )));
    }
    let facts = args.model.facts()?;
    let mut session = Session::new(args, facts.as_ref());
    session.tick();
    if let Some(e) = &session.last_error {
        return Err(CliError::Runtime(anyhow!("reading the memory probe: {e}")));
    }
    if args.once {
        return print_once(&session, facts.as_ref());
    }
    session.serve(args.prometheus)?;
    if args.headless {
        headless(&mut session)
    } else {
        ui::run(&mut session)
    }
}

fn print_once(session: &Session, facts: Option<&ModelFacts>) -> Result<(), CliError> {
    let sample = session.monitor.latest().context("no sample taken")?;
    let report = session.report.as_ref().context("no sample taken")?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    health::write_memory(&mut out, sample)?;
    for line in pool_lines(sample) {
        writeln!(out, "{line}")?;
    }
    health::write_process(&mut out, sample)?;
    if let Some(facts) = facts {
        health::write_model(&mut out, facts)?;
    }
    health::write_pressure(&mut out, sample)?;
    health::write_alerts(&mut out, session.monitor.alerts())?;
    health::write_health(&mut out, report)?;
    out.flush()?;
    Ok(())
}

/// llmem's pools from the ledger, or, without one, the whole process as one untracked
/// line and a note saying why.
pub fn pool_lines(sample: &probe::Sample) -> Vec<String> {
    let fmt = probe::format_bytes;
    let Some(ledger) = &sample.ledger else {
        return vec![
            "llmem pools: none (no model loaded here)".to_owned(),
            format!(
                "  {:<10} {:>9} (whole process)",
                "untracked",
                fmt(sample.process.footprint_bytes())
            ),
        ];
    };
    let mut lines = vec!["llmem pools:".to_owned()];
    for pool in &ledger.pools {
        lines.push(format!(
            "  {:<10} {:>9} of {}",
            pool.name,
            fmt(pool.used_bytes),
            fmt(pool.limit_bytes)
        ));
    }
    if let Some(untracked) = sample.untracked_bytes {
        let sign = if untracked < 0 { "-" } else { "" };
        lines.push(format!(
            "  {:<10} {:>9}",
            "untracked",
            format!("{sign}{}", fmt(untracked.unsigned_abs()))
        ));
    }
    lines
}

/// Samples on schedule until the process is killed; the endpoint serves meanwhile.
fn headless(session: &mut Session) -> Result<(), CliError> {
    let addr = session
        .metrics_addr
        .context("headless without an endpoint")?;
    crate::out::note(&format!(
        "llmem monitor: serving Prometheus metrics at http://{addr}/metrics"
    ));
    let mut next = Instant::now() + session.interval;
    let mut reported: Option<String> = None;
    loop {
        thread::sleep(next.saturating_duration_since(Instant::now()));
        next = next_tick(next, session.interval);
        session.tick();
        // Report a failure once, not once a second.
        if session.last_error != reported {
            if let Some(e) = &session.last_error {
                crate::out::note(&format!("llmem monitor: sampling failed: {e}"));
            }
            reported.clone_from(&session.last_error);
        }
    }
}

/// The tick after `due`, skipping ticks already missed (a suspended laptop, a stalled
/// terminal) instead of sampling in a burst to catch up.
fn next_tick(due: Instant, interval: Duration) -> Instant {
    let next = due + interval;
    let now = Instant::now();
    if next < now { now + interval } else { next }
}
