//! Data sets stored as IDX files, the MNIST family's format: `train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each
//! optionally gzipped. Images are grey, `[N, H, W]` bytes. Class names come from a
//! `classes.txt` beside them (MNIST: the digits), else they are Fashion-MNIST's.

use std::path::{Path, PathBuf};

use super::dataset::{read_class_file, Dataset, Split};
use super::fashion_mnist::{CLASS_NAMES, DIR_ENV};
use super::idx::{read_idx, IdxArray};
use crate::error::{Error, Result};

fn file_stem(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

/// Whether `dir` holds IDX files (at least the training images).
pub fn is_idx_dir(dir: &Path) -> bool {
    find_file(dir, "train-images-idx3-ubyte").is_ok()
}

fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    for candidate in [format!("{name}.gz"), name.to_string()] {
        let path = dir.join(&candidate);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(Error::Dataset {
        path: dir.into(),
        reason: format!(
            "neither {name}.gz nor {name} found; install Fashion-MNIST with \
             `apt-get install dataset-fashion-mnist` (make does it) or set {DIR_ENV}"
        ),
    })
}

/// Loads one split from `dir`, checking that images and labels agree.
pub fn load(dir: &Path, split: Split) -> Result<Dataset> {
    let stem = file_stem(split);
    let image_path = find_file(dir, &format!("{stem}-images-idx3-ubyte"))?;
    let label_path = find_file(dir, &format!("{stem}-labels-idx1-ubyte"))?;
    let class_names = match read_class_file(dir)? {
        Some(names) => names,
        None => CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
    };
    from_idx(&image_path, read_idx(&image_path)?, &label_path, read_idx(&label_path)?, class_names)
}

/// Builds a data set from parsed IDX arrays, validating shapes and labels.
pub fn from_idx(
    image_path: &Path,
    images: IdxArray,
    label_path: &Path,
    labels: IdxArray,
    class_names: Vec<String>,
) -> Result<Dataset> {
    let bad = |path: &Path, reason: String| Error::Dataset { path: path.into(), reason };
    let [n, h, w] = images.dims[..] else {
        return Err(bad(image_path, format!("images have shape {:?}, expected [N, H, W]", images.dims)));
    };
    if labels.dims.len() != 1 {
        return Err(bad(label_path, format!("labels have shape {:?}, expected [N]", labels.dims)));
    }
    if labels.dims[0] != n {
        return Err(bad(label_path, format!("{} labels for {n} images", labels.dims[0])));
    }
    let label_values: Vec<i64> = labels.data.iter().map(|&l| l as i64).collect();
    super::dataset::check_labels(label_path, &label_values, class_names.len())?;
    Dataset::from_u8(image_path, &images.data, [n, 1, h, w], &label_values, class_names)
}
