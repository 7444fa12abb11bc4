//! Every detector of the evaluation, fitted on the same training material: ours and the
//! baselines people already use.

use detectors::{
    lid_estimates, Detector, LidParams, LogisticDetector, LogisticDetectorParams, MahalanobisDetector,
    MahalanobisParams, MaxSoftmax,
};
use ndarray::{Array1, Array2};

use crate::detector::PathDetector;
use crate::detector_fit::labelled_rows;
use crate::error::{Error, Result};
use crate::representations::Representations;

pub const OURS: &str = "path detector (ours)";
pub const SHIPPED: &str = "shipped detector.json (ours)";
pub const GATE_LOGIT_EXPERT: &str = "gate-logit expert alone";
pub const PATH_STATISTICS_EXPERT: &str = "path-statistics expert alone";
pub const PATH_BITS: &str = "path bits + logistic";
pub const RAW_ACTIVATIONS: &str = "raw activations + logistic";
pub const MAHALANOBIS: &str = "Mahalanobis";
pub const LID: &str = "LID";
pub const MAX_SOFTMAX: &str = "max-softmax";

/// Neighbours of the LID estimate (Ma et al. 2018 use 20).
const LID_NEIGHBOURS: usize = 20;
/// Clean training rows LID measures distances to.
const LID_REFERENCE_ROWS: usize = 1000;

/// LID (Ma et al. 2018): one LID estimate per layer (each gated layer's pooled activations,
/// the penultimate features, the class probabilities) against clean reference rows, then a
/// logistic regression on those estimates.
pub struct LidDetector {
    reference: Vec<Array2<f64>>,
    classifier: LogisticDetector,
}

impl LidDetector {
    fn layers(reps: &Representations) -> Vec<Array2<f64>> {
        let mut layers = reps.activation_layers();
        layers.push(reps.penultimate.clone());
        layers.push(reps.probabilities.clone());
        layers
    }

    fn estimates(reference: &[Array2<f64>], reps: &Representations) -> Result<Array2<f64>> {
        let layers = Self::layers(reps);
        let mut out = Array2::zeros((reps.len(), layers.len()));
        for (j, (rows, reference)) in layers.iter().zip(reference).enumerate() {
            let lid = lid_estimates(rows.view(), reference.view(), &LidParams { k: LID_NEIGHBOURS })
                .map_err(Error::detector("LID"))?;
            out.column_mut(j).assign(&lid);
        }
        Ok(out)
    }

    fn fit(clean: &Representations, adversarial: &Representations) -> Result<Self> {
        let reference_rows: Vec<usize> = (0..clean.len().min(LID_REFERENCE_ROWS)).collect();
        let reference = Self::layers(&clean.select(&reference_rows));
        let clean_lid = Self::estimates(&reference, clean)?;
        let adversarial_lid = Self::estimates(&reference, adversarial)?;
        let (rows, labels) = labelled_rows(&clean_lid, &adversarial_lid);
        let classifier = fit_logistic(LID, &rows, &labels)?;
        Ok(LidDetector { reference, classifier })
    }

    fn score(&self, reps: &Representations) -> Result<Array1<f64>> {
        let rows = Self::estimates(&self.reference, reps)?;
        self.classifier.score(rows.view()).map_err(Error::detector("LID"))
    }
}

fn fit_logistic(name: &str, rows: &Array2<f64>, labels: &[bool]) -> Result<LogisticDetector> {
    LogisticDetectorParams::new(name)
        .check()
        .and_then(|p| p.fit(rows.view(), labels))
        .map_err(Error::detector(format!("fitting {name}")))
}

/// Which columns of the representations a logistic detector reads.
#[derive(Debug, Clone)]
pub enum View {
    /// The rows of a path detector with this spec.
    PathBits,
    Activations,
}

impl View {
    pub fn rows(&self, reps: &Representations) -> Array2<f64> {
        match self {
            View::PathBits => reps.path_bits.clone(),
            View::Activations => reps.activations.clone(),
        }
    }
}

