//! Property tests of every decoder that reads untrusted bytes: the image decoder (PNG, JPEG),
//! the NPY reader and the service's request validation. Each runs a bounded number of cases
//! (seeded mutations of valid and hostile inputs), and checks that the decoder answers, never
//! panics or aborts, and that its errors are short and name what was wrong.

use pathguard::data::image::{decode_image, npy_values};
use pathguard::data::{InputSpec, Resize};
use pathguard::service::bounded::MAX_MESSAGE_BYTES;
use pathguard::service::hostile::{giant_header_png, png_bomb, short_palette_png};
use pathguard::service::input::decode_images;
use pathguard::service::proto::{images::Source, DataType, EncodedImages, Images, Tensor};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: Some(Box::new(FileFailurePersistence::Off)), ..Config::default() }
}

fn png(width: u32, height: u32, color: png::ColorType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.write_header().unwrap().write_image_data(data).unwrap();
    out
}

fn jpeg(grey: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let (pixels, color) = if grey {
        ((0..784).map(|i| (i % 251) as u8).collect::<Vec<_>>(), image::ExtendedColorType::L8)
    } else {
        ((0..784 * 3).map(|i| (i % 253) as u8).collect(), image::ExtendedColorType::Rgb8)
    };
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode(&pixels, 28, 28, color).unwrap();
    out
}

/// Valid and hostile images to mutate.
fn image_seeds() -> Vec<Vec<u8>> {
    let grey: Vec<u8> = (0..784).map(|i| (i * 7 % 256) as u8).collect();
    let rgb: Vec<u8> = (0..784 * 3).map(|i| (i * 13 % 256) as u8).collect();
    vec![
        png(28, 28, png::ColorType::Grayscale, &grey),
        png(28, 28, png::ColorType::Rgb, &rgb),
        png(28, 28, png::ColorType::GrayscaleAlpha, &[9; 784 * 2]),
        short_palette_png(3),
        short_palette_png(2),
        giant_header_png(60_000, 60_000, 16, 6),
        png_bomb(300),
        jpeg(true),
        jpeg(false),
    ]
}

/// Recomputes the CRC of every PNG chunk, so that mutations reach past the CRC check.
fn fix_png_crcs(bytes: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= bytes.len()) else { break };
        let mut crc = flate2::Crc::new();
        crc.update(&bytes[at + 4..end]);
        bytes[end..end + 4].copy_from_slice(&crc.sum().to_be_bytes());
        at = end + 4;
    }
}

/// A seed with a few bytes replaced, perhaps truncated, perhaps with its CRCs fixed.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    (0..count, prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6), any::<Option<prop::sample::Index>>(), any::<bool>())
        .prop_map(move |(seed, edits, cut, fix)| {
            let mut bytes = seeds[seed].clone();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            if fix && bytes.starts_with(b"\x89PNG") {
                fix_png_crcs(&mut bytes);
            }
            bytes
        })
}

/// The shipped model's input, and a colour model that resizes what it gets.
const SPECS: [InputSpec; 2] = [
    InputSpec { channels: 1, size: 28, resize: Resize::Refuse },
    InputSpec { channels: 3, size: 32, resize: Resize::ShorterSideCrop },
];

