//! User images: PNG files and NPY arrays, turned into model input `[N, 1, 28, 28]`
//! float32 in [0, 1] (see the pixel convention in [`crate::data`]).

use std::path::Path;

use ndarray::ArrayD;
use ndarray_npy::ReadNpyError;
use tch::Tensor;

use super::fashion_mnist::IMAGE_SIZE;
use crate::error::{Error, Result};

fn image_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Image { path: path.into(), reason: reason.into() }
}

/// Reads PNG or NPY files (by extension) and stacks them into one batch.
pub fn read_images(paths: &[impl AsRef<Path>]) -> Result<Tensor> {
    let mut batches = Vec::with_capacity(paths.len());
    for path in paths {
        let path = path.as_ref();
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        batches.push(match ext.as_deref() {
            Some("png") => read_png(path)?,
            Some("npy") => read_npy(path)?,
            _ => return Err(image_error(path, "unknown extension: expected .png or .npy")),
        });
    }
    if batches.is_empty() {
        return Err(Error::InvalidInput("no images given".into()));
    }
    Ok(Tensor::cat(&batches, 0))
}

/// Reads an 8-bit PNG (grey, grey+alpha, RGB, RGBA or palette; lower bit depths are expanded)
/// of exactly 28x28 pixels as `[1, 1, 28, 28]`. Colour is converted to grey with the
/// ITU-R BT.601 luma weights; alpha is ignored. Images are not resized: a different size is
/// an error, because silent resampling changes what the model sees.
pub fn read_png(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let grey = decode_png(&bytes).map_err(|reason| image_error(path, reason))?;
    let side = IMAGE_SIZE as i64;
    Ok(Tensor::from_slice(&grey).view([1, 1, side, side]))
}

/// Decodes PNG bytes (the rules of [`read_png`]) into 28 x 28 grey values in [0, 1], or says
/// why it cannot.
pub fn decode_png(bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| format!("not a readable PNG: {e}"))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| format!("corrupted PNG data: {e}"))?;
    if info.bit_depth != png::BitDepth::Eight {
        return Err(format!("{:?}-bit PNG; only 8-bit (or lower) images are supported", info.bit_depth));
    }
    if (info.width as usize, info.height as usize) != (IMAGE_SIZE, IMAGE_SIZE) {
        return Err(format!(
            "image is {}x{} pixels; the model expects {IMAGE_SIZE}x{IMAGE_SIZE} (resize it first)",
            info.width, info.height
        ));
    }
    let bytes = &buf[..info.buffer_size()];
    let channels = info.color_type.samples();
    Ok(bytes
        .chunks_exact(channels)
        .map(|px| match channels {
            1 | 2 => px[0] as f32,
            _ => 0.299 * px[0] as f32 + 0.587 * px[1] as f32 + 0.114 * px[2] as f32,
        } / 255.0)
        .collect())
}

/// Reads an NPY array of float32, float64 (values in [0, 1]) or uint8 (values in [0, 255])
/// with shape `[28, 28]`, `[N, 28, 28]` or `[N, 1, 28, 28]`, as `[N, 1, 28, 28]` float32.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let (shape, values) = read_npy_values(path)?;
    let side = IMAGE_SIZE;
    let n = match shape.as_slice() {
        [h, w] if (*h, *w) == (side, side) => 1,
        [n, h, w] if (*h, *w) == (side, side) => *n,
        [n, 1, h, w] if (*h, *w) == (side, side) => *n,
        _ => {
            return Err(image_error(
                path,
                format!("array shape {shape:?}; expected [28, 28], [N, 28, 28] or [N, 1, 28, 28]"),
            ))
        }
    };
    if n == 0 {
        return Err(image_error(path, "array holds no images (N = 0)"));
    }
    let side = side as i64;
    Ok(Tensor::from_slice(&values).view([n as i64, 1, side, side]))
}

fn read_npy_values(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let open_error = |e: ReadNpyError| image_error(path, format!("not a readable NPY file: {e}"));
    let check_range = |values: &[f32]| -> Result<()> {
        match values.iter().position(|v| !(0.0..=1.0).contains(v)) {
            Some(i) => Err(image_error(
                path,
                format!(
                    "value {} at flat index {i} is outside [0, 1] (floating-point pixels must be \
                     in [0, 1]; uint8 arrays may use 0-255)",
                    values[i]
                ),
            )),
            None => Ok(()),
        }
    };
    match ndarray_npy::read_npy::<_, ArrayD<f32>>(path) {
        Ok(a) => {
            let shape = a.shape().to_vec();
            let values: Vec<f32> = a.iter().copied().collect();
            check_range(&values)?;
            return Ok((shape, values));
        }
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(open_error(e)),
    }
    match ndarray_npy::read_npy::<_, ArrayD<f64>>(path) {
        Ok(a) => {
            let shape = a.shape().to_vec();
            let values: Vec<f32> = a.iter().map(|&v| v as f32).collect();
            check_range(&values)?;
            return Ok((shape, values));
        }
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(open_error(e)),
    }
    match ndarray_npy::read_npy::<_, ArrayD<u8>>(path) {
        Ok(a) => Ok((a.shape().to_vec(), a.iter().map(|&v| v as f32 / 255.0).collect())),
        Err(ReadNpyError::WrongDescriptor(d)) => Err(image_error(
            path,
            format!("unsupported dtype {d}; use float32, float64 or uint8"),
        )),
        Err(e) => Err(open_error(e)),
    }
}

/// Reads a 1-D int64 NPY array (labels, indices of an attack set) as a tensor.
pub fn read_npy_i64(path: &Path) -> Result<Tensor> {
    let array = ndarray_npy::read_npy::<_, ndarray::Array1<i64>>(path)
        .map_err(|e| image_error(path, format!("not a 1-D int64 NPY array: {e}")))?;
    Ok(Tensor::from_slice(array.as_slice().expect("standard layout")))
}
