//! Where a data set comes from: a directory, its format (recognised from the files unless
//! given) and the shape its images are brought to. Every command that reads data goes
//! through [`DataSource::load`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cifar::{self, Cifar};
use super::dataset::{Dataset, Split};
use super::preprocess::{InputSpec, Resize};
use super::{fashion_mnist, idx_set, image_folder, npy_set};
use crate::error::{Error, Result};

/// The on-disk formats pathguard reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// Recognise the format from the files.
    #[default]
    Auto,
    /// IDX files (Fashion-MNIST, MNIST).
    Idx,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// CIFAR-100 binary files (fine labels).
    Cifar100,
    /// One sub-folder per class of PNG/JPEG files (optionally under train/ and test/).
    ImageFolder,
    /// train_images.npy, train_labels.npy, test_images.npy, test_labels.npy.
    Npy,
}

impl DataFormat {
    /// The format of the files in `dir`, or an error listing what was looked for.
    pub fn detect(dir: &Path) -> Result<DataFormat> {
        if !dir.is_dir() {
            return Err(Error::Dataset { path: dir.into(), reason: "no such directory".into() });
        }
        let found = if idx_set::is_idx_dir(dir) {
            DataFormat::Idx
        } else if Cifar::Ten.locate(dir).is_some() {
            DataFormat::Cifar10
        } else if Cifar::Hundred.locate(dir).is_some() {
            DataFormat::Cifar100
        } else if npy_set::is_npy_dir(dir) {
            DataFormat::Npy
        } else if image_folder::is_image_folder(dir) {
            DataFormat::ImageFolder
        } else {
            return Err(Error::Dataset {
                path: dir.into(),
                reason: "cannot tell the data format: found no train-images-idx3-ubyte(.gz), CIFAR-10 \
                         test_batch.bin, CIFAR-100 test.bin, train_images.npy, or class folders of \
                         PNG/JPEG files; name it with --data-format"
                    .into(),
            });
        };
        Ok(found)
    }
}

/// A data set on disk and the shape to bring its images to.
#[derive(Debug, Clone)]
pub struct DataSource {
    pub dir: PathBuf,
    pub format: DataFormat,
    /// Channels to bring images to (a model's); None: the data's own (the first image's for an
    /// image folder).
    pub channels: Option<i64>,
    /// Side to bring images to (a model's, or one asked for); None: the data's own (the
    /// shorter side when images are not square).
    pub size: Option<i64>,
    pub resize: Resize,
    /// Seed of an image folder's hold-out split.
    pub seed: u64,
}

impl DataSource {
    /// Fashion-MNIST in its default place.
    pub fn fashion_mnist() -> Self {
        DataSource::new(fashion_mnist::default_dir())
    }

    pub fn new(dir: PathBuf) -> Self {
        DataSource { dir, format: DataFormat::Auto, channels: None, size: None, resize: Resize::Refuse, seed: 0 }
    }

    /// Loads one split, its images brought to [`Self::channels`] and [`Self::size`].
    pub fn load(&self, split: Split) -> Result<Dataset> {
        let format = match self.format {
            DataFormat::Auto => DataFormat::detect(&self.dir)?,
            f => f,
        };
        let mut data = match format {
            DataFormat::Auto => unreachable!("resolved above"),
            DataFormat::Idx => idx_set::load(&self.dir, split)?,
            DataFormat::Cifar10 => cifar::load(&self.dir, Cifar::Ten, split)?,
            DataFormat::Cifar100 => cifar::load(&self.dir, Cifar::Hundred, split)?,
            DataFormat::Npy => npy_set::load(&self.dir, split)?,
            DataFormat::ImageFolder => image_folder::load(&self.dir, split, (self.channels, self.size), self.resize, self.seed)?,
        };
        let [c, h, w] = data.image_shape();
        let (channels, size) = (self.channels.unwrap_or(c), self.size.unwrap_or(h.min(w)));
        if [c, h, w] != [channels, size, size] {
            let rule = InputSpec { channels, size, resize: self.resize };
            data.images = rule
                .apply(&data.images)
                .map_err(|reason| Error::Dataset { path: self.dir.clone(), reason: format!("{} split: {reason}", split.name()) })?;
        }
        Ok(data)
    }
}
