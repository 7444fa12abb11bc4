//! User images: PNG and JPEG files and NPY arrays, turned into model input `[N, C, S, S]`
//! float32 in [0, 1] for a model's [`InputSpec`] (see the pixel convention in [`crate::data`]).

use std::path::Path;

use tch::Tensor;

use super::preprocess::{InputSpec, Resize};
use crate::error::{Error, Result};

fn image_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Image { path: path.into(), reason: reason.into() }
}

/// Reads PNG, JPEG or NPY files (by extension) and stacks them into one batch for `spec`.
pub fn read_images(paths: &[impl AsRef<Path>], spec: &InputSpec) -> Result<Tensor> {
    let mut batches = Vec::with_capacity(paths.len());
    for path in paths {
        let path = path.as_ref();
        batches.push(match image_kind(path) {
            Some(ImageKind::Encoded) => read_encoded(path, spec)?,
            Some(ImageKind::Npy) => read_npy(path, spec)?,
            None => return Err(image_error(path, "unknown extension: expected .png, .jpg, .jpeg or .npy")),
        });
    }
    if batches.is_empty() {
        return Err(Error::InvalidInput("no images given".into()));
    }
    Ok(Tensor::cat(&batches, 0))
}

/// How a user image file is read, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// PNG or JPEG: one image, decoded by [`decode_image`].
    Encoded,
    /// An NPY array of one or more images.
    Npy,
}

/// The kind of `path` by its extension (case-insensitive), or None for other files.
pub fn image_kind(path: &Path) -> Option<ImageKind> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "png" | "jpg" | "jpeg" => Some(ImageKind::Encoded),
        "npy" => Some(ImageKind::Npy),
        _ => None,
    }
}

/// Reads a PNG or JPEG file (the rules of [`decode_image`]) as `[1, C, S, S]`.
pub fn read_encoded(path: &Path, spec: &InputSpec) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let values = decode_image(&bytes, spec).map_err(|reason| image_error(path, reason))?;
    let [c, h, w] = spec.image_shape();
    Ok(Tensor::from_slice(&values).view([1, c, h, w]))
}

/// Most memory the decoder may allocate for one image of the model's own size: a 224x224
/// RGBA image needs 200 KB, so this only ever stops hostile files (headers that claim
/// gigapixels, oversized metadata).
const DECODER_MAX_ALLOC: u64 = 4 << 20;
/// The same for models that resize what they get (a 2048x2048 RGBA image).
const RESIZING_DECODER_MAX_ALLOC: u64 = 16 << 20;
/// Largest side a resizing model accepts.
const RESIZING_MAX_SIDE: u32 = 2048;

/// Decodes PNG or JPEG bytes into the `C x S x S` values in [0, 1] that `spec` asks for, or
/// says why it cannot.
///
/// The bytes are untrusted (they come straight from the network in the service), so the size
/// in the header is checked before any pixel is decoded, the decoder's allocations are capped,
/// and a panic inside the decoder becomes an error: no file can make the process allocate
/// what its header claims, or take it down.
///
/// 8-bit images (grey, grey+alpha, RGB, RGBA, palette; lower PNG bit depths are expanded).
/// For a grey model colour is converted with the ITU-R BT.601 luma weights; for a colour
/// model grey is repeated; alpha is ignored. An image of another size is an error unless the
/// model's rule resizes (shorter side, centre crop), because silent resampling changes what
/// the model sees.
pub fn decode_image(bytes: &[u8], spec: &InputSpec) -> std::result::Result<Vec<f32>, String> {
    match std::panic::catch_unwind(|| decode_checked(bytes, spec)) {
        Ok(result) => result,
        Err(_) => Err("corrupted image data (the decoder rejected it)".into()),
    }
}

