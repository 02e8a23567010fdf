//! The live terminal view of `llmem monitor`, laid out for 80×24 and up:
//!
//! ```text
//!  header: rate · metrics address · keys · last sampling error
//! ┌ memory (OS) ─────────────────────┐┌ llmem pools · process ───────────┐
//! │ total, available, categories, swap││ ledger pools or untracked; rss…  │
//! └──────────────────────────────────┘└──────────────────────────────────┘
//! ┌ pressure 0.36 normal (source) · raw signals ──────────────────────────┐
//! │ sparkline of the history, newest on the right                        │
//! └──────────────────────────────────────────────────────────────────────┘
//! ┌ health 0.87 good · alerts ───────────────────────────────────────────┐
//! │ recommendations, one per line, wrapped                               │
//! └──────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Plain colours and box characters only, no mouse capture: it works over ssh and in
//! tmux. The terminal is restored on every way out: return, error, panic, and Ctrl-C
//! (which raw mode delivers as a key, not a signal).

use std::io::{self, Stdout};
use std::panic;
use std::sync::Once;
use std::time::Instant;

use probe::{PressureLevel, Sample, format_bytes};
use ratatui::Frame;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::crossterm::{cursor, execute};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Sparkline, Wrap};

use super::{Session, next_tick, pool_lines};
use crate::exit::CliError;
use crate::health::{level_name, pressure_signals, rating_name, source_name};

/// Puts the terminal back as it was; safe to call more than once.
fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// Raw mode and the alternate screen for as long as it lives.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> io::Result<Self> {
        // A panic prints its message after the terminal is restored, so it can be read.
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = panic::take_hook();
            panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        enable_raw_mode()?;
        let guard = Self;
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

fn is_quit(key: &KeyEvent) -> bool {
    match key.code {
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
        KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
        _ => false,
    }
}

/// Draws, waits for a key or the next tick, samples; until a quit key.
pub fn run(session: &mut Session) -> Result<(), CliError> {
    let _guard = TerminalGuard::enter()?;
    let mut terminal: Terminal<CrosstermBackend<Stdout>> =
        Terminal::new(CrosstermBackend::new(io::stdout()))?;
    terminal.clear()?;
    let mut next = Instant::now() + session.interval;
    loop {
        terminal.draw(|frame| draw(frame, session))?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            match event::read()? {
                Event::Key(key) if key.kind != KeyEventKind::Release && is_quit(&key) => {
                    return Ok(());
                }
                // Anything else (a resize among them) just redraws.
                _ => {}
            }
        }
        if Instant::now() >= next {
            next = next_tick(next, session.interval);
            session.tick();
        }
    }
}

/// A live view of plain text lines (`monitor --attach`): redrawn from `frame` every
/// `interval`, in the alternate screen, until a quit key; the last line says how to quit.
pub fn run_lines(
    interval: std::time::Duration,
    mut frame: impl FnMut() -> Vec<String>,
) -> Result<(), CliError> {
    let _guard = TerminalGuard::enter()?;
    let mut terminal: Terminal<CrosstermBackend<Stdout>> =
        Terminal::new(CrosstermBackend::new(io::stdout()))?;
    terminal.clear()?;
    let mut lines = frame();
    let mut next = Instant::now() + interval;
    loop {
        terminal.draw(|f| {
            let mut text: Vec<Line> = lines.iter().map(|l| Line::raw(l.as_str())).collect();
            text.push(Line::raw(""));
            text.push(Line::styled("q quits", bold()));
            f.render_widget(Paragraph::new(text), f.area());
        })?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)?
            && let Event::Key(key) = event::read()?
            && key.kind != KeyEventKind::Release
            && is_quit(&key)
        {
            return Ok(());
        }
        if Instant::now() >= next {
            next = next_tick(next, interval);
            lines = frame();
        }
    }
}

fn level_color(level: PressureLevel) -> Color {
    match level {
        PressureLevel::Normal => Color::Green,
        PressureLevel::Warning => Color::Yellow,
        PressureLevel::Critical => Color::Red,
    }
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn draw(frame: &mut Frame, session: &Session) {
    let [header, top, pressure, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Min(4),
    ])
    .areas(frame.area());
    draw_header(frame, header, session);
    let Some(sample) = session.monitor.latest() else {
        return;
    };
    let [memory, pools] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
    frame.render_widget(memory_panel(sample), memory);
    frame.render_widget(pools_panel(sample), pools);
    draw_pressure(frame, pressure, session, sample);
    frame.render_widget(health_panel(session), bottom);
}

