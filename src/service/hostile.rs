//! Hostile inputs that once hurt the service, rebuilt byte for byte: the regression tests and
//! the soak (`pathguard load-test --hostile-clients`) send them to a real server.

use std::io::Write as _;

use flate2::write::ZlibEncoder;
use flate2::Compression;

/// One PNG chunk: length, type, data, CRC of type and data.
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(kind);
    out.extend(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend(crc.sum().to_be_bytes());
}

fn header(width: u32, height: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([bit_depth, color_type, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    png
}

fn zlib(rows: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    for row in rows {
        encoder.write_all(&row).expect("writing to memory");
    }
    encoder.finish().expect("writing to memory")
}

/// A valid header that claims `width` x `height` pixels of `color_type` (6 = RGBA) at
/// `bit_depth`, with a tiny IDAT: about 70 bytes that once made the server allocate what the
/// header claims (60000 x 60000 RGBA16: 29 GB) and abort.
pub fn giant_header_png(width: u32, height: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
    let mut png = header(width, height, bit_depth, color_type);
    chunk(&mut png, b"IDAT", &zlib(std::iter::once(vec![0; 8])));
    chunk(&mut png, b"IEND", &[]);
    png
}

/// A 28x28 palette PNG whose PLTE chunk is `palette_len` bytes long (a palette needs a
/// multiple of 3): 1, 2 or 4 once panicked inside the decoder.
pub fn short_palette_png(palette_len: usize) -> Vec<u8> {
    let mut png = header(28, 28, 8, 3);
    chunk(&mut png, b"PLTE", &vec![7; palette_len]);
    chunk(&mut png, b"IDAT", &zlib((0..28).map(|_| vec![0; 29])));
    chunk(&mut png, b"IEND", &[]);
    png
}

/// A valid, all-black `side` x `side` grey PNG: 20000 x 20000 compresses to about 390 KB and
/// decodes to 400 MB (a decompression bomb).
pub fn png_bomb(side: u32) -> Vec<u8> {
    let mut png = header(side, side, 8, 0);
    let row = vec![0u8; side as usize + 1];
    chunk(&mut png, b"IDAT", &zlib((0..side).map(|_| row.clone())));
    chunk(&mut png, b"IEND", &[]);
    png
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image::decode_image;
    use crate::data::{InputSpec, Resize};

    #[test]
    fn each_hostile_png_is_refused_with_a_reason() {
        for (png, expected) in [
            (giant_header_png(60_000, 60_000, 16, 6), "60000x60000"),
            (giant_header_png(1_000_000, 1_000_000, 8, 0), "1000000x1000000"),
            (png_bomb(2_000), "2000x2000"),
        ] {
            let err = decode_image(&png, &InputSpec::fashion_mnist()).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        for len in [1, 2, 4] {
            let png = short_palette_png(len);
            assert!(png.len() < 200);
            assert!(decode_image(&png, &InputSpec::fashion_mnist()).is_err(), "a {len}-byte palette");
        }
        // The builders make real PNGs: the same palette PNG with a whole palette decodes.
        let grey = decode_image(&short_palette_png(3), &InputSpec::fashion_mnist()).unwrap();
        assert_eq!(grey.len(), 784);
        assert!(grey.iter().all(|v| (v - 7.0 / 255.0).abs() < 1e-5));
    }

    #[test]
    fn a_resizing_model_still_refuses_giant_headers_before_decoding() {
        let spec = InputSpec { channels: 3, size: 32, resize: Resize::ShorterSideCrop };
        for (png, expected) in [
            (giant_header_png(60_000, 60_000, 8, 2), "60000x60000"),
            (giant_header_png(1_000_000, 1_000_000, 8, 0), "1000000x1000000"),
            (png_bomb(4_000), "4000x4000"),
        ] {
            let err = decode_image(&png, &spec).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        // A small image of another size is resized and repeated into three channels.
        let rgb = decode_image(&short_palette_png(3), &spec).unwrap();
        assert_eq!(rgb.len(), 3 * 32 * 32);
        assert!(rgb.iter().all(|v| (v - 7.0 / 255.0).abs() < 1e-4));
    }
}