fn decode_checked(bytes: &[u8], spec: &InputSpec) -> std::result::Result<Vec<f32>, String> {
    use image::{DynamicImage, ImageDecoder, ImageFormat};
    let format = image::guess_format(bytes)
        .map_err(|_| "not a readable image: neither PNG nor JPEG (unrecognised signature)".to_string())?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg) {
        return Err(format!("{format:?} images are not supported; send PNG or JPEG"));
    }
    let resizing = spec.resize != Resize::Refuse;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(if resizing { RESIZING_DECODER_MAX_ALLOC } else { DECODER_MAX_ALLOC });
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| format!("not a readable {format:?} image: {e}"))?;
    // The header's size, before any pixel is decoded.
    let (width, height) = decoder.dimensions();
    let side = spec.size as u32;
    if !resizing && (width, height) != (side, side) {
        return Err(format!("image is {width}x{height} pixels; the model expects {side}x{side} (resize it first)"));
    }
    if width == 0 || height == 0 || width.max(height) > RESIZING_MAX_SIDE {
        return Err(format!("image is {width}x{height} pixels; the model resizes images of 1 to {RESIZING_MAX_SIDE} pixels a side"));
    }
    let color = decoder.color_type();
    let bits = 8 * color.bytes_per_pixel() / color.channel_count().max(1);
    if bits != 8 {
        return Err(format!(
            "{color:?} pixels ({bits} bits per channel); only 8-bit images (or lower PNG depths) are supported"
        ));
    }
    let image = DynamicImage::from_decoder(decoder).map_err(|e| format!("corrupted {format:?} data: {e}"))?;
    let luma = |r: u8, g: u8, b: u8| 0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32;
    let values: Vec<f32> = match (spec.channels, &image) {
        (1, DynamicImage::ImageLuma8(img)) => img.as_raw().iter().map(|&v| v as f32).collect(),
        (1, DynamicImage::ImageLumaA8(img)) => img.as_raw().chunks_exact(2).map(|px| px[0] as f32).collect(),
        (1, DynamicImage::ImageRgb8(img)) => img.as_raw().chunks_exact(3).map(|px| luma(px[0], px[1], px[2])).collect(),
        (1, DynamicImage::ImageRgba8(img)) => img.as_raw().chunks_exact(4).map(|px| luma(px[0], px[1], px[2])).collect(),
        (3, DynamicImage::ImageLuma8(_) | DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_)) => {
            // HWC -> CHW.
            let rgb = image.to_rgb8();
            let plane = (width * height) as usize;
            let raw = rgb.as_raw();
            (0..3).flat_map(|c| (0..plane).map(move |p| raw[p * 3 + c] as f32)).collect()
        }
        (c, _) if c != 1 && c != 3 => return Err(format!("the model takes {c} channels; PNG and JPEG give 1 or 3")),
        (_, other) => return Err(format!("{:?} pixels are not supported; send 8-bit grey or colour", other.color())),
    };
    let values: Vec<f32> = values.into_iter().map(|v| v / 255.0).collect();
    if (width, height) == (side, side) {
        return Ok(values);
    }
    let own = Tensor::from_slice(&values).view([1, spec.channels, height as i64, width as i64]);
    let resized = spec.apply(&own)?;
    Vec::<f32>::try_from(resized.contiguous().view([-1])).map_err(|e| format!("resizing failed: {e}"))
}

/// Reads an NPY array of float32, float64 (values in [0, 1]) or uint8 (values in [0, 255])
/// of images of the model's size: `[S, S]` or `[N, S, S]` for a grey model, `[N, C, S, S]`
/// for any; as `[N, C, S, S]` float32.
pub fn read_npy(path: &Path, spec: &InputSpec) -> Result<Tensor> {
    let (shape, values) = read_npy_values(path)?;
    let [c, side, _] = spec.image_shape();
    let (c, side) = (c as usize, side as usize);
    let n = match shape.as_slice() {
        [h, w] if c == 1 && (*h, *w) == (side, side) => 1,
        [n, h, w] if c == 1 && (*h, *w) == (side, side) => *n,
        [n, ch, h, w] if (*ch, *h, *w) == (c, side, side) => *n,
        _ => {
            let expected = if c == 1 {
                format!("[{side}, {side}], [N, {side}, {side}] or [N, 1, {side}, {side}]")
            } else {
                format!("[N, {c}, {side}, {side}]")
            };
            return Err(image_error(path, format!("array shape {shape:?}; the model takes {expected}")));
        }
    };
    if n == 0 {
        return Err(image_error(path, "array holds no images (N = 0)"));
    }
    Ok(Tensor::from_slice(&values).view([n as i64, c as i64, side as i64, side as i64]))
}

