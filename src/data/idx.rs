//! Reader for IDX files, the format of MNIST and Fashion-MNIST, plain or gzip-compressed.
//!
//! Layout: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
//! one big-endian u32 per dimension, then the data in row-major order.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

const UNSIGNED_BYTE: u8 = 0x08;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads an IDX file; a gzip header (`1f 8b`) is detected and decompressed whatever the name.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::Idx {
                path: path.into(),
                reason: format!("corrupted or truncated gzip stream ({e})"),
            })?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|reason| Error::Idx { path: path.into(), reason })
}

/// Parses IDX bytes; the error is a human-readable reason.
pub fn parse_idx(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    if bytes.len() < 4 {
        return Err(format!("file is {} bytes, shorter than the 4-byte magic number", bytes.len()));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "bad magic number {:02x}{:02x}{:02x}{:02x}: IDX files start with two zero bytes",
            bytes[0], bytes[1], bytes[2], bytes[3]
        ));
    }
    if bytes[2] != UNSIGNED_BYTE {
        return Err(format!(
            "unsupported data type 0x{:02x} (only unsigned byte, 0x08, is supported)",
            bytes[2]
        ));
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        return Err("magic number declares 0 dimensions".into());
    }
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(format!(
            "truncated header: {ndims} dimensions need {header_len} bytes, file has {}",
            bytes.len()
        ));
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("dimensions {dims:?} overflow"))?;
    let found = bytes.len() - header_len;
    if found < expected {
        return Err(format!(
            "truncated data: dimensions {dims:?} need {expected} bytes, found {found}"
        ));
    }
    if found > expected {
        return Err(format!(
            "{} unexpected trailing bytes after the {expected} bytes that dimensions {dims:?} declare",
            found - expected
        ));
    }
    Ok(IdxArray { dims, data: bytes[header_len..].to_vec() })
}

/// Builds IDX bytes (used by tests and tools that write small data sets).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, UNSIGNED_BYTE, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_good_file() {
        let bytes = encode_idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let a = parse_idx(&bytes).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn rejects_bad_magic() {
        let mut bytes = encode_idx(&[2], &[1, 2]);
        bytes[0] = 7;
        assert!(parse_idx(&bytes).unwrap_err().contains("bad magic number"));
    }

    #[test]
    fn rejects_unsupported_type() {
        let mut bytes = encode_idx(&[2], &[1, 2]);
        bytes[2] = 0x0d;
        assert!(parse_idx(&bytes).unwrap_err().contains("unsupported data type 0x0d"));
    }

    #[test]
    fn rejects_truncated_header_and_data() {
        let bytes = encode_idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        assert!(parse_idx(&bytes[..6]).unwrap_err().contains("truncated header"));
        let err = parse_idx(&bytes[..bytes.len() - 2]).unwrap_err();
        assert!(err.contains("truncated data") && err.contains("need 6 bytes, found 4"), "{err}");
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = encode_idx(&[2], &[1, 2]);
        bytes.push(9);
        assert!(parse_idx(&bytes).unwrap_err().contains("trailing"));
    }
}
