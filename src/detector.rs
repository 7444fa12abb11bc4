//! The path-statistics detector: path features (see [`crate::path::features`]) of the
//! decoupled CNN scored by a logistic regression from the `detectors` crate, with the class
//! templates it measures against and its threshold. Saved as `detector.json` beside the model.

use std::path::Path;

use detectors::{Detector, DetectionMetrics, LogisticDetector};
use ndarray::Array1;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::ForwardOutput;
use crate::path::{FeatureSpec, PathTemplates};

pub const DETECTOR_FILE: &str = "detector.json";
const FORMAT: &str = "pathguard-path-detector-v1";

/// How the detector was fitted and how it did on held-out validation images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectorRecord {
    /// Attacks whose successful adversarial images were the positive rows, e.g. "pgd eps 0.1".
    pub attacks: Vec<String>,
    pub train_images: usize,
    pub clean_rows: usize,
    pub adversarial_rows: usize,
    /// Clean validation rows used to set the threshold.
    pub validation_clean_rows: usize,
    pub target_false_positive_rate: f64,
    /// Metrics on the validation images (clean vs all attacks), at the chosen threshold.
    pub validation: DetectionMetrics,
    pub seconds: f64,
}

/// The fitted path-statistics detector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathDetector {
    pub format: String,
    /// Hash of the model whose paths it was fitted on; loading checks it.
    pub model_hash: String,
    pub features: FeatureSpec,
    pub templates: PathTemplates,
    pub classifier: LogisticDetector,
    pub record: Option<DetectorRecord>,
}

impl PathDetector {
    pub fn new(model_hash: &str, features: FeatureSpec, templates: PathTemplates, classifier: LogisticDetector) -> Self {
        PathDetector { format: FORMAT.into(), model_hash: model_hash.into(), features, templates, classifier, record: None }
    }

    /// Adversarial scores in [0, 1] for an eval-mode forward pass.
    pub fn score(&self, out: &ForwardOutput) -> Result<Array1<f64>> {
        let rows = self.features.rows(out, &self.templates);
        self.classifier.score(rows.view()).map_err(|e| Error::InvalidInput(format!("detector: {e}")))
    }

    pub fn threshold(&self) -> f64 {
        self.classifier.threshold
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
            return Err(fail(format!("format {} is not {FORMAT}", detector.format)));
        }
        if detector.model_hash != model_hash {
            return Err(fail(format!(
                "fitted on model {}, not on the loaded model {model_hash}; refit it with `pathguard fit-detector`",
                detector.model_hash
            )));
        }
        let current = FeatureSpec::for_layers(detector.features.layers);
        if detector.features.names != current.names {
            return Err(fail(format!(
                "its path features ({} columns) are not the ones this pathguard computes ({}); refit it with `pathguard fit-detector`",
                detector.features.names.len(),
                current.names.len()
            )));
        }
        if detector.features.len() != detector.classifier.weights.len() {
            return Err(fail(format!(
                "{} features but {} classifier weights",
                detector.features.len(),
                detector.classifier.weights.len()
            )));
        }
        Ok(detector)
    }
}
