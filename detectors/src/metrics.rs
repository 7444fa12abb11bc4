//! Detection metrics: ROC curve, area under it, TPR at a fixed FPR, thresholds.

use serde::{Deserialize, Serialize};

use crate::{DetectorError, Result};

/// The figures every detector is judged by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionMetrics {
    pub auroc: f64,
    pub tpr_at_5_fpr: f64,
    /// Accuracy of flag = (score >= threshold) on the scored clean + adversarial rows.
    pub detection_accuracy: f64,
    pub threshold: f64,
    pub clean: usize,
    pub adversarial: usize,
}

impl DetectionMetrics {
    pub fn compute(scores: &[f64], is_adversarial: &[bool], threshold: f64) -> Result<Self> {
        let (clean, adversarial) = counts(scores, is_adversarial)?;
        let correct = scores.iter().zip(is_adversarial).filter(|(s, &a)| (**s >= threshold) == a).count();
        Ok(DetectionMetrics {
            auroc: roc_auc(scores, is_adversarial)?,
            tpr_at_5_fpr: tpr_at_fpr(scores, is_adversarial, 0.05)?,
            detection_accuracy: correct as f64 / scores.len() as f64,
            threshold,
            clean,
            adversarial,
        })
    }
}

fn counts(scores: &[f64], is_adversarial: &[bool]) -> Result<(usize, usize)> {
    if scores.len() != is_adversarial.len() {
        return Err(DetectorError::LabelCount { rows: scores.len(), labels: is_adversarial.len() });
    }
    let adversarial = is_adversarial.iter().filter(|&&a| a).count();
    let clean = scores.len() - adversarial;
    if clean == 0 || adversarial == 0 {
        return Err(DetectorError::OneClass { clean, adversarial });
    }
    if let Some((i, v)) = scores.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(DetectorError::NonFinite { row: i, col: 0, value: *v });
    }
    Ok((clean, adversarial))
}

/// ROC curve points `(fpr, tpr)` from the highest threshold down, starting at (0, 0) and
/// ending at (1, 1). Tied scores form one step.
pub fn roc_curve(scores: &[f64], is_adversarial: &[bool]) -> Result<Vec<(f64, f64)>> {
    let (clean, adversarial) = counts(scores, is_adversarial)?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).expect("finite"));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < order.len() {
        let s = scores[order[i]];
        while i < order.len() && scores[order[i]] == s {
            if is_adversarial[order[i]] { tp += 1 } else { fp += 1 }
            i += 1;
        }
        points.push((fp as f64 / clean as f64, tp as f64 / adversarial as f64));
    }
    Ok(points)
}

/// Area under the ROC curve (trapezoids; 0.5 = chance, 1 = perfect).
pub fn roc_auc(scores: &[f64], is_adversarial: &[bool]) -> Result<f64> {
    let points = roc_curve(scores, is_adversarial)?;
    Ok(points.windows(2).map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0).sum())
}

/// The largest TPR reachable with FPR <= `fpr`.
pub fn tpr_at_fpr(scores: &[f64], is_adversarial: &[bool], fpr: f64) -> Result<f64> {
    check_fpr(fpr)?;
    let points = roc_curve(scores, is_adversarial)?;
    Ok(points.iter().filter(|(f, _)| *f <= fpr + 1e-12).map(|(_, t)| *t).fold(0.0, f64::max))
}

/// The threshold that flags at most a fraction `fpr` of `clean_scores` (flag = score >= t).
pub fn threshold_at_fpr(clean_scores: &[f64], fpr: f64) -> Result<f64> {
    check_fpr(fpr)?;
    if clean_scores.is_empty() {
        return Err(DetectorError::Empty);
    }
    let mut sorted = clean_scores.to_vec();
    sorted.sort_by(|a, b| b.partial_cmp(a).expect("finite scores"));
    // Allowed false positives; the threshold sits just above the next clean score.
    let allowed = (fpr * sorted.len() as f64).floor() as usize;
    let t = sorted[allowed.min(sorted.len() - 1)];
    Ok(next_up(t).min(1.0))
}

fn next_up(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    let bits = x.to_bits();
    let next = if x >= 0.0 { bits + 1 } else { bits - 1 };
    f64::from_bits(if x == 0.0 { 1 } else { next })
}

fn check_fpr(fpr: f64) -> Result<()> {
    if fpr > 0.0 && fpr < 1.0 { Ok(()) } else { Err(DetectorError::FalsePositiveRate(fpr)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_random_and_inverted_scores() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels).unwrap(), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels).unwrap(), 0.0);
        assert_eq!(roc_auc(&[0.5, 0.5, 0.5, 0.5], &labels).unwrap(), 0.5);
    }

    #[test]
    fn auc_matches_pairwise_count() {
        // AUC = P(score_adv > score_clean) + 0.5 P(tie)
        let scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.7];
        let labels = [false, false, true, true, true, false];
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for (i, &a) in labels.iter().enumerate() {
            for (j, &b) in labels.iter().enumerate() {
                if a && !b {
                    pairs += 1.0;
                    wins += if scores[i] > scores[j] { 1.0 } else if scores[i] == scores[j] { 0.5 } else { 0.0 };
                }
            }
        }
        assert!((roc_auc(&scores, &labels).unwrap() - wins / pairs).abs() < 1e-12);
    }

    #[test]
    fn tpr_at_fpr_and_threshold() {
        let clean: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        let t = threshold_at_fpr(&clean, 0.05).unwrap();
        let flagged = clean.iter().filter(|&&s| s >= t).count();
        assert_eq!(flagged, 5);
        let mut scores = clean.clone();
        scores.extend([0.5, 0.97, 0.99, 2.0]);
        let mut labels = vec![false; 100];
        labels.extend([true; 4]);
        // At FPR 5% (clean scores >= 0.95 flagged), adversarial 0.97, 0.99 and 2.0 are caught.
        assert_eq!(tpr_at_fpr(&scores, &labels, 0.05).unwrap(), 0.75);
    }

    #[test]
    fn bad_inputs_are_named() {
        assert_eq!(roc_auc(&[0.1], &[false, true]).unwrap_err(), DetectorError::LabelCount { rows: 1, labels: 2 });
        assert_eq!(roc_auc(&[0.1, 0.2], &[false, false]).unwrap_err(), DetectorError::OneClass { clean: 2, adversarial: 0 });
        assert_eq!(threshold_at_fpr(&[0.1], 1.5).unwrap_err(), DetectorError::FalsePositiveRate(1.5));
        assert!(matches!(roc_auc(&[f64::NAN, 0.2], &[false, true]).unwrap_err(), DetectorError::NonFinite { .. }));
    }
}
