//! How far an image lies from the training distribution, apart from whether it looks crafted.
//!
//! The detector's score says "unlike a clean image"; a pipeline also wants to know "unlike
//! anything we trained on", so that it can route a blurred or over-exposed photo differently
//! from an attack. The measure is the Mahalanobis distance (Lee et al. 2018) of the classifier's
//! input features to the closest class mean of clean training images, reported as a
//! percentile: the share of held-out clean training images that lie closer. 0.5 is a typical
//! image, 0.999 one farther out than all but 0.1% of clean images. Saved as
//! `distribution.json` beside the model; the screener reports it when the file is there.

use std::path::Path;

use detectors::{MahalanobisDetector, MahalanobisParams};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{DecoupledCnn, ForwardOutput, GateMode};
use crate::path::features::to_ndarray;

pub const DISTRIBUTION_FILE: &str = "distribution.json";
const FORMAT: &str = "pathguard-training-distribution-v1";

/// The clean training distribution of one model's penultimate features.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingDistribution {
    pub format: String,
    /// Hash of the model whose features it describes; loading checks it.
    pub model_hash: String,
    /// Training images the class means and covariance come from.
    pub fit_images: usize,
    pub mahalanobis: MahalanobisDetector,
    /// Squared distances of the held-out clean training images, ascending.
    pub held_out_distances: Vec<f64>,
}

/// An image's distance to the training distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distance {
    /// Squared Mahalanobis distance to the closest class mean.
    pub distance: f64,
    /// Share of held-out clean training images closer than this one, in [0, 1].
    pub percentile: f64,
}

fn penultimate_rows(model: &DecoupledCnn, device: Device, images: &Tensor, batch: usize) -> Result<Array2<f64>> {
    let n = images.size()[0];
    let mut parts = Vec::new();
    for start in (0..n).step_by(batch.max(1)) {
        let x = images.narrow(0, start, (batch as i64).min(n - start)).to_device(device);
        model.check_input(&x)?;
        let out = tch::no_grad(|| model.forward_with_path(&x, GateMode::Eval));
        parts.push(to_ndarray(&out.penultimate));
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| Error::Config(format!("penultimate features: {e}")))
}

impl TrainingDistribution {
    /// Fits the class means and shared covariance on `fit` (clean images, true labels) and
    /// the percentile scale on `held_out` (clean images the fit did not see).
    pub fn fit(model: &DecoupledCnn, device: Device, model_hash: &str, fit: &Dataset, held_out: &Dataset) -> Result<Self> {
        if held_out.is_empty() {
            return Err(Error::Config("no held-out images to set the percentile scale on".into()));
        }
        let rows = penultimate_rows(model, device, &fit.images, 512)?;
        let labels: Vec<usize> = Vec::<i64>::try_from(&fit.labels)?.into_iter().map(|l| l as usize).collect();
        let mahalanobis = MahalanobisParams::new(model.config().num_classes as usize)
            .fit(rows.view(), &labels)
            .map_err(|e| Error::Config(format!("fitting the training distribution: {e}")))?;
        let held = penultimate_rows(model, device, &held_out.images, 512)?;
        let mut held_out_distances =
            mahalanobis.min_distances(held.view()).map_err(|e| Error::Config(format!("held-out distances: {e}")))?.to_vec();
        held_out_distances.sort_by(f64::total_cmp);
        Ok(TrainingDistribution {
            format: FORMAT.into(),
            model_hash: model_hash.into(),
            fit_images: fit.len(),
            mahalanobis,
            held_out_distances,
        })
    }

    /// The distance of each image of a forward pass.
    pub fn distances(&self, out: &ForwardOutput) -> Result<Vec<Distance>> {
        let rows = to_ndarray(&out.penultimate);
        let squared = self.mahalanobis.min_distances(rows.view()).map_err(|e| Error::InvalidInput(format!("distribution: {e}")))?;
        Ok(squared.iter().map(|&distance| Distance { distance, percentile: self.percentile(distance) }).collect())
    }

    /// Share of held-out clean images strictly closer than `distance`.
    pub fn percentile(&self, distance: f64) -> f64 {
        let closer = self.held_out_distances.partition_point(|&d| d < distance);
        closer as f64 / self.held_out_distances.len().max(1) as f64
    }

    /// Writes `distribution.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("distribution serialises");
        crate::model::checkpoint::write_atomic(path, &json)
    }

    /// Loads a distribution and checks that it belongs to the model with `model_hash`.
    pub fn load(path: &Path, model_hash: &str) -> Result<Self> {
        let fail = |reason: String| Error::Checkpoint { path: path.into(), reason };
        let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read the training distribution: {e}")))?;
        let d: TrainingDistribution =
            serde_json::from_slice(&bytes).map_err(|e| fail(format!("not a valid distribution file: {e}")))?;
        if d.format != FORMAT {
            return Err(fail(format!("format {} is not {FORMAT}; refit it with `pathguard fit-distribution`", d.format)));
        }
        if d.model_hash != model_hash {
            return Err(fail(format!(
                "fitted on model {}, not on the loaded model {model_hash}; refit it with `pathguard fit-distribution`",
                d.model_hash
            )));
        }
        let (k, dim) = d.mahalanobis.means.dim();
        if k == 0 || d.mahalanobis.precision.dim() != (dim, dim) {
            return Err(fail(format!("{k} class means of {dim} features but a {:?} precision matrix", d.mahalanobis.precision.dim())));
        }
        if d.held_out_distances.is_empty() || d.held_out_distances.windows(2).any(|w| !(w[0] <= w[1])) {
            return Err(fail("held_out_distances must be non-empty, finite and ascending".into()));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_held_out(distances: Vec<f64>) -> TrainingDistribution {
        TrainingDistribution {
            format: FORMAT.into(),
            model_hash: "m".into(),
            fit_images: 0,
            mahalanobis: MahalanobisDetector::new(Array2::zeros((1, 1)), Array2::eye(1), 1.0),
            held_out_distances: distances,
        }
    }

    #[test]
    fn the_percentile_counts_held_out_images_strictly_closer() {
        let d = with_held_out(vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(d.percentile(0.5), 0.0);
        assert_eq!(d.percentile(2.0), 0.25);
        assert_eq!(d.percentile(2.5), 0.5);
        assert_eq!(d.percentile(100.0), 1.0);
    }

    #[test]
    fn loading_refuses_another_model_and_a_broken_scale() {
        let dir = std::env::temp_dir().join(format!("pathguard-distribution-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(DISTRIBUTION_FILE);
        with_held_out(vec![1.0, 2.0]).save(&path).unwrap();
        assert!(TrainingDistribution::load(&path, "m").is_ok());
        let other = TrainingDistribution::load(&path, "other").unwrap_err().to_string();
        assert!(other.contains("not on the loaded model other"), "{other}");
        with_held_out(vec![2.0, 1.0]).save(&path).unwrap();
        let unsorted = TrainingDistribution::load(&path, "m").unwrap_err().to_string();
        assert!(unsorted.contains("ascending"), "{unsorted}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