/// Reads an NPY array `[N, C, H, W]` as it is (an attack or corruption set pathguard wrote).
pub fn read_npy_batch(path: &Path) -> Result<Tensor> {
    let (shape, values) = read_npy_values(path)?;
    match shape[..] {
        [n, c, h, w] => Ok(Tensor::from_slice(&values).view([n as i64, c as i64, h as i64, w as i64])),
        _ => Err(image_error(path, format!("array shape {shape:?}; expected [N, C, H, W]"))),
    }
}

fn read_npy_values(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    npy_values(&bytes).map_err(|reason| image_error(path, reason))
}

/// The shape and values (as pixels in [0, 1]) of an NPY file's bytes: float32, float64 (values
/// in [0, 1]) or uint8 (0-255).
///
/// The array is viewed in place, which checks the shape in the header against the bytes that
/// are really there before anything is allocated: a tiny file whose header claims a huge array
/// is an error, not an allocation of what it claims.
pub fn npy_values(bytes: &[u8]) -> std::result::Result<(Vec<usize>, Vec<f32>), String> {
    use ndarray::ArrayViewD;
    use ndarray_npy::{ViewNpyError, ViewNpyExt};
    // The view needs the data aligned for its element type; a u64 buffer aligns it for all.
    let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
    let buffer = &mut bytemuck_bytes(&mut aligned)[..bytes.len()];
    buffer.copy_from_slice(bytes);
    let buffer = &*buffer;
    let explain = |e: ViewNpyError| match e {
        ViewNpyError::NonNativeEndian => {
            "big-endian NPY array; save it little-endian (numpy: a.astype(a.dtype.newbyteorder('<')))".to_string()
        }
        e => format!("not a readable NPY file: {e}"),
    };
    let check_range = |values: Vec<f32>| match values.iter().position(|v| !(0.0..=1.0).contains(v)) {
        Some(i) => Err(format!(
            "value {} at flat index {i} is outside [0, 1] (floating-point pixels must be in [0, 1]; uint8 \
             arrays may use 0-255)",
            values[i]
        )),
        None => Ok(values),
    };
    match ArrayViewD::<f32>::view_npy(buffer) {
        Ok(a) => return Ok((a.shape().to_vec(), check_range(a.iter().copied().collect())?)),
        Err(ViewNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(explain(e)),
    }
    match ArrayViewD::<f64>::view_npy(buffer) {
        Ok(a) => return Ok((a.shape().to_vec(), check_range(a.iter().map(|&v| v as f32).collect())?)),
        Err(ViewNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(explain(e)),
    }
    match ArrayViewD::<u8>::view_npy(buffer) {
        Ok(a) => Ok((a.shape().to_vec(), a.iter().map(|&v| v as f32 / 255.0).collect())),
        Err(ViewNpyError::WrongDescriptor(d)) => Err(format!("unsupported dtype {d}; use float32, float64 or uint8")),
        Err(e) => Err(explain(e)),
    }
}

/// The bytes of a u64 buffer.
fn bytemuck_bytes(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirements and the length covers exactly the
    // words' memory, which stays borrowed for the returned lifetime.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

/// Reads a 1-D int64 NPY array (labels, indices of an attack set) as a tensor.
pub fn read_npy_i64(path: &Path) -> Result<Tensor> {
    let array = ndarray_npy::read_npy::<_, ndarray::Array1<i64>>(path)
        .map_err(|e| image_error(path, format!("not a 1-D int64 NPY array: {e}")))?;
    Ok(Tensor::from_slice(array.as_slice().expect("standard layout")))
}
