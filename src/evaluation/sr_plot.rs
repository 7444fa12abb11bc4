//! `sr_vs_eps.png`: the adaptive report's SR@5 against the L-infinity budget, one line per
//! attack (best adaptive thick, oblivious PGD dashed-grey for contrast).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::evaluation::adaptive::{AdaptiveReport, BEST, OBLIVIOUS};

pub fn draw_sr_vs_eps(path: &Path, report: &AdaptiveReport) -> Result<()> {
    let fail = |e: String| Error::io(path, std::io::Error::other(e));
    let linf: Vec<_> = report.budgets.iter().filter(|b| b.norm == "linf").collect();
    let max_eps = linf.iter().map(|b| b.eps).fold(0.0, f64::max).max(1e-3);
    let root = BitMapBackend::new(path, (900, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let with_text = crate::preview::fonts_available();
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20).x_label_area_size(45).y_label_area_size(55);
    if with_text {
        builder.caption("Adaptive attacks: SR@5 (misclassified and not flagged)", ("sans-serif", 22));
    }
    let mut chart = builder.build_cartesian_2d(0f64..max_eps * 1.05, 0f64..1.02f64).map_err(|e| fail(e.to_string()))?;
    let mut mesh = chart.configure_mesh();
    if with_text {
        mesh.x_desc("L-inf eps").y_desc("SR@5");
    } else {
        mesh.disable_x_mesh().disable_y_mesh().x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| fail(e.to_string()))?;
    let names: Vec<String> = linf.first().map(|b| b.results.iter().map(|r| r.attack.clone()).collect()).unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        let points: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
            .chain(linf.iter().filter_map(|b| b.results.iter().find(|r| &r.attack == name).map(|r| (b.eps, r.sr_at_5))))
            .collect();
        let colour = match name.as_str() {
            BEST => BLACK.to_rgba(),
            OBLIVIOUS => RGBColor(150, 150, 150).to_rgba(),
            _ => Palette99::pick(i).to_rgba(),
        };
        let style = ShapeStyle::from(colour).stroke_width(if name == BEST { 4 } else { 2 });
        let series = chart
            .draw_series(LineSeries::new(points.iter().copied(), style).point_size(3))
            .map_err(|e| fail(e.to_string()))?;
        if with_text {
            series.label(name.clone()).legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        }
    }
    if with_text {
        crate::evaluation::roc_plot::draw_legend(&mut chart).map_err(fail)?;
    }
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}
