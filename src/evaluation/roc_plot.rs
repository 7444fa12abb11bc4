//! `roc.png`: one ROC curve per detector on one attack.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// Draws `curves` (name, AUROC, points (fpr, tpr)) into a PNG at `path`.
pub fn draw_roc(path: &Path, title: &str, curves: &[(String, f64, Vec<(f64, f64)>)]) -> Result<()> {
    let fail = |e: String| Error::io(path, std::io::Error::other(e));
    let root = BitMapBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let with_text = crate::preview::fonts_available();
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20).x_label_area_size(45).y_label_area_size(55);
    if with_text {
        builder.caption(title, ("sans-serif", 22));
    }
    let mut chart = builder.build_cartesian_2d(0f64..1f64, 0f64..1f64).map_err(|e| fail(e.to_string()))?;
    let mut mesh = chart.configure_mesh();
    if with_text {
        mesh.x_desc("false-positive rate (clean flagged)").y_desc("true-positive rate (adversarial flagged)");
    } else {
        mesh.disable_x_mesh().disable_y_mesh().x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| fail(e.to_string()))?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
        .map_err(|e| fail(e.to_string()))?;
    for (i, (name, auroc, points)) in curves.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let style = ShapeStyle::from(colour).stroke_width(if i == 0 { 3 } else { 2 });
        let series = chart
            .draw_series(LineSeries::new(points.iter().copied(), style))
            .map_err(|e| fail(e.to_string()))?;
        if with_text {
            let label = format!("{name}: AUROC {auroc:.3}");
            series.label(label).legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        }
    }
    if with_text {
        draw_legend(&mut chart).map_err(fail)?;
    }
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// The series labels in the lower right corner, as every line chart of ours has them.
pub(crate) fn draw_legend<'a>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>,
) -> std::result::Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())
}
