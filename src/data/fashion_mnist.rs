//! Fashion-MNIST (Xiao et al. 2017), pathguard's default data set: 60,000 training and 10,000
//! test images, 28x28 grey, 10 classes, as IDX files (read by [`super::idx_set`]). On Debian,
//! `apt-get install dataset-fashion-mnist` puts them in [`DEFAULT_DIR`]; `make` does that.

use std::path::{Path, PathBuf};

use super::dataset::{Dataset, Split};
use crate::error::Result;

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Environment variable that overrides [`DEFAULT_DIR`].
pub const DIR_ENV: &str = "PATHGUARD_DATA";

/// The ten classes, in label order.
pub const CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Image side in pixels.
pub const IMAGE_SIZE: usize = 28;

/// Number of examples in the official split.
pub fn official_len(split: Split) -> usize {
    match split {
        Split::Train => 60_000,
        Split::Test => 10_000,
    }
}

/// The data directory: `$PATHGUARD_DATA` if set, else [`DEFAULT_DIR`].
pub fn default_dir() -> PathBuf {
    std::env::var_os(DIR_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// Loads one split of the IDX files in `dir` (Fashion-MNIST's class names unless the
/// directory has a `classes.txt`).
pub fn load(dir: &Path, split: Split) -> Result<Dataset> {
    super::idx_set::load(dir, split)
}
