//! The benchmark's PNG: relayed packets per second at the maximum rate and relay CPU per
//! packet, grouped by (allocations, payload), one bar per contender.
//!
//! Text is rendered with `ab_glyph` from a TrueType file read at run time (DejaVu Sans from
//! Debian's `fonts-dejavu-core`), so no fontconfig is needed. Without that file the chart is
//! drawn without any text and the Markdown carries the legend.
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Measurement, Report};

const FONT_FILES: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
const FONT: &str = "sans-serif";

/// What a panel shows of a measurement.
type Figure = dyn Fn(&Measurement) -> Option<f64>;

/// Colours per contender key.
fn colour(key: &str) -> RGBColor {
    match key {
        "generator" => RGBColor(160, 160, 160),
        "ceiling" => RGBColor(40, 40, 40),
        "xdp" => RGBColor(31, 119, 180),
        "userspace" => RGBColor(44, 160, 44),
        "userspace-2t" => RGBColor(152, 223, 138),
        "coturn" => RGBColor(255, 127, 14),
        _ => RGBColor(148, 103, 189),
    }
}

/// Registers the font once; false if no font file is readable.
fn load_font() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        for path in FONT_FILES {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws the chart; returns a note for the Markdown (empty when the chart has its text).
pub fn draw(report: &Report, path: &Path) -> Result<String> {
    let with_text = load_font();
    let groups: Vec<(usize, usize)> = report
        .plan
        .allocations
        .iter()
        .flat_map(|&n| report.plan.payloads.iter().map(move |&p| (n, p)))
        .collect();
    let contenders: Vec<&str> = report
        .contenders
        .iter()
        .filter(|c| c.error.is_none())
        .map(|c| c.key.as_str())
        .collect();
    let max_of = |key: &str, (n, p): (usize, usize)| -> Option<&Measurement> {
        report
            .contenders
            .iter()
            .find(|c| c.key == key)?
            .measurements
            .iter()
            .find(|m| m.allocations == n && m.payload == p && m.kind == "max")
    };

    let root = BitMapBackend::new(path, (1400, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (main, legend) = root.split_vertically(580);
    let (left, right) = main.split_horizontally(700);
    let panels: [(&DrawingArea<_, _>, &str, Box<Figure>); 2] = [
        (
            &left,
            "relayed kpps at max (both directions, higher is better)",
            Box::new(|m: &Measurement| Some(m.relayed_pps / 1000.0)),
        ),
        (
            &right,
            "relay CPU µs per relayed packet at max (lower is better)",
            Box::new(|m: &Measurement| m.cpu_s_per_mpkt),
        ),
    ];
    for (area, title, value) in panels {
        let values: Vec<Vec<Option<f64>>> = groups
            .iter()
            .map(|&g| {
                contenders
                    .iter()
                    .map(|k| max_of(k, g).and_then(&value))
                    .collect()
            })
            .collect();
        let top = values
            .iter()
            .flatten()
            .flatten()
            .fold(0.0f64, |a, &b| a.max(b))
            .max(1e-3)
            * 1.1;
        let g = groups.len().max(1) as f64;
        let mut builder = ChartBuilder::on(area);
        builder.margin(15);
        if with_text {
            builder
                .caption(title, (FONT, 18))
                .x_label_area_size(40)
                .y_label_area_size(60);
        } else {
            builder.x_label_area_size(10).y_label_area_size(10);
        }
        let mut chart = builder
            .build_cartesian_2d(0.0..g, 0.0..top)
            .map_err(|e| anyhow!("{e}"))?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh().x_labels(0);
        if with_text {
            mesh.label_style((FONT, 14));
        } else {
            mesh.y_labels(0);
        }
        mesh.draw().map_err(|e| anyhow!("{e}"))?;
        if with_text {
            // Group labels under the axis, placed in pixels (the axis has no label of its own).
            for (i, (n, p)) in groups.iter().enumerate() {
                let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
                let style =
                    TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
                root.draw(&Text::new(format!("{n} alloc, {p} B"), (x, y + 8), style))
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
        let width = 0.8 / contenders.len().max(1) as f64;
        for (gi, row) in values.iter().enumerate() {
            for (ci, v) in row.iter().enumerate() {
                let Some(v) = v else { continue };
                let x0 = gi as f64 + 0.1 + ci as f64 * width;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.9, *v)],
                        colour(contenders[ci]).filled(),
                    )))
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
    }

    // The legend: a swatch per contender, labelled when there is a font.
    let step = 1400 / contenders.len().max(1) as i32;
    for (i, key) in contenders.iter().enumerate() {
        let x = 20 + i as i32 * step;
        legend
            .draw(&Rectangle::new(
                [(x, 20), (x + 24, 40)],
                colour(key).filled(),
            ))
            .map_err(|e| anyhow!("{e}"))?;
        if with_text {
            let label = report
                .contenders
                .iter()
                .find(|c| c.key == *key)
                .map_or(*key, |c| c.key.as_str());
            legend
                .draw(&Text::new(label.to_owned(), (x + 32, 22), (FONT, 16)))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    if with_text {
        Ok(String::new())
    } else {
        let legend: Vec<String> = contenders
            .iter()
            .map(|k| {
                let c = colour(k);
                format!("{k} = rgb({}, {}, {})", c.0, c.1, c.2)
            })
            .collect();
        Ok(format!(
            "The chart has no text (no DejaVu Sans font file found): left, relayed kpps at max per \
             (allocations, payload) group, in the order of the traffic line above; right, relay \
             CPU µs per packet at max. Bars left to right: {}.",
            legend.join(", ")
        ))
    }
}
