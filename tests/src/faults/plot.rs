//! The run's plot as an SVG (no plotting library: a few rectangles and paths):
//! acknowledged sends, records read and failed or unknown sends per second on top, send latency
//! (median and slowest per second, log scale) below, fault windows shaded in both.
//! Pure: history in, text out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::checker::availability::Availability;
use crate::checker::history::{EventType, History, Op};

/// Plot width in pixels.
const WIDTH: f64 = 1200.0;
/// Height of each of the two panels.
const PANEL_HEIGHT: f64 = 260.0;
/// Margins around the panels.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 50.0;
/// Nanoseconds per bucket (one second).
const BUCKET_NS: u64 = 1_000_000_000;
/// Lowest latency shown (the log axis starts here), in milliseconds.
const MIN_LATENCY_MS: f64 = 0.1;

#[derive(Default, Clone)]
struct Bucket {
    acks: u64,
    errors: u64,
    reads: u64,
    latencies_ms: Vec<f64>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "Nice" tick step for a range of `span` units split into about `n` ticks.
fn tick_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let norm = raw / magnitude;
    let nice = if norm < 1.5 {
        1.0
    } else if norm < 3.5 {
        2.0
    } else if norm < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// The SVG of `history`, with `availability`'s fault windows shaded; `title` on top.
pub fn svg(history: &History, availability: &Availability, title: &str) -> String {
    let mut invoked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut buckets: BTreeMap<u64, Bucket> = BTreeMap::new();
    let mut end_ns = 0u64;
    for e in &history.events {
        end_ns = end_ns.max(e.time_ns);
        let b = e.time_ns / BUCKET_NS;
        match (&e.op, e.event_type) {
            (Op::Send(s), EventType::Invoke) => {
                invoked.insert(s.value, e.time_ns);
            }
            (Op::Send(s), EventType::Ok) => {
                let bucket = buckets.entry(b).or_default();
                bucket.acks += 1;
                if let Some(t) = invoked.remove(&s.value) {
                    bucket
                        .latencies_ms
                        .push(e.time_ns.saturating_sub(t) as f64 / 1e6);
                }
            }
            (Op::Send(s), EventType::Fail | EventType::Info) => {
                invoked.remove(&s.value);
                buckets.entry(b).or_default().errors += 1;
            }
            (
                Op::Poll {
                    records,
                    final_read: false,
                },
                EventType::Ok,
            ) => {
                buckets.entry(b).or_default().reads += records.len() as u64;
            }
            _ => {}
        }
    }
    let seconds = (end_ns / BUCKET_NS + 1) as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |t_s: f64| LEFT + plot_w * (t_s / seconds).clamp(0.0, 1.0);
    let top1 = TOP;
    let top2 = TOP + PANEL_HEIGHT + GAP;
    let height = top2 + PANEL_HEIGHT + 45.0;
    let max_rate = buckets
        .values()
        .map(|b| b.acks.max(b.errors).max(b.reads))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_latency = buckets
        .values()
        .flat_map(|b| b.latencies_ms.iter().copied())
        .fold(1.0f64, f64::max);
    let y_rate = |v: f64| top1 + PANEL_HEIGHT * (1.0 - v / max_rate);
    let log_lo = MIN_LATENCY_MS.log10();
    let log_hi = (max_latency * 1.5).log10().max(log_lo + 1.0);
    let y_lat = |ms: f64| {
        let l = ms.max(MIN_LATENCY_MS).log10();
        top2 + PANEL_HEIGHT * (1.0 - (l - log_lo) / (log_hi - log_lo))
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="20" font-size="15">{}</text>"#,
        escape(title)
    );
    // Fault windows.
    for (i, w) in availability.windows.iter().enumerate() {
        let (x0, x1) = (x(w.start_ns as f64 / 1e9), x(w.heal_ns as f64 / 1e9));
        for top in [top1, top2] {
            let _ = writeln!(
                out,
                r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{PANEL_HEIGHT}" fill="#f4a261" fill-opacity="0.25"><title>{}</title></rect>"##,
                (x1 - x0).max(1.0),
                escape(&format!("fault {}: {} — {}", i + 1, w.fault, w.detail))
            );
        }
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#9c4a00">{}</text>"##,
            x0 + 2.0,
            top1 + 12.0 + 12.0 * (i % 3) as f64,
            escape(&format!("{} {}", i + 1, w.fault))
        );
    }
    // Axes and grid.
    for (top, label) in [(top1, "per second"), (top2, "send latency, ms (log)")] {
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_HEIGHT}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">{label}</text>"#,
            top + PANEL_HEIGHT / 2.0,
            top + PANEL_HEIGHT / 2.0
        );
    }
    let step = tick_step(seconds, 12.0);
    let mut t = 0.0;
    while t <= seconds {
        let xt = x(t);
        for top in [top1, top2] {
            let _ = writeln!(
                out,
                r##"<line x1="{xt:.1}" y1="{top}" x2="{xt:.1}" y2="{:.1}" stroke="#ddd"/>"##,
                top + PANEL_HEIGHT
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{xt:.1}" y="{:.1}" text-anchor="middle">{t:.0} s</text>"#,
            top2 + PANEL_HEIGHT + 16.0
        );
        t += step;
    }
    let rstep = tick_step(max_rate, 5.0);
    let mut v = 0.0;
    while v <= max_rate {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{v:.0}</text>"#,
            LEFT - 5.0,
            y_rate(v) + 4.0
        );
        v += rstep;
    }
    let mut decade = log_lo.ceil();
    while decade <= log_hi {
        let ms = 10f64.powf(decade);
        let yv = y_lat(ms);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yv:.1}" x2="{:.1}" y2="{yv:.1}" stroke="#eee"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 5.0,
            yv + 4.0,
            if ms >= 1.0 {
                format!("{ms:.0}")
            } else {
                format!("{ms}")
            }
        );
        decade += 1.0;
    }
    // Series.
    let last = end_ns / BUCKET_NS;
    // One path per series; a second without a value (no send completed) breaks the
    // line instead of bridging the gap.
    let series = |f: &dyn Fn(&Bucket) -> Option<f64>, y: &dyn Fn(f64) -> f64| -> String {
        let mut d = String::new();
        let mut pen_down = false;
        for b in 0..=last {
            let bucket = buckets.get(&b).cloned().unwrap_or_default();
            match f(&bucket) {
                Some(v) => {
                    let cmd = if pen_down { 'L' } else { 'M' };
                    let _ = write!(d, "{cmd}{:.1},{:.1} ", x(b as f64 + 0.5), y(v));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        d
    };
    let line = |out: &mut String, d: String, color: &str, label: &str, legend_y: f64| {
        let _ = writeln!(
            out,
            r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.5"/>"#
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{legend_y:.1}" fill="{color}" text-anchor="end">{label}</text>"#,
            LEFT + plot_w - 5.0
        );
    };
    let rate_y = |v: f64| y_rate(v);
    line(
        &mut out,
        series(&|b| Some(b.acks as f64), &rate_y),
        "#1d6fa5",
        "acknowledged sends",
        top1 + 14.0,
    );
    line(
        &mut out,
        series(&|b| Some(b.reads as f64), &rate_y),
        "#2a9d8f",
        "records read by consumers",
        top1 + 28.0,
    );
    line(
        &mut out,
        series(&|b| Some(b.errors as f64), &rate_y),
        "#d62828",
        "failed or unknown sends",
        top1 + 42.0,
    );
    let quantile = |b: &Bucket, q: f64| {
        if b.latencies_ms.is_empty() {
            return None;
        }
        let mut v = b.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        Some(v[((v.len() - 1) as f64 * q).round() as usize])
    };
    let lat_y = |v: f64| y_lat(v);
    line(
        &mut out,
        series(&|b| quantile(b, 0.5), &lat_y),
        "#1d6fa5",
        "median",
        top2 + 14.0,
    );
    line(
        &mut out,
        series(&|b| quantile(b, 1.0), &lat_y),
        "#6a4c93",
        "slowest",
        top2 + 28.0,
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::availability::analyze;
    use crate::checker::history::{Event, NemesisAction};

    #[test]
    fn plot_shades_each_fault_window_and_draws_every_series() {
        let mut h = History::new();
        let s = 1_000_000_000u64;
        h.push(Event::send_invoke(1, 0, "t", 0, 1));
        h.push(Event::send_ok(1, 2_000_000, "t", 0, 1, 0));
        h.push(Event::nemesis(
            s,
            NemesisAction::Start,
            "kill",
            "kill -9 <node 1>",
        ));
        h.push(Event::send_invoke(1, s + 1, "t", 0, 2));
        h.push(Event::send_info(1, 3 * s, "t", 0, 2));
        h.push(Event::nemesis(
            3 * s,
            NemesisAction::Heal,
            "kill",
            "restarted",
        ));
        h.push(Event::send_invoke(1, 4 * s, "t", 0, 3));
        h.push(Event::send_ok(1, 4 * s + 5_000_000, "t", 0, 3, 1));
        let (availability, _) = analyze(&h, None);
        let text = svg(&h, &availability, "kill <seed 1>");
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
        assert_eq!(
            text.matches("fill-opacity=\"0.25\"").count(),
            2,
            "one window, two panels"
        );
        assert_eq!(text.matches("<path").count(), 5);
        // No send completed in second 2: the latency lines break there.
        assert!(text.matches(" M").count() >= 2, "{text}");
        assert!(text.contains("kill -9 &lt;node 1&gt;") && text.contains("kill &lt;seed 1&gt;"));
    }

    #[test]
    fn tick_steps_are_round_numbers() {
        assert_eq!(tick_step(60.0, 12.0), 5.0);
        assert_eq!(tick_step(600.0, 12.0), 50.0);
        assert_eq!(tick_step(37.0, 5.0), 5.0);
        assert_eq!(tick_step(45.0, 5.0), 10.0);
    }
}