fn draw_header(frame: &mut Frame, area: Rect, session: &Session) {
    let mut spans = vec![
        Span::styled("llmem monitor", bold()),
        Span::raw(format!(" · every {:.1} s", session.interval.as_secs_f64())),
    ];
    if let Some(addr) = session.metrics_addr {
        spans.push(Span::raw(format!(" · http://{addr}/metrics")));
    }
    spans.push(Span::raw(" · q quits"));
    if let Some(e) = &session.last_error {
        spans.push(Span::styled(
            format!(" · sampling failed: {e}"),
            Style::default().fg(Color::Red),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn memory_panel(sample: &Sample) -> Paragraph<'static> {
    let s = &sample.system;
    let pct = |b: u64| {
        if s.mem_total_bytes == 0 {
            0.0
        } else {
            b as f64 * 100.0 / s.mem_total_bytes as f64
        }
    };
    let mut lines = vec![Line::from(format!(
        "total {} · avail {} {:.0}%",
        format_bytes(s.mem_total_bytes),
        format_bytes(s.mem_available_bytes),
        pct(s.mem_available_bytes)
    ))];
    for c in &s.categories {
        lines.push(Line::from(format!(
            "{:<12} {:>10} {:>4.0}%",
            c.name,
            format_bytes(c.bytes),
            pct(c.bytes)
        )));
    }
    lines.push(Line::from(format!(
        "swap {} of {}",
        format_bytes(s.swap_used_bytes),
        format_bytes(s.swap_total_bytes)
    )));
    Paragraph::new(lines).block(Block::bordered().title(" memory (OS) "))
}

fn pools_panel(sample: &Sample) -> Paragraph<'static> {
    // The panel's title already says "llmem pools".
    let mut lines: Vec<Line> = pool_lines(sample)
        .into_iter()
        .filter_map(|l| {
            let l = l.strip_prefix("llmem pools:").unwrap_or(&l).trim_start();
            (!l.is_empty()).then(|| Line::from(l.to_owned()))
        })
        .collect();
    let p = &sample.process;
    let mut process = format!("process rss {}", format_bytes(p.rss_bytes));
    if let Some(peak) = p.rss_peak_bytes {
        process.push_str(&format!(" · peak {}", format_bytes(peak)));
    }
    lines.push(Line::from(process));
    for g in &sample.gpus {
        lines.push(Line::from(format!(
            "gpu{} {} of {}",
            g.index,
            format_bytes(g.used_bytes),
            format_bytes(g.total_bytes)
        )));
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: true })
        .block(Block::bordered().title(" llmem pools · process "))
}

fn draw_pressure(frame: &mut Frame, area: Rect, session: &Session, sample: &Sample) {
    let p = &sample.pressure;
    let mut title = vec![
        Span::raw(" pressure "),
        Span::styled(
            format!("{:.2} {}", p.value, level_name(p.level)),
            bold().fg(level_color(p.level)),
        ),
        Span::raw(format!(" ({}) ", source_name(p.source))),
    ];
    if let Some(first) = pressure_signals(sample).into_iter().next() {
        title.push(Span::raw(format!("· {first} ")));
    }
    // The newest samples that fit, on a fixed 0–1 scale so that height means pressure.
    let width = usize::from(area.width.saturating_sub(2));
    let history: Vec<u64> = session
        .monitor
        .history()
        .map(|h| (h.pressure.clamp(0.0, 1.0) * 100.0).round() as u64)
        .collect();
    let shown = &history[history.len().saturating_sub(width)..];
    let block = Block::bordered()
        .title(Line::from(title))
        .title_bottom(format!(" last {} samples, scale 0 to 1 ", shown.len()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    frame.render_widget(
        Sparkline::default()
            .data(shown.iter().copied())
            .max(100)
            .style(Style::default().fg(level_color(p.level))),
        inner,
    );
}

fn health_panel(session: &Session) -> Paragraph<'static> {
    let mut title = vec![Span::raw(" health ")];
    let mut lines = Vec::new();
    if let Some(report) = &session.report {
        title.push(Span::styled(
            format!("{:.2} {}", report.health_score, rating_name(report.rating)),
            bold(),
        ));
        title.push(Span::raw(" "));
    }
    let alerts = session.monitor.alerts();
    if alerts.is_empty() {
        lines.push(Line::from("alerts: none"));
    } else {
        let names: Vec<String> = alerts
            .iter()
            .map(|a| format!("{} {:.2}", a.kind.name(), a.value))
            .collect();
        lines.push(Line::from(Span::styled(
            format!("alerts: {}", names.join(", ")),
            Style::default().fg(Color::Red),
        )));
    }
    match session.report.as_ref().map(|r| &r.recommendations) {
        Some(recs) if !recs.is_empty() => {
            for r in recs {
                lines.push(Line::from(format!("• {} ({})", r.message, r.setting)));
            }
        }
        _ => lines.push(Line::from("recommendations: none")),
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: true })
        .block(Block::bordered().title(Line::from(title)))
}
