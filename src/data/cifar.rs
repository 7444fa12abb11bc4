//! CIFAR-10 and CIFAR-100 in their binary version (Krizhevsky 2009): 32x32 RGB images as
//! records of label byte(s) followed by 3,072 pixel bytes (the red, green and blue planes,
//! each row-major).
//!
//! CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` .. `data_batch_5.bin`,
//! `test_batch.bin`, class names in `batches.meta.txt`; records of 1 + 3,072 bytes.
//! CIFAR-100 (`cifar-100-binary/`): `train.bin`, `test.bin`, names in
//! `fine_label_names.txt`; records of 2 + 3,072 bytes (coarse label, fine label); pathguard
//! uses the 100 fine labels. The files may sit in `--data` itself or in the archive's folder
//! inside it.

use std::path::{Path, PathBuf};

use super::dataset::{numbered_classes, Dataset, Split};
use crate::error::{Error, Result};

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

/// Which of the two CIFAR sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar {
    Ten,
    Hundred,
}

impl Cifar {
    fn folder(self) -> &'static str {
        match self {
            Cifar::Ten => "cifar-10-batches-bin",
            Cifar::Hundred => "cifar-100-binary",
        }
    }

    fn files(self, split: Split) -> Vec<String> {
        match (self, split) {
            (Cifar::Ten, Split::Train) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            (Cifar::Ten, Split::Test) => vec!["test_batch.bin".into()],
            (Cifar::Hundred, Split::Train) => vec!["train.bin".into()],
            (Cifar::Hundred, Split::Test) => vec!["test.bin".into()],
        }
    }

    fn label_bytes(self) -> usize {
        match self {
            Cifar::Ten => 1,
            Cifar::Hundred => 2,
        }
    }

    fn classes(self) -> usize {
        match self {
            Cifar::Ten => 10,
            Cifar::Hundred => 100,
        }
    }

    fn names_file(self) -> &'static str {
        match self {
            Cifar::Ten => "batches.meta.txt",
            Cifar::Hundred => "fine_label_names.txt",
        }
    }

    /// The directory holding this set's files under `dir` (itself or the archive's folder),
    /// if it holds them.
    pub fn locate(self, dir: &Path) -> Option<PathBuf> {
        let first = &self.files(Split::Test)[0];
        [dir.to_path_buf(), dir.join(self.folder())].into_iter().find(|d| d.join(first).is_file())
    }
}

/// Loads one split of CIFAR-10 or CIFAR-100 from `dir`.
pub fn load(dir: &Path, which: Cifar, split: Split) -> Result<Dataset> {
    let root = which.locate(dir).ok_or_else(|| Error::Dataset {
        path: dir.into(),
        reason: format!("no {} here or in {}/", which.files(Split::Test)[0], which.folder()),
    })?;
    let record = which.label_bytes() + PIXELS;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in which.files(split) {
        let path = root.join(&name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(Error::Dataset {
                path,
                reason: format!("{} bytes is not a whole number of {record}-byte records", bytes.len()),
            });
        }
        pixels.reserve(bytes.len() / record * PIXELS);
        for chunk in bytes.chunks_exact(record) {
            labels.push(chunk[which.label_bytes() - 1] as i64);
            pixels.extend_from_slice(&chunk[which.label_bytes()..]);
        }
    }
    let class_names = read_names(&root.join(which.names_file()), which.classes())?;
    let n = labels.len();
    Dataset::from_u8(&root, &pixels, [n, 3, SIDE, SIDE], &labels, class_names)
}

/// The class names file (one per line), or numbered classes when it is absent.
fn read_names(path: &Path, classes: usize) -> Result<Vec<String>> {
    if !path.is_file() {
        return Ok(numbered_classes(classes));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() != classes {
        return Err(Error::Dataset { path: path.into(), reason: format!("{} class names, expected {classes}", names.len()) });
    }
    Ok(names)
}

/// Writes `images` (8-bit `[N, 3, 32, 32]`, flat) and labels as one CIFAR batch file: for tests
/// and for users converting their own data.
pub fn encode_batch(which: Cifar, pixels: &[u8], labels: &[u8]) -> Vec<u8> {
    assert_eq!(pixels.len(), labels.len() * PIXELS, "pixels must hold [N, 3, 32, 32]");
    let mut out = Vec::with_capacity(labels.len() * (which.label_bytes() + PIXELS));
    for (label, image) in labels.iter().zip(pixels.chunks_exact(PIXELS)) {
        if which == Cifar::Hundred {
            out.push(0); // coarse label: pathguard reads the fine one
        }
        out.push(*label);
        out.extend_from_slice(image);
    }
    out
}
