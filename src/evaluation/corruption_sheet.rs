//! `corruptions.png`: one image under every corruption (rows) and severity (columns), each
//! cell captioned with the flag rate and accuracy of that corruption over the whole report.

use std::path::Path;

use plotters::prelude::*;
use tch::{Kind, Tensor};

use crate::corruptions::CORRUPTIONS;
use crate::error::{Error, Result};
use crate::evaluation::corruptions::CorruptionReport;

const SCALE: u32 = 3;
const GAP: u32 = 12;
const CAPTION: u32 = 32;
const ROW_TITLE: u32 = 120;

/// `example`: one image `[C, H, W]` (grey images are drawn as grey, RGB as colour).
pub fn draw(path: &Path, report: &CorruptionReport, example: &Tensor) -> Result<()> {
    let fail = |e: String| Error::io(path, std::io::Error::other(e));
    let size = example.size();
    let (channels, h, w) = (size[0], size[1] as u32, size[2] as u32);
    let (cell_w, cell_h) = (w * SCALE, h * SCALE);
    let columns = 1 + CORRUPTIONS.iter().map(|c| c.levels.len()).max().unwrap_or(0) as u32;
    let width = ROW_TITLE + columns * (cell_w + GAP) + GAP;
    let height = CORRUPTIONS.len() as u32 * (cell_h + CAPTION + GAP) + GAP;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let with_text = crate::preview::fonts_available();
    let font = ("sans-serif", 12).into_font().color(&BLACK);
    let alarm = ("sans-serif", 12).into_font().color(&RED);
    let x = example.unsqueeze(0).to_kind(Kind::Float);
    for (r, corruption) in CORRUPTIONS.iter().enumerate() {
        let top = GAP + r as u32 * (cell_h + CAPTION + GAP);
        if with_text {
            root.draw_text(corruption.name, &font, (6, (top + cell_h / 2) as i32)).map_err(|e| fail(e.to_string()))?;
        }
        for column in 0..=corruption.levels.len() {
            let image = if column == 0 { x.shallow_clone() } else { corruption.apply(&x, column, report.seed)? };
            let left = ROW_TITLE + column as u32 * (cell_w + GAP);
            let pixels = Vec::<f32>::try_from(image.get(0).permute([1, 2, 0]).contiguous().flatten(0, -1))?;
            for py in 0..h {
                for px in 0..w {
                    let at = ((py * w + px) * channels as u32) as usize;
                    let v = |c: usize| (pixels[at + c.min(channels as usize - 1)].clamp(0.0, 1.0) * 255.0).round() as u8;
                    let colour = RGBColor(v(0), v(1), v(2));
                    let (x0, y0) = ((left + px * SCALE) as i32, (top + py * SCALE) as i32);
                    root.draw(&Rectangle::new([(x0, y0), (x0 + SCALE as i32, y0 + SCALE as i32)], colour.filled()))
                        .map_err(|e| fail(e.to_string()))?;
                }
            }
            if !with_text {
                continue;
            }
            let (line1, line2, over) = if column == 0 {
                ("clean".to_string(), format!("flag {:.0}%", 100.0 * report.clean.flag_rate), false)
            } else {
                let row = report.rows.iter().find(|x| x.corruption == corruption.name && x.severity == column);
                match row {
                    Some(x) => (
                        format!("s{column} acc {:.0}%", 100.0 * x.verdicts.accuracy),
                        format!("flag {:.0}%", 100.0 * x.verdicts.flag_rate),
                        x.verdicts.flag_rate > report.clean.flag_rate + 0.05,
                    ),
                    None => (format!("s{column}"), String::new(), false),
                }
            };
            let y = (top + cell_h + 2) as i32;
            root.draw_text(&line1, &font, (left as i32, y)).map_err(|e| fail(e.to_string()))?;
            root.draw_text(&line2, if over { &alarm } else { &font }, (left as i32, y + 14)).map_err(|e| fail(e.to_string()))?;
        }
    }
    root.present().map_err(|e| fail(e.to_string()))
}
