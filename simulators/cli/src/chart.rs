//! `report.svg`: two panels over the seconds of the run — throughput (records
//! published and notifications delivered per second) and latency (p50 and p99 of each
//! second's first deliveries, in milliseconds).

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{Report, Written};

const WIDTH: u32 = 1_000;
/// Lowest latency the log scale shows (10 µs); anything below sits on the axis.
const MIN_MS: f64 = 0.01;
const HEIGHT: u32 = 720;
const PUBLISHED: RGBColor = RGBColor(31, 119, 180);
const DELIVERED: RGBColor = RGBColor(255, 127, 14);
const P50: RGBColor = RGBColor(44, 160, 44);
const P99: RGBColor = RGBColor(214, 39, 40);

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing report.svg: {e}")
}

/// A little headroom above the highest value, never an empty range.
fn top(max: f64) -> f64 {
    if max > 0.0 { max * 1.1 } else { 1.0 }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Draws a panel's title and its legend in a strip above the panel (so the legend
/// never hides data) and returns the rest of the panel.
fn heading<'a>(
    area: &Area<'a>,
    title: &str,
    series: &[(&str, RGBColor)],
) -> anyhow::Result<Area<'a>> {
    let (strip, rest) = area.split_vertically(30);
    let y = 15;
    let title_style =
        TextStyle::from(("sans-serif", 16).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    strip.draw_text(title, &title_style, (76, y)).map_err(err)?;
    let label_style =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let (width, _) = strip.dim_in_pixel();
    let mut x = width as i32 - 20;
    for (label, color) in series.iter().rev() {
        let (w, _) = strip.estimate_text_size(label, &label_style).map_err(err)?;
        x -= w as i32;
        strip.draw_text(label, &label_style, (x, y)).map_err(err)?;
        x -= 30;
        strip
            .draw(&PathElement::new(
                vec![(x, y), (x + 24, y)],
                color.stroke_width(3),
            ))
            .map_err(err)?;
        x -= 24;
    }
    Ok(rest)
}

/// The SVG document of `report`.
pub fn render(report: &Report) -> anyhow::Result<String> {
    let t = &report.timeline;
    let x_max = t.last().map_or(1.0, |s| s.second as f64 + 1.0);
    let rate_max = t
        .iter()
        .map(|s| s.published.max(s.delivered))
        .max()
        .unwrap_or(0) as f64;
    let ms = |us: u64| us as f64 / 1_000.0;
    // Latency is drawn on a log scale so a stall's seconds and a healthy p50 both read.
    let latencies = t
        .iter()
        .flat_map(|s| [s.latency_p50_us, s.latency_p99_us])
        .flatten()
        .map(ms);
    let (latency_min, latency_max) =
        latencies.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let latency_floor = if latency_min < f64::MAX {
        (latency_min / 2.0).max(MIN_MS)
    } else {
        MIN_MS
    };
    let latency_top = (latency_max * 2.0).max(latency_floor * 10.0);
    // A point sits in the middle of its second.
    let mid = |s: u64| s as f64 + 0.5;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let title = format!(
            "mpn-sim {}: {} events/s {}, {} subscribers, started {}",
            report.command,
            report.settings.rate,
            report.settings.profile,
            report.settings.subscribers,
            report.started_at
        );
        let root = root.titled(&title, ("sans-serif", 18)).map_err(err)?;
        let (upper, lower) = root.split_vertically(HEIGHT / 2 - 10);

        let upper = heading(
            &upper,
            "Throughput per second",
            &[
                ("published (broker acks)", PUBLISHED),
                ("delivered (all subscribers)", DELIVERED),
            ],
        )?;
        let mut chart = ChartBuilder::on(&upper)
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..top(rate_max))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since publishing started")
            .y_desc("per second")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                t.iter().map(|s| (mid(s.second), s.published as f64)),
                PUBLISHED.stroke_width(2),
            ))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                t.iter().map(|s| (mid(s.second), s.delivered as f64)),
                DELIVERED.stroke_width(2),
            ))
            .map_err(err)?;

        let lower = heading(
            &lower,
            "End-to-end latency per second (first deliveries)",
            &[("p50", P50), ("p99", P99)],
        )?;
        let mut chart = ChartBuilder::on(&lower)
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, (latency_floor..latency_top).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since publishing started")
            .y_desc("milliseconds (log scale)")
            .y_label_formatter(&|v| format!("{v}"))
            .draw()
            .map_err(err)?;
        // A second without deliveries breaks the line instead of drawing a false zero.
        for (series, color) in [(0usize, P50), (1usize, P99)] {
            let value = |s: &crate::stats::Second| {
                if series == 0 {
                    s.latency_p50_us
                } else {
                    s.latency_p99_us
                }
            };
            let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            for s in t {
                match value(s) {
                    Some(us) => runs
                        .last_mut()
                        .expect("never empty")
                        .push((mid(s.second), ms(us).max(latency_floor))),
                    None if !runs.last().expect("never empty").is_empty() => runs.push(Vec::new()),
                    None => {}
                }
            }
            for run in runs.into_iter().filter(|r| !r.is_empty()) {
                // A lone second is a dot, not an invisible zero-length line.
                if run.len() == 1 {
                    chart
                        .draw_series(std::iter::once(Circle::new(run[0], 3, color.filled())))
                        .map_err(err)?;
                }
                chart
                    .draw_series(LineSeries::new(run, color.stroke_width(2)))
                    .map_err(err)?;
            }
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Written here rather than in `report`, which stays free of the drawing.
impl Report {
    /// Writes `report.json` and `report.svg` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> anyhow::Result<Written> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("report.json");
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(&json, text).with_context(|| format!("writing {}", json.display()))?;
        let svg = dir.join("report.svg");
        self.write_svg(&svg)?;
        Ok(Written { json, svg })
    }

    /// Draws the report's picture to `path`.
    pub fn write_svg(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, crate::chart::render(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    #[test]
    fn svg_is_a_document_with_both_panels() {
        let svg = render(&sample()).unwrap();
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        for text in [
            "Throughput per second",
            "End-to-end latency per second",
            "published (broker acks)",
            "delivered (all subscribers)",
            "p50",
            "p99",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        let lines = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .count();
        assert!(lines >= 4, "{lines} lines drawn");
    }

    #[test]
    fn an_empty_run_still_draws() {
        let mut r = sample();
        r.timeline.clear();
        let svg = render(&r).unwrap();
        roxmltree::Document::parse(&svg).expect("well-formed XML");
    }
}
