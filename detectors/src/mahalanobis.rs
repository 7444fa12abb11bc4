//! Mahalanobis-distance baseline (Lee et al. 2018): class means and one shared covariance of
//! penultimate features, fitted on clean rows; the score grows with the distance to the
//! closest class mean.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::{check_finite, Detector, DetectorError, Result};

/// Unchecked parameters.
#[derive(Debug, Clone)]
pub struct MahalanobisParams {
    pub classes: usize,
    /// Added to the covariance diagonal (relative to its mean) so that it inverts.
    pub ridge: f64,
}

impl MahalanobisParams {
    pub fn new(classes: usize) -> Self {
        MahalanobisParams { classes, ridge: 1e-3 }
    }

    /// Fits on clean rows and their class labels.
    pub fn fit(&self, rows: ArrayView2<f64>, labels: &[usize]) -> Result<MahalanobisDetector> {
        if !(self.ridge.is_finite() && self.ridge >= 0.0) {
            return Err(DetectorError::Regularisation(self.ridge));
        }
        if rows.nrows() == 0 {
            return Err(DetectorError::Empty);
        }
        if rows.nrows() != labels.len() {
            return Err(DetectorError::LabelCount { rows: rows.nrows(), labels: labels.len() });
        }
        check_finite(rows)?;
        if let Some((row, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= self.classes) {
            return Err(DetectorError::ClassLabel { row, label, classes: self.classes });
        }
        let d = rows.ncols();
        let mut means = Array2::<f64>::zeros((self.classes, d));
        for class in 0..self.classes {
            let members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
            if members.is_empty() {
                return Err(DetectorError::EmptyClass { class });
            }
            let mean = rows.select(Axis(0), &members).mean_axis(Axis(0)).expect("non-empty");
            means.row_mut(class).assign(&mean);
        }
        let mut centred = rows.to_owned();
        for (mut row, &label) in centred.rows_mut().into_iter().zip(labels) {
            row -= &means.row(label);
        }
        let mut covariance = centred.t().dot(&centred) / rows.nrows() as f64;
        let mean_variance = covariance.diag().mean().unwrap_or(1.0).max(1e-12);
        for i in 0..d {
            covariance[[i, i]] += self.ridge * mean_variance;
        }
        let precision = invert_spd(&covariance)
            .ok_or_else(|| DetectorError::Fit("covariance is not positive definite".into()))?;
        let mut detector = MahalanobisDetector::new(means, precision, 1.0);
        // Scale so that the median clean distance maps to a score of 0.5.
        let distances = detector.min_distances(rows)?;
        let mut sorted = distances.to_vec();
        sorted.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        detector.scale = sorted[sorted.len() / 2].max(1e-12);
        Ok(detector)
    }
}

/// A fitted Mahalanobis detector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MahalanobisDetector {
    pub means: Array2<f64>,
    pub precision: Array2<f64>,
    /// Median clean distance: score = d / (d + scale).
    pub scale: f64,
    /// `means · precision` and each mean's `μᵀPμ`, computed on first use.
    #[serde(skip)]
    projected_means: OnceLock<(Array2<f64>, Array1<f64>)>,
}

impl MahalanobisDetector {
    pub fn new(means: Array2<f64>, precision: Array2<f64>, scale: f64) -> Self {
        MahalanobisDetector { means, precision, scale, projected_means: OnceLock::new() }
    }

