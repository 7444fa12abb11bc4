//! Corruption sets: a data slice under one benign corruption ([`crate::corruptions`]), with
//! the screener's verdicts, written like attack sets (NPY files, manifest.json, preview.png).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::attack_set::{write_npy_f32, write_npy_i64};
use crate::corruptions::Corruption;
use crate::data::Dataset;
use crate::error::Result;
use crate::screener::Screener;

/// A distribution percentile at or above which an image counts as far from the training
/// images (farther out than 99% of held-out clean training images).
pub const FAR_PERCENTILE: f64 = 0.99;

/// Accuracy, flags and their reasons of one batch of images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdicts {
    pub accuracy: f64,
    /// Flagged at the detector's stored threshold.
    pub flag_rate: f64,
    /// Flagged, among the images the model still classifies correctly.
    pub flag_rate_of_correct: f64,
    /// Per detector expert: the share of images whose score from that expert alone reaches
    /// the threshold.
    #[serde(default)]
    pub fired: BTreeMap<String, f64>,
    /// The share of images at or above [`FAR_PERCENTILE`] of the training distribution (when
    /// the model has a distribution.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub far_rate: Option<f64>,
    #[serde(skip)]
    pub predictions: Vec<i64>,
    #[serde(skip)]
    pub scores: Vec<f64>,
    /// Per image, each expert's score.
    #[serde(skip)]
    pub expert_scores: Vec<Vec<f64>>,
    /// Per image, its distribution percentile.
    #[serde(skip)]
    pub percentiles: Vec<Option<f64>>,
}

/// Screens `images` in batches of `batch` and judges them against `labels`.
pub fn verdicts(screener: &Screener, images: &Tensor, labels: &Tensor, batch: usize) -> Result<Verdicts> {
    let n = images.size()[0];
    let (mut predictions, mut scores, mut expert_scores, mut percentiles) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for start in (0..n).step_by(batch.max(1)) {
        let len = (batch as i64).min(n - start);
        for s in screener.screen(&images.narrow(0, start, len))? {
            predictions.push(s.predicted_class);
            scores.push(s.score);
            expert_scores.push(s.expert_scores);
            percentiles.push(s.distribution.map(|d| d.percentile));
        }
    }
    let labels = Vec::<i64>::try_from(labels.to_device(Device::Cpu))?;
    let names: Vec<String> = screener.detector.experts.iter().map(|e| e.name.clone()).collect();
    Ok(Verdicts::summarise(predictions, scores, expert_scores, percentiles, &labels, &names, screener.detector.threshold()))
}

impl Verdicts {
    /// The rates of per-image verdicts (all vectors row-aligned with `labels`).
    pub fn summarise(
        predictions: Vec<i64>,
        scores: Vec<f64>,
        expert_scores: Vec<Vec<f64>>,
        percentiles: Vec<Option<f64>>,
        labels: &[i64],
        expert_names: &[String],
        threshold: f64,
    ) -> Verdicts {
        let n = labels.len().max(1) as f64;
        let correct: Vec<bool> = predictions.iter().zip(labels).map(|(p, l)| p == l).collect();
        let flagged: Vec<bool> = scores.iter().map(|&s| s >= threshold).collect();
        let correct_count = correct.iter().filter(|&&c| c).count() as f64;
        let fired = expert_names
            .iter()
            .enumerate()
            .map(|(e, name)| (name.clone(), expert_scores.iter().filter(|s| s[e] >= threshold).count() as f64 / n))
            .collect();
        let far_rate = percentiles
            .iter()
            .map(|p| p.map(|p| p >= FAR_PERCENTILE))
            .collect::<Option<Vec<bool>>>()
            .map(|far| far.iter().filter(|&&f| f).count() as f64 / n);
        Verdicts {
            accuracy: correct_count / n,
            flag_rate: flagged.iter().filter(|&&f| f).count() as f64 / n,
            flag_rate_of_correct: correct.iter().zip(&flagged).filter(|(&c, &f)| c && f).count() as f64 / correct_count.max(1.0),
            fired,
            far_rate,
            predictions,
            scores,
            expert_scores,
            percentiles,
        }
    }

