//! Contact sheets of attack and corruption sets: clean | altered | amplified change, with labels.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// What a contact sheet shows: clean images with their true labels, their altered versions
/// (adversarial or corrupted) with the model's predictions.
pub struct SheetColumns<'a> {
    pub clean: &'a Tensor,
    pub altered: &'a Tensor,
    pub labels: &'a Tensor,
    pub predictions: &'a Tensor,
    /// Title of the altered row ("adversarial", "corrupted").
    pub altered_title: &'a str,
}

/// Debian's fonts-dejavu-core (installed by `make`); without it the sheet has no captions.
const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub(crate) fn fonts_available() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| match std::fs::read(FONT_PATH) {
        Ok(bytes) => {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        }
        Err(_) => false,
    })
}

/// Side of one image's cell in pixels (images are drawn at the largest whole scale that fits).
const CELL: u32 = 84;
const GAP: u32 = 10;
const CAPTION: u32 = 18;
const ROW_TITLE: u32 = 110;

/// Writes a PNG with the first `max_images` images as columns and three rows: the clean image
/// with its true label, the altered image with the model's prediction, and the change
/// amplified to the full grey range (mid-grey = unchanged).
pub fn contact_sheet(path: &Path, outcome: &SheetColumns, class_names: &[String], max_images: usize) -> Result<()> {
    let n = (outcome.clean.size()[0] as usize).min(max_images).max(1);
    let width = ROW_TITLE + n as u32 * (CELL + GAP) + GAP;
    let height = 3 * (CELL + CAPTION + GAP) + GAP;
    let draw_error = |e: String| Error::io(path, std::io::Error::other(e));
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_error(e.to_string()))?;
    let with_text = fonts_available();
    let font = ("sans-serif", 13).into_font().color(&BLACK);
    let name = |i: i64| class_names.get(i as usize).cloned().unwrap_or_else(|| i.to_string());
    let delta = outcome.altered - outcome.clean;
    let rows: [(&str, Tensor); 3] = [
        ("clean", outcome.clean.shallow_clone()),
        (outcome.altered_title, outcome.altered.shallow_clone()),
        ("change", amplify(&delta)),
    ];
    for (r, (title, images)) in rows.iter().enumerate() {
        let top = GAP + r as u32 * (CELL + CAPTION + GAP);
        if with_text {
            root.draw_text(title, &font, (8, (top + CELL / 2) as i32)).map_err(|e| draw_error(e.to_string()))?;
        }
        for i in 0..n {
            let left = ROW_TITLE + i as u32 * (CELL + GAP);
            let image = images.get(i as i64);
            let scale = (CELL / image.size()[2].max(image.size()[1]).max(1) as u32).max(1);
            draw_image(&root, &image, (left, top), scale).map_err(|e| draw_error(e.to_string()))?;
            if with_text {
                let caption = match r {
                    0 => name(outcome.labels.int64_value(&[i as i64])),
                    1 => format!("-> {}", name(outcome.predictions.int64_value(&[i as i64]))),
                    _ => format!("Linf {:.3}", delta.get(i as i64).abs().max().double_value(&[])),
                };
                root.draw_text(&caption, &font, (left as i32, (top + CELL + 2) as i32))
                    .map_err(|e| draw_error(e.to_string()))?;
            }
        }
    }
    root.present().map_err(|e| draw_error(e.to_string()))
}

/// Draws `image` (`[C, H, W]` in [0, 1]; grey or RGB) with its top-left corner at `at`, each
/// pixel a `scale` x `scale` square.
pub(crate) fn draw_image<DB: plotters::prelude::DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    image: &Tensor,
    at: (u32, u32),
    scale: u32,
) -> std::result::Result<(), String> {
    let size = image.size();
    let (c, h, w) = (size[0] as usize, size[1] as usize, size[2] as usize);
    let values = Vec::<f32>::try_from(image.to_kind(Kind::Float).contiguous().flatten(0, -1)).map_err(|e| e.to_string())?;
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    for y in 0..h {
        for x in 0..w {
            let at_channel = |ch: usize| byte(values[(ch.min(c - 1) * h + y) * w + x]);
            let colour = if c >= 3 { RGBColor(at_channel(0), at_channel(1), at_channel(2)) } else { RGBColor(at_channel(0), at_channel(0), at_channel(0)) };
            let (px, py) = (at.0 + x as u32 * scale, at.1 + y as u32 * scale);
            area.draw(&Rectangle::new([(px as i32, py as i32), ((px + scale) as i32, (py + scale) as i32)], colour.filled()))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Maps each perturbation to [0, 1] around 0.5, scaled by its own largest magnitude.
fn amplify(delta: &Tensor) -> Tensor {
    let n = delta.size()[0];
    let scale = delta.flatten(1, -1).abs().amax([1i64].as_slice(), false).clamp_min(1e-12).view([n, 1, 1, 1]);
    (delta / scale * 0.5 + 0.5).clamp(0.0, 1.0)
}