    /// Squared Mahalanobis distance of each row to its closest class mean, as
    /// `xᵀPx - 2 xᵀPμ + μᵀPμ` (P symmetric): one D x D product per row instead of one per
    /// row and class, which is what a single image pays for.
    pub fn min_distances(&self, rows: ArrayView2<f64>) -> Result<Array1<f64>> {
        if rows.ncols() != self.means.ncols() {
            return Err(DetectorError::FeatureCount { expected: self.means.ncols(), found: rows.ncols() });
        }
        check_finite(rows)?;
        let (mean_projections, mean_norms) = self.projected_means.get_or_init(|| {
            let projected = self.means.dot(&self.precision);
            let norms = (&projected * &self.means).sum_axis(Axis(1));
            (projected, norms)
        });
        let row_norms = (&rows.dot(&self.precision) * &rows).sum_axis(Axis(1));
        let cross = rows.dot(&mean_projections.t()); // [N, K]: xᵀPμ_k
        let mut best = Array1::from_elem(rows.nrows(), f64::INFINITY);
        for (i, b) in best.iter_mut().enumerate() {
            for (k, &norm) in mean_norms.iter().enumerate() {
                *b = b.min(row_norms[i] - 2.0 * cross[[i, k]] + norm);
            }
            // Rounding can take a distance of (nearly) zero below it.
            *b = b.max(0.0);
        }
        Ok(best)
    }
}

impl Detector for MahalanobisDetector {
    fn name(&self) -> &str {
        "mahalanobis"
    }

    fn score(&self, rows: ArrayView2<f64>) -> Result<Array1<f64>> {
        Ok(self.min_distances(rows)?.mapv(|d| d / (d + self.scale)))
    }
}

/// Inverse of a symmetric positive-definite matrix by Cholesky factorisation.
fn invert_spd(a: &Array2<f64>) -> Option<Array2<f64>> {
    let n = a.nrows();
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[[i, k]] * l[[j, k]]).sum();
            if i == j {
                let v = a[[i, i]] - s;
                if v <= 0.0 {
                    return None;
                }
                l[[i, j]] = v.sqrt();
            } else {
                l[[i, j]] = (a[[i, j]] - s) / l[[j, j]];
            }
        }
    }
    // Solve L L^T X = I column by column.
    let mut inv = Array2::<f64>::zeros((n, n));
    for col in 0..n {
        let mut y = vec![0.0; n];
        for i in 0..n {
            let s: f64 = (0..i).map(|k| l[[i, k]] * y[k]).sum();
            y[i] = ((if i == col { 1.0 } else { 0.0 }) - s) / l[[i, i]];
        }
        let mut x = vec![0.0; n];
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|k| l[[k, i]] * x[k]).sum();
            x[i] = (y[i] - s) / l[[i, i]];
        }
        for i in 0..n {
            inv[[i, col]] = x[i];
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn inverse_of_a_known_matrix() {
        let a = array![[4.0, 2.0], [2.0, 3.0]];
        let inv = invert_spd(&a).unwrap();
        let identity = a.dot(&inv);
        for i in 0..2 {
            for j in 0..2 {
                assert!((identity[[i, j]] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        assert!(invert_spd(&array![[1.0, 2.0], [2.0, 1.0]]).is_none());
    }

    #[test]
    fn min_distances_equal_the_direct_formula() {
        // A fixed pseudo-random cloud: 3 classes, 6 features.
        let value = |i: usize| ((i as f64 * 12.9898).sin() * 43758.5453).fract();
        let rows = Array2::from_shape_fn((60, 6), |(i, j)| value(i * 6 + j) + (i % 3) as f64 * 0.5);
        let labels: Vec<usize> = (0..60).map(|i| i % 3).collect();
        let detector = MahalanobisParams::new(3).fit(rows.view(), &labels).unwrap();
        let queries = Array2::from_shape_fn((7, 6), |(i, j)| 2.0 * value(1000 + i * 6 + j));
        let fast = detector.min_distances(queries.view()).unwrap();
        for (i, row) in queries.rows().into_iter().enumerate() {
            let direct = detector
                .means
                .rows()
                .into_iter()
                .map(|mean| {
                    let c = &row - &mean;
                    c.dot(&detector.precision).dot(&c)
                })
                .fold(f64::INFINITY, f64::min);
            assert!((fast[i] - direct).abs() <= 1e-9 * direct.max(1.0), "row {i}: {} vs {direct}", fast[i]);
        }
    }
}
