use std::path::Path;

use ndarray::{Array, Array3};
use pathguard::data::image::{read_encoded, read_images, read_npy};
use pathguard::data::InputSpec;

const FASHION: InputSpec = InputSpec { channels: 1, size: 28, resize: pathguard::data::Resize::Refuse };

fn write_png(path: &Path, width: u32, height: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(color);
    encoder.set_depth(depth);
    encoder.write_header().unwrap().write_image_data(data).unwrap();
}

#[test]
fn grey_and_colour_png_become_one_channel_in_unit_range() {
    let dir = tempfile::tempdir().unwrap();
    let grey: Vec<u8> = (0..28 * 28).map(|i| (i % 256) as u8).collect();
    let grey_path = dir.path().join("grey.png");
    write_png(&grey_path, 28, 28, png::ColorType::Grayscale, png::BitDepth::Eight, &grey);
    let t = read_encoded(&grey_path, &FASHION).unwrap();
    assert_eq!(t.size(), vec![1, 1, 28, 28]);
    assert!((t.double_value(&[0, 0, 9, 3]) - 1.0).abs() < 1e-6);
    assert!((t.double_value(&[0, 0, 0, 1]) - 1.0 / 255.0).abs() < 1e-6);

    // Pure red RGB: luma 0.299.
    let rgb: Vec<u8> = (0..28 * 28).flat_map(|_| [255u8, 0, 0]).collect();
    let rgb_path = dir.path().join("red.png");
    write_png(&rgb_path, 28, 28, png::ColorType::Rgb, png::BitDepth::Eight, &rgb);
    let t = read_encoded(&rgb_path, &FASHION).unwrap();
    assert!((t.double_value(&[0, 0, 5, 5]) - 0.299).abs() < 1e-4);

    let batch = read_images(&[&grey_path, &rgb_path], &FASHION).unwrap();
    assert_eq!(batch.size(), vec![2, 1, 28, 28]);
}

#[test]
fn png_of_wrong_size_depth_or_content_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.png");
    write_png(&big, 32, 32, png::ColorType::Grayscale, png::BitDepth::Eight, &[0; 32 * 32]);
    let err = read_encoded(&big, &FASHION).unwrap_err().to_string();
    assert!(err.contains("32x32") && err.contains("28x28"), "{err}");

    let deep = dir.path().join("deep.png");
    write_png(&deep, 28, 28, png::ColorType::Grayscale, png::BitDepth::Sixteen, &[0; 28 * 28 * 2]);
    assert!(read_encoded(&deep, &FASHION).unwrap_err().to_string().contains("16 bits per channel"));

    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"definitely not a png").unwrap();
    assert!(read_encoded(&junk, &FASHION).unwrap_err().to_string().contains("not a readable image"));

    let other = dir.path().join("image.gif");
    std::fs::write(&other, b"x").unwrap();
    assert!(read_images(&[&other], &FASHION).unwrap_err().to_string().contains("expected .png, .jpg, .jpeg or .npy"));

    let truncated_jpeg = dir.path().join("cut.jpg");
    std::fs::write(&truncated_jpeg, &jpeg(&[128; 784])[..100]).unwrap();
    assert!(read_encoded(&truncated_jpeg, &FASHION).is_err());
}

fn jpeg(grey: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .encode(grey, 28, 28, image::ExtendedColorType::L8)
        .unwrap();
    out
}

#[test]
fn jpeg_files_are_read_like_png() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grey.JPEG");
    // A smooth gradient survives JPEG at quality 95 within a few grey levels.
    let grey: Vec<u8> = (0..28 * 28).map(|i| (i % 28 * 9) as u8).collect();
    std::fs::write(&path, jpeg(&grey)).unwrap();
    let t = read_images(&[&path], &FASHION).unwrap();
    assert_eq!(t.size(), vec![1, 1, 28, 28]);
    let values = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
    let worst = values.iter().zip(&grey).map(|(v, &g)| (v - g as f32 / 255.0).abs()).fold(0.0f32, f32::max);
    assert!(worst < 8.0 / 255.0, "worst difference {worst}");
}

#[test]
fn npy_arrays_of_several_dtypes_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = dir.path().join("batch.npy");
    let a: Array3<f32> = Array::from_shape_fn((3, 28, 28), |(n, _, _)| n as f32 / 4.0);
    ndarray_npy::write_npy(&f32_path, &a).unwrap();
    let t = read_npy(&f32_path, &FASHION).unwrap();
    assert_eq!(t.size(), vec![3, 1, 28, 28]);
    assert!((t.double_value(&[2, 0, 3, 3]) - 0.5).abs() < 1e-6);

    let u8_path = dir.path().join("one.npy");
    let b = Array::from_elem((28, 28), 255u8);
    ndarray_npy::write_npy(&u8_path, &b).unwrap();
    let t = read_npy(&u8_path, &FASHION).unwrap();
    assert_eq!(t.size(), vec![1, 1, 28, 28]);
    assert!((t.double_value(&[0, 0, 0, 0]) - 1.0).abs() < 1e-6);

    let nchw = dir.path().join("nchw.npy");
    ndarray_npy::write_npy(&nchw, &Array::from_elem((2, 1, 28, 28), 0.25f64)).unwrap();
    assert_eq!(read_npy(&nchw, &FASHION).unwrap().size(), vec![2, 1, 28, 28]);
}

#[test]
fn bad_npy_arrays_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let range = dir.path().join("range.npy");
    ndarray_npy::write_npy(&range, &Array::from_elem((28, 28), 3.0f32)).unwrap();
    let err = read_npy(&range, &FASHION).unwrap_err().to_string();
    assert!(err.contains("outside [0, 1]"), "{err}");

    let nan = dir.path().join("nan.npy");
    ndarray_npy::write_npy(&nan, &Array::from_elem((28, 28), f32::NAN)).unwrap();
    assert!(read_npy(&nan, &FASHION).unwrap_err().to_string().contains("outside [0, 1]"));

    let shape = dir.path().join("shape.npy");
    ndarray_npy::write_npy(&shape, &Array::from_elem((2, 3, 28, 28), 0.0f32)).unwrap();
    assert!(read_npy(&shape, &FASHION).unwrap_err().to_string().contains("array shape [2, 3, 28, 28]"));

    let dtype = dir.path().join("dtype.npy");
    ndarray_npy::write_npy(&dtype, &Array::from_elem((28, 28), 7i32)).unwrap();
    assert!(read_npy(&dtype, &FASHION).unwrap_err().to_string().contains("unsupported dtype"));
}
