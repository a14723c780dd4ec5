//! Line charts as SVG for the benchmark report: no plotting library, just
//! axes, ticks, polylines and a legend, readable on GitHub and in a browser.

use std::fmt::Write as _;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw markers instead of a line (sparse samples).
    pub markers: bool,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Shaded x ranges with a label (an outage).
    pub bands: Vec<(f64, f64, String)>,
    /// Horizontal reference lines with a label (the link rate).
    pub levels: Vec<(f64, String)>,
}

const W: f64 = 760.0;
const H: f64 = 360.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 50.0;
const COLOURS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

/// A round step giving about `n` ticks over `span`.
fn tick_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart {
    pub fn svg(&self) -> String {
        let all = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x1, mut y1) = (f64::MIN, f64::MIN);
        let mut x0 = f64::MAX;
        for (x, y) in all {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
            y1 = y1.max(*y);
        }
        for (_, b, _) in &self.bands {
            x1 = x1.max(*b);
        }
        for (y, _) in &self.levels {
            y1 = y1.max(*y);
        }
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        }
        x0 = x0.min(0.0);
        let y0 = 0.0;
        let (xs, ys) = (tick_step(x1 - x0, 8.0), tick_step(y1.max(1e-9) - y0, 5.0));
        let x1 = (x1 / xs).ceil() * xs;
        let y1 = ((y1 * 1.05) / ys).ceil() * ys;
        let px = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
        let py = |y: f64| H - B - (y - y0) / (y1 - y0) * (H - T - B);
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
            W / 2.0,
            esc(&self.title)
        );
        for (a, b, label) in &self.bands {
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{T}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#f3d3d3\"/>\
                 <text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#a33\">{}</text>",
                px(*a),
                px(*b) - px(*a),
                H - T - B,
                (px(*a) + px(*b)) / 2.0,
                T + 14.0,
                esc(label)
            );
        }
        let mut x = x0;
        while x <= x1 + xs * 0.01 {
            let _ = writeln!(
                s,
                "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#eee\"/>\
                 <text x=\"{0:.1}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>",
                px(x),
                T,
                H - B,
                H - B + 16.0,
                trim(x)
            );
            x += xs;
        }
        let mut y = y0;
        while y <= y1 + ys * 0.01 {
            let _ = writeln!(
                s,
                "<line x1=\"{L}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#eee\"/>\
                 <text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{4}</text>",
                py(y),
                W - R,
                L - 6.0,
                py(y) + 4.0,
                trim(y)
            );
            y += ys;
        }
        let _ = writeln!(
            s,
            "<line x1=\"{L}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/>\
             <line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{0}\" stroke=\"black\"/>\
             <text x=\"{2}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\
             <text transform=\"translate(16,{5}) rotate(-90)\" text-anchor=\"middle\">{6}</text>",
            H - B,
            W - R,
            (L + W - R) / 2.0,
            H - 10.0,
            esc(&self.x_label),
            (T + H - B) / 2.0,
            esc(&self.y_label)
        );
        for (level, label) in &self.levels {
            let _ = writeln!(
                s,
                "<line x1=\"{L}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#888\" stroke-dasharray=\"5,4\"/>\
                 <text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\" fill=\"#555\">{4}</text>",
                py(*level),
                W - R,
                W - R - 4.0,
                py(*level) - 4.0,
                esc(label)
            );
        }
        for (i, series) in self.series.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            if series.markers {
                for (x, y) in &series.points {
                    let _ = writeln!(
                        s,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{c}\"/>",
                        px(*x),
                        py(*y)
                    );
                }
            } else {
                let pts: Vec<String> = series
                    .points
                    .iter()
                    .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                    .collect();
                let _ = writeln!(
                    s,
                    "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.6\" points=\"{}\"/>",
                    pts.join(" ")
                );
            }
            let ly = T + 8.0 + 16.0 * i as f64;
            let _ = writeln!(
                s,
                "<rect x=\"{0}\" y=\"{1:.1}\" width=\"12\" height=\"3\" fill=\"{c}\"/>\
                 <text x=\"{2}\" y=\"{3:.1}\">{4}</text>",
                L + 12.0,
                ly,
                L + 30.0,
                ly + 5.0,
                esc(&series.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_its_series_band_and_labels() {
        let c = Chart {
            title: "goodput <through> an outage".into(),
            x_label: "s".into(),
            y_label: "Mbit/s".into(),
            series: vec![Series {
                name: "gateway".into(),
                points: vec![(0.0, 10.0), (1.0, 90.0), (2.0, 0.0)],
                markers: false,
            }],
            bands: vec![(1.5, 2.0, "outage".into())],
            levels: vec![(100.0, "link".into())],
        };
        let svg = c.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("&lt;through&gt;") && svg.contains("outage"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!((tick_step(93.0, 5.0) - 20.0).abs() < 1e-9);
    }
}
