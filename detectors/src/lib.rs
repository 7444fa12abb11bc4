//! Adversarial-input detectors on feature rows (ndarray + linfa, no tch).
//!
//! A detector is fitted on labelled feature rows (clean = `false`, adversarial = `true`) and
//! scores new rows in [0, 1], higher meaning more likely adversarial; a threshold turns scores
//! into flags. This crate is a leaf: rows may come from pathguard's calculation paths or from
//! any other source, and it knows nothing of the model or the server.
//!
//! Parameters follow linfa's habit: unchecked params -> `check()` -> checked params ->
//! `fit()` -> a fitted type, with one error variant per validation rule.

mod error;
pub mod logistic;
pub mod mahalanobis;
pub mod lid;
pub mod metrics;
pub mod standardize;

pub use error::DetectorError;
pub use logistic::{LogisticDetector, LogisticDetectorParams};
pub use mahalanobis::{MahalanobisDetector, MahalanobisParams};
pub use lid::{lid_estimates, LidParams};
pub use metrics::{roc_auc, roc_curve, threshold_at_fpr, tpr_at_fpr, DetectionMetrics};
pub use standardize::Standardizer;

use ndarray::{Array1, ArrayView2};

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DetectorError>;

/// A fitted detector. `Send + Sync` so that a server can share it between threads.
pub trait Detector: Send + Sync {
    /// Short name for reports.
    fn name(&self) -> &str;
    /// Scores in [0, 1] (higher = more likely adversarial), one per row.
    fn score(&self, rows: ArrayView2<f64>) -> Result<Array1<f64>>;
}

/// Max-softmax baseline (Hendrycks & Gimpel 2017): score = 1 - max class probability.
/// Rows are class probabilities; nothing to fit.
#[derive(Debug, Clone, Default)]
pub struct MaxSoftmax;

impl Detector for MaxSoftmax {
    fn name(&self) -> &str {
        "max-softmax"
    }

    fn score(&self, rows: ArrayView2<f64>) -> Result<Array1<f64>> {
        check_finite(rows)?;
        Ok(rows.rows().into_iter().map(|r| 1.0 - r.iter().cloned().fold(0.0, f64::max)).collect())
    }
}

/// Checks that every value is finite, naming the first offender.
pub fn check_finite(rows: ArrayView2<f64>) -> Result<()> {
    match rows.indexed_iter().find(|(_, v)| !v.is_finite()) {
        Some(((row, col), v)) => Err(DetectorError::NonFinite { row, col, value: *v }),
        None => Ok(()),
    }
}