/// A logistic detector on one view of the representations.
pub struct ViewDetector {
    view: View,
    classifier: LogisticDetector,
}

impl ViewDetector {
    pub fn fit(name: &str, clean: &Representations, adversarial: &Representations, view: View) -> Result<Self> {
        let (rows, labels) = labelled_rows(&view.rows(clean), &view.rows(adversarial));
        Ok(ViewDetector { classifier: fit_logistic(name, &rows, &labels)?, view })
    }

    pub fn score(&self, reps: &Representations) -> Result<Array1<f64>> {
        self.classifier.score(self.view.rows(reps).view()).map_err(Error::detector("scoring"))
    }
}

/// The fitted detectors, scored side by side.
pub struct DetectorSuite {
    ours: PathDetector,
    shipped: Option<PathDetector>,
    path_bits: ViewDetector,
    raw_activations: ViewDetector,
    mahalanobis: MahalanobisDetector,
    lid: LidDetector,
}

impl DetectorSuite {
    /// Fits every detector on clean versus adversarial training rows (`ours` is fitted by the
    /// caller, the same way `fit-detector` does). `shipped`, when given, is scored as it is
    /// (the representations must be computed with its templates).
    pub fn fit(
        clean: &Representations,
        adversarial: &Representations,
        ours: PathDetector,
        shipped: Option<PathDetector>,
    ) -> Result<Self> {
        let labels: Vec<usize> = clean.predictions.iter().map(|&p| p as usize).collect();
        let classes = clean.probabilities.ncols();
        let mahalanobis = MahalanobisParams::new(classes)
            .fit(clean.penultimate.view(), &labels)
            .map_err(Error::detector(format!("fitting {MAHALANOBIS}")))?;
        Ok(DetectorSuite {
            ours,
            shipped,
            path_bits: ViewDetector::fit(PATH_BITS, clean, adversarial, View::PathBits)?,
            raw_activations: ViewDetector::fit(RAW_ACTIVATIONS, clean, adversarial, View::Activations)?,
            mahalanobis,
            lid: LidDetector::fit(clean, adversarial)?,
        })
    }

    /// Names in report order.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = vec![OURS];
        if self.shipped.is_some() {
            names.push(SHIPPED);
        }
        names.extend([GATE_LOGIT_EXPERT, PATH_STATISTICS_EXPERT, PATH_BITS, RAW_ACTIVATIONS, MAHALANOBIS, LID, MAX_SOFTMAX]);
        names
    }

    /// Scores of every detector on `reps`, in [`Self::names`] order.
    pub fn score(&self, reps: &Representations) -> Result<Vec<(&'static str, Array1<f64>)>> {
        let wrap = |name: &str, e: detectors::DetectorError| Error::detector(name)(e);
        let experts = self.ours.expert_scores(reps)?;
        let mut scores = vec![(OURS, crate::detector::noisy_or(&experts))];
        if let Some(shipped) = &self.shipped {
            scores.push((SHIPPED, shipped.score_representations(reps)?));
        }
        let mut experts = experts.into_iter();
        scores.push((GATE_LOGIT_EXPERT, experts.next().expect("gate-logit expert")));
        scores.push((PATH_STATISTICS_EXPERT, experts.next().expect("path-statistics expert")));
        scores.push((PATH_BITS, self.path_bits.score(reps)?));
        scores.push((RAW_ACTIVATIONS, self.raw_activations.score(reps)?));
        scores.push((MAHALANOBIS, self.mahalanobis.score(reps.penultimate.view()).map_err(|e| wrap(MAHALANOBIS, e))?));
        scores.push((LID, self.lid.score(reps)?));
        scores.push((MAX_SOFTMAX, MaxSoftmax.score(reps.probabilities.view()).map_err(|e| wrap(MAX_SOFTMAX, e))?));
        Ok(scores)
    }
}
