//! The report as an SVG plot: bandwidth and latency against working-set size (log₂), with
//! the cache-level boundaries marked, so the steps of the hierarchy show at a glance.

use std::fmt::Write as _;

use crate::Op;
use crate::cache::short_size;
use crate::report::{Measurement, Report};

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 400.0;
const TOP: f64 = 50.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const GAP: f64 = 60.0;

struct Series {
    label: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(u64, f64)>,
}

struct Panel {
    title: &'static str,
    y_label: &'static str,
    series: Vec<Series>,
}

fn color(op: Op) -> &'static str {
    match op {
        Op::Read => "#1f77b4",
        Op::Write => "#ff7f0e",
        Op::Copy => "#2ca02c",
        Op::Triad => "#d62728",
        Op::Latency => "#333333",
        Op::LatencyHuge => "#9467bd",
    }
}

impl Report {
    /// The report as a standalone SVG document: a bandwidth panel (GB/s, one line per op ×
    /// threads, dashed for the all-threads runs) above a latency panel (ns per load, log
    /// scale, base and huge pages), both over working-set bytes on a log₂ axis, with the
    /// L1d, L2 and L3 sizes marked as vertical lines.
    #[must_use]
    pub fn to_svg(&self) -> String {
        let mut panels = Vec::new();
        let bandwidth = series(&self.results, |m| m.gb_s.map(|s| s.median), true);
        if !bandwidth.is_empty() {
            panels.push(Panel {
                title: "Bandwidth (median, log scale; dashed = all threads)",
                y_label: "GB/s",
                series: bandwidth,
            });
        }
        let latency = series(&self.results, |m| m.ns.map(|s| s.median), false);
        if !latency.is_empty() {
            panels.push(Panel {
                title: "Load latency, dependent pointer chase (median)",
                y_label: "ns per load",
                series: latency,
            });
        }
        let all_bytes = self.results.iter().map(|m| m.bytes);
        let x_range = (
            all_bytes.clone().min().unwrap_or(4096).max(1),
            all_bytes.max().unwrap_or(1 << 30).max(2),
        );
        let height = TOP + panels.len().max(1) as f64 * (PANEL_HEIGHT + GAP);
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let m = &self.machine;
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#,
            escape(&format!(
                "{} · {} CPUs · {} · {} kernels · {} reps",
                m.cpu_model,
                m.logical_cpus,
                m.os,
                m.isa.name(),
                self.reps
            ))
        );
        for (i, panel) in panels.iter().enumerate() {
            let top = TOP + i as f64 * (PANEL_HEIGHT + GAP);
            self.draw_panel(&mut out, panel, top, x_range);
        }
        out.push_str("</svg>\n");
        out
    }

    fn draw_panel(&self, out: &mut String, panel: &Panel, top: f64, (x_min, x_max): (u64, u64)) {
        let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, PANEL_HEIGHT - 40.0);
        let (lx_min, lx_max) = (
            (x_min as f64).log2(),
            (x_max as f64).log2().max((x_min as f64).log2() + 1.0),
        );
        let x = |bytes: u64| LEFT + ((bytes as f64).log2() - lx_min) / (lx_max - lx_min) * plot_w;
        let values = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1));
        // Both panels use a log scale: the levels differ by an order of magnitude or more,
        // and a linear axis flattens the DRAM end into the floor.
        let lo = values.clone().fold(f64::INFINITY, f64::min).max(1e-3);
        let hi = values.fold(0.0, f64::max).max(lo * 10.0);
        let (y_lo, y_hi) = (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil()),
        );
        let y = |v: f64| {
            let t = (v.max(y_lo).log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10());
            top + 20.0 + plot_h * (1.0 - t)
        };
        let (plot_top, plot_bottom) = (top + 20.0, top + 20.0 + plot_h);
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{:.1}" font-size="13" font-weight="bold">{}</text>"#,
            top + 10.0,
            panel.title
        );
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{plot_top:.1}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#888"/>"##
        );

        // Vertical grid and labels at every power of four.
        let mut p = x_min.next_power_of_two();
        while p <= x_max {
            if p.trailing_zeros() % 2 == 0 {
                let px = x(p);
                let _ = writeln!(
                    out,
                    r##"<line x1="{px:.1}" y1="{plot_top:.1}" x2="{px:.1}" y2="{plot_bottom:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                    plot_bottom + 15.0,
                    short_size(p)
                );
            }
            p = p.saturating_mul(2);
            if p == u64::MAX {
                break;
            }
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">working set, bytes (log₂)</text>"#,
            LEFT + plot_w / 2.0,
            plot_bottom + 32.0
        );

        // Horizontal grid and labels.
        for tick in y_ticks(y_lo, y_hi) {
            let py = y(tick);
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                py + 4.0,
                tick_label(tick)
            );
        }
        let _ = writeln!(
            out,
            r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            plot_top + plot_h / 2.0,
            panel.y_label
        );

        // Cache boundaries (one core's capacity; the all-threads lines step at N× for the
        // private levels).
        let c = &self.machine.caches;
        for (name, size) in [("L1d", c.l1d), ("L2", c.l2), ("L3", c.l3)] {
            let Some(size) = size.filter(|s| (x_min..=x_max).contains(s)) else {
                continue;
            };
            let px = x(size);
            let _ = writeln!(
                out,
                r##"<line x1="{px:.1}" y1="{plot_top:.1}" x2="{px:.1}" y2="{plot_bottom:.1}" stroke="#555" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}" fill="#555">{name} {}</text>"##,
                px + 3.0,
                plot_top + 14.0,
                short_size(size)
            );
        }

        // Lines and legend.
        for (i, s) in panel.series.iter().enumerate() {
            let path: Vec<String> = s
                .points
                .iter()
                .map(|&(b, v)| format!("{:.1},{:.1}", x(b), y(v)))
                .collect();
            let dash = if s.dashed {
                r#" stroke-dasharray="7,4""#
            } else {
                ""
            };
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                path.join(" "),
                s.color
            );
            for &(b, v) in &s.points {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"#,
                    x(b),
                    y(v),
                    s.color
                );
            }
            let ly = plot_top + 10.0 + i as f64 * 18.0;
            let lx = LEFT + plot_w + 14.0;
            let _ = writeln!(
                out,
                r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
                lx + 24.0,
                s.color,
                lx + 30.0,
                ly + 4.0,
                escape(&s.label)
            );
        }
    }
}