/// Every spec answers the bytes with the right number of values in [0, 1] or a short reason.
fn check_image_answer(bytes: &[u8]) -> Result<(), TestCaseError> {
    for spec in &SPECS {
        match decode_image(bytes, spec) {
            Ok(values) => {
                prop_assert_eq!(values.len(), spec.values_per_image());
                prop_assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
            }
            Err(reason) => prop_assert!(!reason.is_empty() && reason.len() <= MAX_MESSAGE_BYTES, "{}", reason),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn image_decoder_answers_every_mutated_image(bytes in mutated(image_seeds())) {
        check_image_answer(&bytes)?;
    }

    #[test]
    fn image_decoder_answers_arbitrary_bytes(mut bytes in prop::collection::vec(any::<u8>(), 0..400), png_signature: bool) {
        if png_signature {
            bytes.splice(0..0, b"\x89PNG\r\n\x1a\n".iter().copied());
        }
        check_image_answer(&bytes)?;
    }
}

fn npy_seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let mut seeds = Vec::new();
    let f32s = ndarray::Array3::<f32>::from_elem((2, 28, 28), 0.5);
    let u8s = ndarray::Array2::<u8>::from_elem((28, 28), 200);
    let f64s = ndarray::Array4::<f64>::from_elem((1, 1, 28, 28), 0.25);
    ndarray_npy::write_npy(dir.path().join("a.npy"), &f32s).unwrap();
    ndarray_npy::write_npy(dir.path().join("b.npy"), &u8s).unwrap();
    ndarray_npy::write_npy(dir.path().join("c.npy"), &f64s).unwrap();
    for name in ["a.npy", "b.npy", "c.npy"] {
        seeds.push(std::fs::read(dir.path().join(name)).unwrap());
    }
    // A header that claims 10^12 float32 values over 3 KB of data.
    let mut huge = seeds[0].clone();
    let header = String::from_utf8_lossy(&huge[10..]).into_owned();
    let at = header.find("(2, 28, 28)").unwrap() + 10;
    huge.splice(at..at + 11, b"(1000000, 1000000)".iter().copied());
    seeds.push(huge);
    seeds
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn npy_reader_answers_every_mutated_file(bytes in mutated(npy_seeds())) {
        match npy_values(&bytes) {
            Ok((shape, values)) => prop_assert_eq!(shape.iter().product::<usize>(), values.len()),
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
    }
}

/// Tensor requests: every dtype, shapes near and far from the model's, data of every length.
fn tensor_images() -> impl Strategy<Value = Images> {
    let dims = prop::sample::select(vec![-1i64, 0, 1, 2, 3, 27, 28, 29, 784, 1025, i64::MAX, i64::MIN]);
    (-1i32..4, prop::collection::vec(dims, 0..6), 0usize..4, any::<u8>()).prop_map(|(dtype, shape, length, fill)| {
        let exact = shape
            .iter()
            .try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
            .filter(|&n| n <= 1 << 22)
            .unwrap_or(784)
            * if dtype == DataType::Float32 as i32 { 4 } else { 1 };
        let len = [0, exact, exact.saturating_sub(1), exact + 1][length];
        // fill 0x3f.. makes float32 values inside [0, 1]; others are NaN, huge or negative.
        Images { source: Some(Source::Tensor(Tensor { dtype, shape, data: vec![fill; len] })) }
    })
}

fn encoded_images() -> impl Strategy<Value = Images> {
    prop::collection::vec(mutated(image_seeds()), 0..4)
        .prop_map(|files| Images { source: Some(Source::Encoded(EncodedImages { files })) })
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn request_validation_answers_every_request(images in prop_oneof![tensor_images(), encoded_images()], missing: bool) {
        let images = if missing { None } else { Some(images) };
        match decode_images(images.as_ref(), "images", 1024, &SPECS[0]) {
            Ok(t) => {
                let size = t.size();
                prop_assert!(size.len() == 4 && size[0] >= 1 && size[0] <= 1024 && size[1..] == [1, 28, 28], "{:?}", size);
            }
            Err(status) => {
                prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                prop_assert!(status.message().starts_with("images"), "{}", status.message());
                prop_assert!(status.message().len() <= MAX_MESSAGE_BYTES, "{}", status.message());
            }
        }
    }

    #[test]
    fn request_validation_answers_arbitrary_protobuf(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        use prost::Message as _;
        if let Ok(images) = Images::decode(bytes.as_slice()) {
            if let Err(status) = decode_images(Some(&images), "images", 1024, &SPECS[0]) {
                prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
            }
        }
    }
}
