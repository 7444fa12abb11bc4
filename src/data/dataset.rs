//! One labelled image set, whatever format it came from: images `[N, C, H, W]` float32 in
//! [0, 1], labels `[N]` int64, and the class names in label order.

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Which half of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Images `[N, C, H, W]` float32 in [0, 1] and labels `[N]` int64, on the CPU, with the
/// names of the classes the labels index.
#[derive(Debug)]
pub struct Dataset {
    pub images: Tensor,
    pub labels: Tensor,
    pub class_names: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[C, H, W]` of one image.
    pub fn image_shape(&self) -> [i64; 3] {
        let s = self.images.size();
        [s[1], s[2], s[3]]
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The first `n` examples (all of them if `n` is larger).
    pub fn take(&self, n: usize) -> Dataset {
        self.slice(0, n)
    }

    /// Up to `len` examples from `offset` (none if `offset` is past the end).
    pub fn slice(&self, offset: usize, len: usize) -> Dataset {
        let offset = offset.min(self.len());
        let len = len.min(self.len() - offset) as i64;
        Dataset {
            images: self.images.narrow(0, offset as i64, len),
            labels: self.labels.narrow(0, offset as i64, len),
            class_names: self.class_names.clone(),
        }
    }

    /// Builds a data set from 8-bit pixels `[N, C, H, W]` and labels, checking that the
    /// counts agree and every label names a class. `source` names the files in errors.
    pub fn from_u8(
        source: &Path,
        pixels: &[u8],
        shape: [usize; 4],
        labels: &[i64],
        class_names: Vec<String>,
    ) -> Result<Dataset> {
        let bad = |reason: String| Error::Dataset { path: source.into(), reason };
        let [n, c, h, w] = shape;
        if pixels.len() != n * c * h * w {
            return Err(bad(format!("{} pixel values for {n} images of {c}x{h}x{w}", pixels.len())));
        }
        if labels.len() != n {
            return Err(bad(format!("{} labels for {n} images", labels.len())));
        }
        check_labels(source, labels, class_names.len())?;
        let images = Tensor::from_slice(pixels).view([n as i64, c as i64, h as i64, w as i64]).to_kind(Kind::Float) / 255.0;
        Ok(Dataset { images, labels: Tensor::from_slice(labels), class_names })
    }
}

/// Every label must index one of `classes` classes.
pub fn check_labels(source: &Path, labels: &[i64], classes: usize) -> Result<()> {
    match labels.iter().enumerate().find(|(_, &l)| l < 0 || l as usize >= classes) {
        Some((i, l)) => Err(Error::Dataset {
            path: source.into(),
            reason: format!("label {l} at index {i} is not a class (0..={})", classes.saturating_sub(1)),
        }),
        None => Ok(()),
    }
}

/// Class names from `classes.txt` in `dir` (one per line, in label order), if it is there.
pub fn read_class_file(dir: &Path) -> Result<Option<Vec<String>>> {
    let path = dir.join("classes.txt");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() < 2 {
        return Err(Error::Dataset { path, reason: format!("{} class names; at least 2 are needed", names.len()) });
    }
    Ok(Some(names))
}

/// Class names `"0"`, `"1"`, ... for sets that name none.
pub fn numbered_classes(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}
