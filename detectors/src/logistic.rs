//! A standardised logistic-regression detector (linfa-logistic), the default classifier of
//! the path-statistics detector and of the raw-activation baseline.

use linfa::traits::Fit;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::{check_finite, Detector, DetectorError, Result, Standardizer};

/// Unchecked parameters.
#[derive(Debug, Clone)]
pub struct LogisticDetectorParams {
    pub name: String,
    /// L2 regularisation strength (linfa's alpha).
    pub regularisation: f64,
    pub max_iterations: u64,
}

impl LogisticDetectorParams {
    pub fn new(name: impl Into<String>) -> Self {
        LogisticDetectorParams { name: name.into(), regularisation: 1.0, max_iterations: 200 }
    }

    pub fn regularisation(mut self, alpha: f64) -> Self {
        self.regularisation = alpha;
        self
    }

    pub fn max_iterations(mut self, n: u64) -> Self {
        self.max_iterations = n;
        self
    }

    /// Validates every rule.
    pub fn check(self) -> Result<ValidLogisticDetectorParams> {
        if !(self.regularisation.is_finite() && self.regularisation >= 0.0) {
            return Err(DetectorError::Regularisation(self.regularisation));
        }
        if self.max_iterations < 1 {
            return Err(DetectorError::MaxIterations(self.max_iterations));
        }
        Ok(ValidLogisticDetectorParams(self))
    }
}

/// Checked parameters, ready to fit.
#[derive(Debug, Clone)]
pub struct ValidLogisticDetectorParams(LogisticDetectorParams);

impl ValidLogisticDetectorParams {
    /// Fits on rows labelled clean (`false`) or adversarial (`true`). The threshold starts at
    /// 0.5; set it for a target false-positive rate with [`LogisticDetector::calibrate`].
    pub fn fit(&self, rows: ArrayView2<f64>, is_adversarial: &[bool]) -> Result<LogisticDetector> {
        if rows.nrows() == 0 {
            return Err(DetectorError::Empty);
        }
        if rows.nrows() != is_adversarial.len() {
            return Err(DetectorError::LabelCount { rows: rows.nrows(), labels: is_adversarial.len() });
        }
        let adversarial = is_adversarial.iter().filter(|&&a| a).count();
        if adversarial == 0 || adversarial == rows.nrows() {
            return Err(DetectorError::OneClass { clean: rows.nrows() - adversarial, adversarial });
        }
        check_finite(rows)?;
        let standardizer = Standardizer::fit(rows)?;
        let x = standardizer.transform(rows)?;
        let y: Array1<usize> = is_adversarial.iter().map(|&a| a as usize).collect();
        let dataset = linfa::Dataset::new(x, y);
        let fitted = LogisticRegression::default()
            .alpha(self.0.regularisation)
            .max_iterations(self.0.max_iterations)
            .fit(&dataset)
            .map_err(|e| DetectorError::Fit(e.to_string()))?;
        // linfa's "positive" class is whichever label it met first; orient the model so that
        // the probability is always that of "adversarial".
        let sign = if fitted.labels().pos.class == 1 { 1.0 } else { -1.0 };
        Ok(LogisticDetector {
            name: self.0.name.clone(),
            standardizer,
            weights: fitted.params().iter().map(|w| w * sign).collect(),
            intercept: fitted.intercept() * sign,
            threshold: 0.5,
        })
    }
}

/// A fitted logistic detector; serialisable so that it can be saved with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticDetector {
    pub name: String,
    pub standardizer: Standardizer,
    pub weights: Vec<f64>,
    pub intercept: f64,
    /// Flag = score >= threshold.
    pub threshold: f64,
}

impl LogisticDetector {
    /// Sets the threshold so that at most `fpr` of `clean_rows` are flagged.
    pub fn calibrate(&mut self, clean_rows: ArrayView2<f64>, fpr: f64) -> Result<()> {
        let scores = self.score(clean_rows)?;
        self.threshold = crate::threshold_at_fpr(scores.as_slice().expect("contiguous"), fpr)?;
        Ok(())
    }

    /// Per-feature contribution `w_j * standardised x_j` of each row (for explanations).
    pub fn contributions(&self, rows: ArrayView2<f64>) -> Result<ndarray::Array2<f64>> {
        let x = self.standardizer.transform(rows)?;
        Ok(x * &Array1::from(self.weights.clone()))
    }
}

impl Detector for LogisticDetector {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, rows: ArrayView2<f64>) -> Result<Array1<f64>> {
        check_finite(rows)?;
        let x = self.standardizer.transform(rows)?;
        let logits = x.dot(&Array1::from(self.weights.clone())) + self.intercept;
        Ok(logits.mapv(|z| 1.0 / (1.0 + (-z).exp())))
    }
}