/// One series per op × threads, points sorted by size.
fn series(
    results: &[Measurement],
    value: impl Fn(&Measurement) -> Option<f64>,
    dash_wide: bool,
) -> Vec<Series> {
    let mut keys: Vec<(Op, usize)> = Vec::new();
    for m in results.iter().filter(|m| value(m).is_some()) {
        if !keys.contains(&(m.op, m.threads)) {
            keys.push((m.op, m.threads));
        }
    }
    keys.sort();
    keys.into_iter()
        .map(|(op, threads)| {
            let mut points: Vec<(u64, f64)> = results
                .iter()
                .filter(|m| m.op == op && m.threads == threads)
                .filter_map(|m| value(m).map(|v| (m.bytes, v)))
                .collect();
            points.sort_by_key(|p| p.0);
            let label = match op {
                Op::Latency => "base pages".to_owned(),
                Op::LatencyHuge => "huge pages".to_owned(),
                _ => format!("{} ×{threads}", op.name()),
            };
            Series {
                label,
                color: color(op),
                dashed: dash_wide && threads > 1,
                points,
            }
        })
        .collect()
}

/// 1, 2 and 5 × 10ᵏ between `lo` and `hi` (both powers of ten).
fn y_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.log10().round() as i32, hi.log10().round() as i32);
    (a..=b)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
        .filter(|t| *t <= hi * 1.000_001)
        .collect()
}

fn tick_label(v: f64) -> String {
    if v >= 1.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn svg_has_both_panels_lines_and_cache_marks() {
        let svg = sample_report().to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Bandwidth") && svg.contains("Load latency"));
        // copy ×1, copy ×2, latency.
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("copy ×2") && svg.contains("stroke-dasharray=\"7,4\""));
        assert!(svg.contains("L1d 32K") && svg.contains("L2 512K") && svg.contains("L3 32M"));
        assert!(svg.contains(">4K<") && svg.contains(">1G<"));
        // Each opening element is closed: no stray '<' from unescaped text.
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
    }

    #[test]
    fn ticks_are_one_two_five_per_decade() {
        assert_eq!(
            y_ticks(1.0, 100.0),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(y_ticks(0.1, 1.0).len(), 4);
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
