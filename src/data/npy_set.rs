//! A data set as NPY arrays: `train_images.npy`, `train_labels.npy`, `test_images.npy`,
//! `test_labels.npy`. Images are uint8 (0-255) or float32/float64 in [0, 1], shaped
//! `[N, H, W]` (grey), `[N, C, H, W]` or `[N, H, W, C]` with C = 1 or 3 (channels first when
//! the second axis is 1 or 3). Labels are integers (int64, int32 or uint8). Class names come
//! from `classes.txt` if present, else they are numbered.

use std::path::Path;

use ndarray::Array1;
use tch::Tensor;

use super::dataset::{check_labels, numbered_classes, read_class_file, Dataset, Split};
use super::image::npy_values;
use crate::error::{Error, Result};

/// Whether `dir` holds NPY arrays in this layout.
pub fn is_npy_dir(dir: &Path) -> bool {
    dir.join("train_images.npy").is_file()
}

pub fn load(dir: &Path, split: Split) -> Result<Dataset> {
    let image_path = dir.join(format!("{}_images.npy", split.name()));
    let label_path = dir.join(format!("{}_labels.npy", split.name()));
    let bad = |path: &Path, reason: String| Error::Dataset { path: path.into(), reason };
    let bytes = std::fs::read(&image_path).map_err(|e| Error::io(&image_path, e))?;
    let (shape, values) = npy_values(&bytes).map_err(|reason| bad(&image_path, reason))?;
    let (n, c, h, w, channels_last) = match shape[..] {
        [n, h, w] => (n, 1, h, w, false),
        [n, c, h, w] if c == 1 || c == 3 => (n, c, h, w, false),
        [n, h, w, c] if c == 1 || c == 3 => (n, c, h, w, true),
        _ => return Err(bad(&image_path, format!("array shape {shape:?}; expected [N, H, W], [N, C, H, W] or [N, H, W, C] with C = 1 or 3"))),
    };
    let labels = read_labels(&label_path)?;
    if labels.len() != n {
        return Err(bad(&label_path, format!("{} labels for {n} images", labels.len())));
    }
    let class_names = match read_class_file(dir)? {
        Some(names) => names,
        None => numbered_classes(labels.iter().copied().max().unwrap_or(0).max(1) as usize + 1),
    };
    check_labels(&label_path, &labels, class_names.len())?;
    let tensor = Tensor::from_slice(&values);
    let images = if channels_last {
        tensor.view([n as i64, h as i64, w as i64, c as i64]).permute([0, 3, 1, 2]).contiguous()
    } else {
        tensor.view([n as i64, c as i64, h as i64, w as i64])
    };
    Ok(Dataset { images, labels: Tensor::from_slice(&labels), class_names })
}

/// A 1-D integer array (int64, int32 or uint8) as i64.
fn read_labels(path: &Path) -> Result<Vec<i64>> {
    use ndarray_npy::{ReadNpyError, ReadNpyExt};
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: ReadNpyError| Error::Dataset { path: path.into(), reason: format!("labels must be a 1-D int64, int32 or uint8 NPY array: {e}") };
    match Array1::<i64>::read_npy(bytes.as_slice()) {
        Ok(a) => return Ok(a.to_vec()),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(bad(e)),
    }
    match Array1::<i32>::read_npy(bytes.as_slice()) {
        Ok(a) => return Ok(a.iter().map(|&v| v as i64).collect()),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(bad(e)),
    }
    Array1::<u8>::read_npy(bytes.as_slice()).map(|a| a.iter().map(|&v| v as i64).collect()).map_err(bad)
}
