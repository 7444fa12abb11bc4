//! Fashion-MNIST (Xiao et al. 2017): 60,000 training and 10,000 test images, 28x28 grey,
//! 10 classes. On Debian, `apt-get install dataset-fashion-mnist` puts the four IDX files in
//! [`DEFAULT_DIR`]; `make` does that for you.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::idx::{read_idx, IdxArray};
use crate::error::{Error, Result};

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

/// Which half of the data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn file_stem(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }

    /// Number of examples in the official split.
    pub fn official_len(self) -> usize {
        match self {
            Split::Train => 60_000,
            Split::Test => 10_000,
        }
    }
}

/// Images `[N, 1, 28, 28]` float32 in [0, 1] and labels `[N]` int64, on the CPU.
#[derive(Debug)]
pub struct Dataset {
    pub images: Tensor,
    pub labels: Tensor,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `n` examples (all of them if `n` is larger).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len()) as i64;
        Dataset { images: self.images.narrow(0, 0, n), labels: self.labels.narrow(0, 0, n) }
    }
}

/// The data directory: `$PATHGUARD_DATA` if set, else [`DEFAULT_DIR`].
pub fn default_dir() -> PathBuf {
    std::env::var_os(DIR_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
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
    let stem = split.file_stem();
    let image_path = find_file(dir, &format!("{stem}-images-idx3-ubyte"))?;
    let label_path = find_file(dir, &format!("{stem}-labels-idx1-ubyte"))?;
    let images = read_idx(&image_path)?;
    let labels = read_idx(&label_path)?;
    from_idx(&image_path, images, &label_path, labels)
}

/// Builds a data set from parsed IDX arrays, validating shapes and labels.
pub fn from_idx(
    image_path: &Path,
    images: IdxArray,
    label_path: &Path,
    labels: IdxArray,
) -> Result<Dataset> {
    let bad = |path: &Path, reason: String| Error::Dataset { path: path.into(), reason };
    if images.dims.len() != 3 || images.dims[1] != IMAGE_SIZE || images.dims[2] != IMAGE_SIZE {
        return Err(bad(
            image_path,
            format!("images have shape {:?}, expected [N, 28, 28]", images.dims),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(bad(label_path, format!("labels have shape {:?}, expected [N]", labels.dims)));
    }
    if labels.dims[0] != images.dims[0] {
        return Err(bad(
            label_path,
            format!("{} labels for {} images", labels.dims[0], images.dims[0]),
        ));
    }
    if let Some((i, &l)) =
        labels.data.iter().enumerate().find(|(_, &l)| l as usize >= CLASS_NAMES.len())
    {
        return Err(bad(label_path, format!("label {l} at index {i} is not a class (0..=9)")));
    }
    let n = images.dims[0] as i64;
    let images = Tensor::from_slice(&images.data)
        .view([n, 1, IMAGE_SIZE as i64, IMAGE_SIZE as i64])
        .to_kind(Kind::Float)
        / 255.0;
    let labels = Tensor::from_slice(&labels.data).to_kind(Kind::Int64);
    Ok(Dataset { images, labels })
}
