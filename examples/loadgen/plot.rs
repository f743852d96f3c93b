//! `--plot FILE.svg`: the run's latency distributions as a picture.
//!
//! One row per measured latency (cancel, pause, time to first token, time to
//! silence, voice to voice, …): every sample as a tick on a logarithmic time
//! axis, a box from p50 to p99, and the p50, p90 and p99 marked and named
//! with their values. A plain SVG (no script, no external font), so it
//! renders in a browser, in a README and in a terminal's image viewer.
//!
//! The runs record their samples here as they compute their summary
//! ([`record`]); `main` writes the file at the end ([`write`]).

use std::fmt::Write as _;
use std::sync::Mutex;

/// One latency's samples.
struct Series {
    name: String,
    /// Samples in microseconds.
    us: Vec<u64>,
}

static SERIES: Mutex<Vec<Series>> = Mutex::new(Vec::new());

/// Records a latency's samples (microseconds; any order). Empty ones are
/// left out of the picture.
pub(crate) fn record(name: &str, samples_us: &[u64]) {
    if samples_us.is_empty() {
        return;
    }
    let mut us = samples_us.to_vec();
    us.sort_unstable();
    SERIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Series {
            name: name.to_string(),
            us,
        });
}

fn pct(sorted: &[u64], q: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `12 µs`, `3.4 ms`, `1.20 s`.
fn human(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..100_000 => format!("{:.1} ms", us as f64 / 1_000.0),
        100_000..1_000_000 => format!("{:.0} ms", us as f64 / 1_000.0),
        _ => format!("{:.2} s", us as f64 / 1_000_000.0),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The picture of everything recorded, as SVG text.
pub(crate) fn svg(title: &str) -> String {
    let series = SERIES.lock().unwrap_or_else(|e| e.into_inner());
    let (left, width, row, top) = (190.0, 660.0, 70.0, 50.0);
    let height = top + row * series.len().max(1) as f64 + 40.0;
    // One logarithmic axis for all rows: from the decade below the smallest
    // sample to the decade above the largest.
    let lo = series.iter().map(|s| s.us[0].max(1)).min().unwrap_or(1);
    let hi = series
        .iter()
        .map(|s| *s.us.last().unwrap_or(&1))
        .max()
        .unwrap_or(10)
        .max(lo * 10);
    let (d0, d1) = (
        (lo as f64).log10().floor(),
        (hi as f64)
            .log10()
            .ceil()
            .max((lo as f64).log10().floor() + 1.0),
    );
    let x = |us: u64| left + ((us.max(1) as f64).log10() - d0) / (d1 - d0) * width;
    let mut out = String::new();
    let w = left + width + 40.0;
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="24" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    // Decade grid lines and labels.
    let axis_y = top + row * series.len().max(1) as f64;
    let mut d = d0;
    while d <= d1 + 1e-9 {
        let us = 10f64.powf(d) as u64;
        let gx = x(us);
        let _ = writeln!(
            out,
            r##"<line x1="{gx:.1}" y1="{top}" x2="{gx:.1}" y2="{axis_y}" stroke="#ddd"/>"##
        );
        let _ = writeln!(
            out,
            r##"<text x="{gx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
            axis_y + 16.0,
            human(us)
        );
        d += 1.0;
    }
    for (i, s) in series.iter().enumerate() {
        let y = top + row * i as f64;
        let mid = y + row / 2.0;
        let _ = writeln!(
            out,
            r#"<text x="10" y="{:.1}" font-weight="bold">{}</text>"#,
            mid - 4.0,
            escape(&s.name)
        );
        let _ = writeln!(
            out,
            r##"<text x="10" y="{:.1}" fill="#555">{} samples</text>"##,
            mid + 12.0,
            s.us.len()
        );
        let (p50, p90, p99) = (pct(&s.us, 0.5), pct(&s.us, 0.9), pct(&s.us, 0.99));
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="16" fill="#cfe3f7" stroke="#4a8bd0"/>"##,
            x(p50),
            mid - 8.0,
            (x(p99) - x(p50)).max(1.0)
        );
        // Every sample as a tick (thinned to at most 2 000 for size).
        let step = (s.us.len() / 2000).max(1);
        let mut ticks = String::new();
        for &us in s.us.iter().step_by(step) {
            let tx = x(us);
            let _ = write!(ticks, "M{tx:.1} {:.1}v10", mid - 5.0);
        }
        let _ = writeln!(
            out,
            r##"<path d="{ticks}" stroke="#1f4e79" stroke-opacity="0.35" fill="none"/>"##
        );
        // p50 to the left of its line, p99 to the right, p90 below: never
        // on top of each other, however close the three are.
        for (label, v, color, dy, anchor, dx) in [
            ("p50", p50, "#1a7f37", -14.0, "end", -3.0),
            ("p90", p90, "#9a6700", 24.0, "middle", 0.0),
            ("p99", p99, "#cf222e", -14.0, "start", 3.0),
        ] {
            let px = x(v);
            let _ = writeln!(
                out,
                r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/>"#,
                mid - 10.0,
                mid + 10.0
            );
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="{anchor}" fill="{color}">{label} {}</text>"#,
                px + dx,
                mid + dy,
                human(v)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Writes the picture to `path`.
pub(crate) fn write(path: &std::path::Path, title: &str) -> std::io::Result<()> {
    std::fs::write(path, svg(title))
}