    /// The verdicts of the images at `rows` only.
    pub fn select(&self, rows: &[usize], labels: &[i64], expert_names: &[String], threshold: f64) -> Verdicts {
        Verdicts::summarise(
            rows.iter().map(|&i| self.predictions[i]).collect(),
            rows.iter().map(|&i| self.scores[i]).collect(),
            rows.iter().map(|&i| self.expert_scores[i].clone()).collect(),
            rows.iter().map(|&i| self.percentiles[i]).collect(),
            &rows.iter().map(|&i| labels[i]).collect::<Vec<_>>(),
            expert_names,
            threshold,
        )
    }
}

/// `manifest.json` of a corruption set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorruptionManifest {
    pub format: String,
    pub pathguard_version: String,
    pub corruption: String,
    pub severity: usize,
    /// The corruption's parameter at this severity, in `unit`.
    pub level: f64,
    pub unit: String,
    pub seed: i64,
    pub model_dir: PathBuf,
    pub model_hash: String,
    pub detector_threshold: f64,
    pub split: String,
    pub offset: usize,
    pub images: usize,
    pub clean: Verdicts,
    pub corrupted: Verdicts,
    /// Mean absolute change per pixel.
    pub mean_change: f64,
    pub class_names: Vec<String>,
    pub pixel_convention: String,
    pub files: Vec<String>,
    /// The detector's score of each corrupted image.
    pub scores: Vec<f64>,
}

pub const CORRUPTION_SET_FILES: [&str; 7] =
    ["images.npy", "clean.npy", "labels.npy", "indices.npy", "predictions.npy", "preview.png", "manifest.json"];

/// Corrupts `data` (positions `indices` in `split` from `offset`), screens the result and
/// writes the set into `out`, replaced only when complete.
#[allow(clippy::too_many_arguments)]
pub fn write_corruption_set(
    out: &Path,
    screener: &Screener,
    model_dir: &Path,
    corruption: &Corruption,
    severity: usize,
    seed: i64,
    data: &Dataset,
    indices: &Tensor,
    split: &str,
    offset: usize,
) -> Result<CorruptionManifest> {
    let corrupted = corruption.apply(&data.images, severity, seed)?;
    let clean = verdicts(screener, &data.images, &data.labels, 256)?;
    let after = verdicts(screener, &corrupted, &data.labels, 256)?;
    let manifest = CorruptionManifest {
        format: "pathguard-corruption-set-v1".into(),
        pathguard_version: env!("CARGO_PKG_VERSION").into(),
        corruption: corruption.name.into(),
        severity,
        level: corruption.level(severity)?,
        unit: corruption.unit.into(),
        seed,
        model_dir: model_dir.into(),
        model_hash: screener.checkpoint.model_hash().into(),
        detector_threshold: screener.detector.threshold(),
        split: split.into(),
        offset,
        images: data.len(),
        mean_change: (&corrupted - &data.images).abs().mean(Kind::Float).double_value(&[]),
        class_names: screener.class_names().to_vec(),
        pixel_convention: screener.checkpoint.input_spec().stored_as(),
        files: CORRUPTION_SET_FILES.iter().map(|f| f.to_string()).collect(),
        scores: after.scores.clone(),
        clean,
        corrupted: after,
    };
    let predictions = Tensor::from_slice(&manifest.corrupted.predictions);
    crate::atomic::write_dir_atomic(out, |tmp| {
        write_npy_f32(&tmp.join("images.npy"), &corrupted)?;
        write_npy_f32(&tmp.join("clean.npy"), &data.images)?;
        write_npy_i64(&tmp.join("labels.npy"), &data.labels)?;
        write_npy_i64(&tmp.join("indices.npy"), indices)?;
        write_npy_i64(&tmp.join("predictions.npy"), &predictions)?;
        let columns = crate::preview::SheetColumns {
            clean: &data.images,
            altered: &corrupted,
            labels: &data.labels,
            predictions: &predictions,
            altered_title: "corrupted",
        };
        crate::preview::contact_sheet(&tmp.join("preview.png"), &columns, screener.class_names(), 8)?;
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        crate::model::checkpoint::write_atomic(&tmp.join("manifest.json"), &json)
    })?;
    Ok(manifest)
}
