//! The path detector: two logistic experts on the calculation path, combined by noisy-OR.
//!
//! - The *gate-logit expert* reads the controlling modules' outputs before thresholding (how
//!   firmly each gate of the path is open or closed). Fitted on clean versus full-strength
//!   attacks (FGSM, PGD), it catches the over-confident adversarial examples whose paths are
//!   unlike any clean path.
//! - The *path-statistics expert* reads the path's distances to the predicted class's
//!   template, the MI heads' agreement and the output confidence (see
//!   [`crate::path::features`]). Fitted on clean versus PGD stopped at each image's first
//!   success, it catches minimal examples that sit at the decision boundary (C&W, DeepFool),
//!   which look nothing like full-strength PGD's.
//!
//! Score = 1 - (1 - a)(1 - b): high when either expert is confident. Saved as
//! `detector.json` beside the model, with the class templates and the threshold.

use std::path::Path;

use detectors::{DetectionMetrics, Detector, LogisticDetector};
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::ForwardOutput;
use crate::path::features::PathViews;
use crate::path::{FeatureSpec, PathTemplates};
use crate::representations::Representations;

pub const DETECTOR_FILE: &str = "detector.json";
const FORMAT: &str = "pathguard-path-detector-v2";

/// How the detector was fitted and how it did on held-out validation images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectorRecord {
    /// Attacks whose successful adversarial images were the positive rows, e.g. "pgd eps 0.1".
    pub attacks: Vec<String>,
    pub train_images: usize,
    pub clean_rows: usize,
    /// Of the clean rows, those of mildly corrupted images (`fit-detector --benign-corruptions`).
    #[serde(default)]
    pub benign_corruption_rows: usize,
    pub adversarial_rows: usize,
    /// Correctly classified clean validation rows (those of `validation`).
    pub validation_clean_rows: usize,
    /// Clean rows the threshold was set on: every held-out and calibration image, right or
    /// wrong (0 in detectors fitted before they were counted: those set it on the correctly
    /// classified validation rows alone).
    #[serde(default)]
    pub threshold_rows: usize,
    /// Where the calibration images among them came from, e.g. "the last 5000 test images".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub calibration: String,
    pub target_false_positive_rate: f64,
    /// Metrics on the validation images (clean vs all attacks), at the chosen threshold.
    pub validation: DetectionMetrics,
    pub seconds: f64,
    /// Rounds of refitting on detector-aware attacks (`fit-detector --harden-rounds`); round
    /// 0 is the detector before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hardening: Vec<HardeningRound>,
}

/// One round of detector hardening and how the strongest detector-aware attack did against
/// the detector it produced, on the held-out validation images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HardeningRound {
    pub round: usize,
    /// Positive rows added this round (detector-aware images that fool the model).
    pub added_rows: usize,
    pub threshold: f64,
    /// Clean images flagged at that threshold (of the rows it was set on; see
    /// [`DetectorRecord::threshold_rows`]).
    pub validation_clean_flag_rate: f64,
    pub budgets: Vec<HardeningBudget>,
    pub seconds: f64,
}

/// The strongest detector-aware attack at one L-inf budget, on the validation images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HardeningBudget {
    pub eps: f64,
    /// Misclassified and not flagged, of all validation images.
    pub sr_at_5: f64,
    /// Misclassified, flagged or not.
    pub misclassified: f64,
    /// Correct under every attack (the model alone).
    pub model_alone_accuracy: f64,
}

/// One logistic expert and the columns it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathExpert {
    pub name: String,
    pub features: FeatureSpec,
    pub classifier: LogisticDetector,
    /// The training attacks whose rows were its positives.
    pub attacks: Vec<String>,
}

impl PathExpert {
    fn score_rows(&self, rows: &Array2<f64>) -> Result<Array1<f64>> {
        self.classifier.score(rows.view()).map_err(|e| Error::InvalidInput(format!("{}: {e}", self.name)))
    }
}

/// Noisy-OR of expert scores: 1 - prod(1 - s).
pub fn noisy_or(scores: &[Array1<f64>]) -> Array1<f64> {
    let n = scores.first().map(|s| s.len()).unwrap_or(0);
    let mut keep = Array1::<f64>::ones(n);
    for s in scores {
        keep *= &s.mapv(|v| 1.0 - v);
    }
    keep.mapv(|k| 1.0 - k)
}

/// What the detector reads of a batch of images ([`PathDetector::read`]).
#[derive(Debug, Clone)]
pub struct Reading {
    /// Per expert, the score of each image.
    pub expert_scores: Vec<Array1<f64>>,
    /// The path statistics `[N, 6L + 3]`.
    pub statistics: Array2<f64>,
    /// `[N, L]`: per gated layer, the experts' logit contributions of that layer's columns,
    /// summed over the experts; positive pushed the score up.
    pub layer_evidence: Array2<f64>,
}

/// The fitted path detector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathDetector {
    pub format: String,
    /// Hash of the model whose paths it was fitted on; loading checks it.
    pub model_hash: String,
    pub templates: PathTemplates,
    pub experts: Vec<PathExpert>,
    /// Flag = score >= threshold.
    pub threshold: f64,
    pub record: Option<DetectorRecord>,
}

impl PathDetector {
    pub fn new(model_hash: &str, templates: PathTemplates, experts: Vec<PathExpert>) -> Self {
        PathDetector { format: FORMAT.into(), model_hash: model_hash.into(), templates, experts, threshold: 0.5, record: None }
    }

