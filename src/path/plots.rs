//! PNG pictures of paths: heatmaps (class x filter open frequencies, class x class
//! similarity) and the explanation sheet of one image.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

fn draw_error(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |e| Error::io(path, std::io::Error::other(e))
}

/// Grey level of a value in [0, 1]: 1 = black.
fn grey(v: f64) -> RGBColor {
    let g = (255.0 * (1.0 - v.clamp(0.0, 1.0))) as u8;
    RGBColor(g, g, g)
}

/// A heatmap of `values[row][col]` in [0, 1] with row labels (and column labels if given).
pub fn heatmap(path: &Path, title: &str, rows: &[String], columns: Option<&[String]>, values: &[Vec<f64>]) -> Result<()> {
    let fail = draw_error(path);
    let n_cols = values.first().map(|r| r.len()).unwrap_or(0).max(1) as u32;
    let cell = (1200 / n_cols).clamp(4, 48);
    let (left, top, bottom) = (130u32, 40u32, if columns.is_some() { 110 } else { 30 });
    let width = left + n_cols * cell + 20;
    let height = top + rows.len() as u32 * cell.max(18) + bottom;
    let row_h = cell.max(18);
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let text = crate::preview::fonts_available();
    if text {
        root.draw(&Text::new(title.to_string(), (10, 10), ("sans-serif", 18))).map_err(|e| fail(e.to_string()))?;
    }
    for (r, row) in values.iter().enumerate() {
        let y = top + r as u32 * row_h;
        if text {
            root.draw(&Text::new(rows[r].clone(), (5, y as i32 + 2), ("sans-serif", 14))).map_err(|e| fail(e.to_string()))?;
        }
        for (c, &v) in row.iter().enumerate() {
            let x = left + c as u32 * cell;
            root.draw(&Rectangle::new([(x as i32, y as i32), ((x + cell) as i32, (y + row_h) as i32)], grey(v).filled()))
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    if let (Some(columns), true) = (columns, text) {
        let y = top + values.len() as u32 * row_h + 5;
        for (c, label) in columns.iter().enumerate() {
            let x = left + c as u32 * cell + 2;
            let style = TextStyle::from(("sans-serif", 13).into_font()).transform(FontTransform::Rotate90);
            root.draw(&Text::new(label.clone(), (x as i32 + 12, y as i32), style)).map_err(|e| fail(e.to_string()))?;
        }
    }
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// What the explanation sheet of one image shows.
pub struct ExplanationSheet<'a> {
    pub title: String,
    /// The image, `[C, H, W]` in [0, 1].
    pub image: &'a tch::Tensor,
    /// The path, per gated layer, 0/1 per filter.
    pub path: Vec<Vec<u8>>,
    /// The predicted class's template, per gated layer, open frequency per filter.
    pub template: Vec<Vec<f64>>,
}

/// The image, its path as a layers x filters grid (black = open), and the predicted class's
/// template beside it (grey = open frequency).
pub fn explanation_sheet(path: &Path, sheet: &ExplanationSheet) -> Result<()> {
    let fail = draw_error(path);
    let side = sheet.image.size()[1].max(sheet.image.size()[2]).max(1) as u32;
    let scale = (168 / side).max(1);
    let shown = side * scale;
    let widest = sheet.path.iter().map(|l| l.len()).max().unwrap_or(1) as u32;
    let (cell, row) = (3u32, 14u32);
    let grid_w = widest * cell;
    let grid_h = sheet.path.len() as u32 * row;
    let width = shown + 2 * grid_w + 80;
    let height = shown.max(grid_h + 40) + 50;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let text = crate::preview::fonts_available();
    let top = 40i32;
    if text {
        root.draw(&Text::new(sheet.title.clone(), (10, 10), ("sans-serif", 16))).map_err(|e| fail(e.to_string()))?;
    }
    crate::preview::draw_image(&root, sheet.image, (10, top as u32), scale).map_err(&fail)?;
    let grids = [(&sheet.path.iter().map(|l| l.iter().map(|&b| b as f64).collect()).collect::<Vec<Vec<f64>>>(), "path"), (&sheet.template, "class template")];
    for (g, (grid, label)) in grids.iter().enumerate() {
        let left = shown + 30 + g as u32 * (grid_w + 20);
        if text {
            root.draw(&Text::new(label.to_string(), (left as i32, top - 16), ("sans-serif", 13))).map_err(|e| fail(e.to_string()))?;
        }
        for (l, layer) in grid.iter().enumerate() {
            let y = top as u32 + l as u32 * row;
            root.draw(&Rectangle::new(
                [(left as i32 - 1, y as i32 - 1), ((left + layer.len() as u32 * cell) as i32 + 1, (y + row - 3) as i32 + 1)],
                RGBColor(200, 200, 200),
            ))
            .map_err(|e| fail(e.to_string()))?;
            for (f, &v) in layer.iter().enumerate() {
                let x = left + f as u32 * cell;
                root.draw(&Rectangle::new([(x as i32, y as i32), ((x + cell) as i32, (y + row - 3) as i32)], grey(v).filled()))
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
    }
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}
