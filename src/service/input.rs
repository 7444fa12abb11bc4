//! Validation of request images, in one place: every rule answers INVALID_ARGUMENT with a
//! message naming the field and the problem.

use tch::Tensor;
use tonic::Status;

use super::bounded;
use super::proto::{images::Source, DataType, Images};
use crate::data::image::decode_image;
use crate::data::InputSpec;

fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

/// Raw tensors up to this size are checked on the async thread: copying and checking a few
/// images takes microseconds, less than handing them to a blocking thread and back (which,
/// for one image, was a visible part of single-image latency).
const INLINE_TENSOR_BYTES: usize = 64 << 10;

/// [`decode_images`] on a blocking thread, at most one per core at a time: decoding and
/// checking up to a thousand images must not hold up the async runtime (health checks and
/// every other request run there), nor may a flood of requests decode on more threads than
/// there are cores. Small raw tensors (never encoded files) are checked in place.
pub async fn decode_images_blocking(images: Option<Images>, field: &'static str, max_images: usize, spec: InputSpec) -> Result<Tensor, Status> {
    if let Some(Images { source: Some(Source::Tensor(t)) }) = &images {
        if t.data.len() <= INLINE_TENSOR_BYTES {
            return decode_images(images.as_ref(), field, max_images, &spec);
        }
    }
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let permits = PERMITS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
    });
    let _permit = permits.acquire().await.map_err(|_| Status::unavailable("decoding is shut down"))?;
    tokio::task::spawn_blocking(move || decode_images(images.as_ref(), field, max_images, &spec))
        .await
        .unwrap_or_else(|_| Err(invalid(field, "the images could not be decoded (the decoder failed)")))
}

/// Decodes `images` into a `[N, C, S, S]` float32 CPU tensor for the model's `spec`, with
/// 1 <= N <= `max_images`.
pub fn decode_images(images: Option<&Images>, field: &str, max_images: usize, spec: &InputSpec) -> Result<Tensor, Status> {
    let source = images
        .and_then(|i| i.source.as_ref())
        .ok_or_else(|| invalid(field, "missing; give a tensor or encoded image files"))?;
    let (n, values) = match source {
        Source::Tensor(t) => {
            let field = format!("{field}.tensor");
            let dtype = DataType::try_from(t.dtype)
                .map_err(|_| invalid(&format!("{field}.dtype"), format!("unknown value {}", t.dtype)))?;
            let n = image_count(&t.shape, &format!("{field}.shape"), max_images, spec)?;
            let values = tensor_values(dtype, &t.data, n * spec.values_per_image(), &field)?;
            (n, values)
        }
        Source::Encoded(e) => {
            let field = format!("{field}.encoded.files");
            check_count(e.files.len(), &field, max_images)?;
            let mut values = Vec::with_capacity(e.files.len() * spec.values_per_image());
            for (i, file) in e.files.iter().enumerate() {
                values.extend(decode_image(file, spec).map_err(|problem| invalid(&format!("{field}[{i}]"), problem))?);
            }
            (e.files.len(), values)
        }
    };
    let [c, h, w] = spec.image_shape();
    Ok(Tensor::from_slice(&values).view([n as i64, c, h, w]))
}

fn check_count(n: usize, field: &str, max_images: usize) -> Result<(), Status> {
    if n == 0 {
        return Err(invalid(field, "empty batch; send at least one image"));
    }
    if n > max_images {
        return Err(invalid(field, format!("{n} images; the limit is {max_images} per request")));
    }
    Ok(())
}

/// N from a shape `[N, C, S, S]` (or `[N, S, S]` for a grey model).
fn image_count(shape: &[i64], field: &str, max_images: usize, spec: &InputSpec) -> Result<usize, Status> {
    let [channels, side, _] = spec.image_shape();
    let n = match shape {
        [n, c, h, w] if (*c, *h, *w) == (channels, side, side) => *n,
        [n, h, w] if channels == 1 && (*h, *w) == (side, side) => *n,
        _ => {
            let expected = match channels {
                1 => format!("[N, 1, {side}, {side}] or [N, {side}, {side}]"),
                c => format!("[N, {c}, {side}, {side}]"),
            };
            return Err(invalid(field, format!("{}; expected {expected}", bounded::shape(shape))));
        }
    };
    if n < 0 {
        return Err(invalid(field, format!("{} has a negative size", bounded::shape(shape))));
    }
    check_count(n as usize, field, max_images)?;
    Ok(n as usize)
}

fn tensor_values(dtype: DataType, data: &[u8], count: usize, field: &str) -> Result<Vec<f32>, Status> {
    let width = match dtype {
        DataType::Float32 => 4,
        DataType::Uint8 => 1,
        DataType::Unspecified => {
            return Err(invalid(&format!("{field}.dtype"), "unspecified; use DATA_TYPE_FLOAT32 or DATA_TYPE_UINT8"))
        }
    };
    if data.len() != count * width {
        return Err(invalid(
            &format!("{field}.data"),
            format!("{} bytes, but shape and dtype need {} ({count} values of {width} byte(s))", data.len(), count * width),
        ));
    }
    match dtype {
        DataType::Uint8 => Ok(data.iter().map(|&v| v as f32 / 255.0).collect()),
        _ => {
            let values: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            check_pixels(&values, &format!("{field}.data"))?;
            Ok(values)
        }
    }
}

/// Float pixels must be finite and in [0, 1].
pub fn check_pixels(values: &[f32], field: &str) -> Result<(), Status> {
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(invalid(field, format!("value {v} at flat index {i}; pixels must be finite")));
    }
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !(0.0..=1.0).contains(*v)) {
        return Err(invalid(field, format!("value {v} at flat index {i} is outside [0, 1] (float32 pixels are in [0, 1]; send uint8 for 0-255)")));
    }
    Ok(())
}

/// Float32 little-endian bytes of a tensor.
pub fn float32_bytes(t: &Tensor) -> Vec<u8> {
    let values = Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu).contiguous().view([-1]))
        .expect("float tensor");
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