    /// Adversarial scores in [0, 1] for an eval-mode forward pass.
    pub fn score(&self, out: &ForwardOutput) -> Result<Array1<f64>> {
        let views = PathViews::of(out, &self.templates);
        let scores = self.experts.iter().map(|e| e.score_rows(&e.features.rows_of(&views))).collect::<Result<Vec<_>>>()?;
        Ok(noisy_or(&scores))
    }

    /// What the screener reports of a forward pass: each expert's scores (the adversarial
    /// score is their [`noisy_or`]), the path statistics (see [`crate::path::features`],
    /// computed once for the experts and the caller's path summaries) and each layer's
    /// evidence.
    pub fn read(&self, out: &ForwardOutput) -> Result<Reading> {
        let views = PathViews::of(out, &self.templates);
        let sizes: Vec<usize> = self.templates.layer_sizes.iter().map(|&s| s as usize).collect();
        let n = out.logits.size()[0] as usize;
        let mut layer_evidence = Array2::<f64>::zeros((n, sizes.len()));
        let mut expert_scores = Vec::with_capacity(self.experts.len());
        for e in &self.experts {
            let rows = e.features.rows_of(&views);
            expert_scores.push(e.score_rows(&rows)?);
            // A logistic expert's logit is intercept + sum_j w_j x_j over standardised columns:
            // the part of that sum from one layer's columns is that layer's exact share.
            let x = e.classifier.standardizer.transform(rows.view()).map_err(|err| Error::InvalidInput(format!("{}: {err}", e.name)))?;
            for (j, &w) in e.classifier.weights.iter().enumerate() {
                if let Some(layer) = e.features.column_layer(j, &sizes) {
                    let mut column = layer_evidence.column_mut(layer);
                    column.scaled_add(w, &x.column(j));
                }
            }
        }
        Ok(Reading { expert_scores, statistics: views.statistics, layer_evidence })
    }

    /// Per-expert scores of precomputed representations (computed with these templates).
    pub fn expert_scores(&self, reps: &Representations) -> Result<Vec<Array1<f64>>> {
        self.experts.iter().map(|e| e.score_rows(&reps.detector_rows(&e.features))).collect()
    }

    /// Adversarial scores of precomputed representations.
    pub fn score_representations(&self, reps: &Representations) -> Result<Array1<f64>> {
        Ok(noisy_or(&self.expert_scores(reps)?))
    }

    /// Sets the threshold so that at most `fpr` of the clean rows are flagged.
    pub fn calibrate(&mut self, clean: &Representations, fpr: f64) -> Result<()> {
        let scores = self.score_representations(clean)?;
        self.threshold = detectors::threshold_at_fpr(scores.as_slice().expect("contiguous"), fpr)
            .map_err(Error::detector("setting the threshold"))?;
        Ok(())
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// SHA-256 of the detector as `save` writes it (the bytes of its `detector.json`).
    pub fn sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec_pretty(self).expect("detector serialises");
        Sha256::digest(&json).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Writes `detector.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("detector serialises");
        crate::model::checkpoint::write_atomic(path, &json)
    }

    /// Loads a detector and checks that it belongs to the model with `model_hash`.
    pub fn load(path: &Path, model_hash: &str) -> Result<Self> {
        let fail = |reason: String| Error::Checkpoint { path: path.into(), reason };
        let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read detector: {e}")))?;
        let detector: PathDetector =
            serde_json::from_slice(&bytes).map_err(|e| fail(format!("not a valid detector file: {e}")))?;
        if detector.format != FORMAT {
            return Err(fail(format!("format {} is not {FORMAT}; refit it with `pathguard fit-detector`", detector.format)));
        }
        if detector.model_hash != model_hash {
            return Err(fail(format!(
                "fitted on model {}, not on the loaded model {model_hash}; refit it with `pathguard fit-detector`",
                detector.model_hash
            )));
        }
        if detector.experts.is_empty() {
            return Err(fail("no experts".into()));
        }
        if !(0.0..=1.0).contains(&detector.threshold) {
            return Err(fail(format!("threshold {} is not in [0, 1]", detector.threshold)));
        }
        for expert in &detector.experts {
            let spec = &expert.features;
            let current = FeatureSpec::for_layers(spec.layers);
            if !spec.names.is_empty() && spec.names != current.names {
                return Err(fail(format!(
                    "expert {}: its path statistics ({} columns) are not the ones this pathguard computes ({}); refit it with `pathguard fit-detector`",
                    expert.name,
                    spec.names.len(),
                    current.names.len()
                )));
            }
            if spec.len() != expert.classifier.weights.len() {
                return Err(fail(format!(
                    "expert {}: {} features but {} classifier weights",
                    expert.name,
                    spec.len(),
                    expert.classifier.weights.len()
                )));
            }
        }
        Ok(detector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noisy_or_is_high_when_either_expert_is() {
        let a = Array1::from(vec![0.0, 0.9, 0.0, 0.5]);
        let b = Array1::from(vec![0.0, 0.0, 0.8, 0.5]);
        let s = noisy_or(&[a, b]);
        let expected = [0.0, 0.9, 0.8, 0.75];
        for (x, y) in s.iter().zip(expected) {
            assert!((x - y).abs() < 1e-12, "{s:?}");
        }
    }

    #[test]
    fn the_detector_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PathDetector>();
    }
}
