//! Local Intrinsic Dimensionality (Ma et al. 2018): for each row, the maximum-likelihood LID
//! estimate from its k nearest neighbours in a reference set of clean rows,
//! `LID = -( (1/k) * sum_i log(d_i / d_k) )^-1`. One LID per layer becomes one feature of a
//! logistic detector.

use ndarray::{Array1, ArrayView2};

use crate::{check_finite, DetectorError, Result};

/// Parameters of the estimate.
#[derive(Debug, Clone)]
pub struct LidParams {
    pub k: usize,
}

/// LID of each row of `rows` w.r.t. `reference` (rows identical to a reference row, at
/// distance 0, are skipped as neighbours, so a row may be part of its own reference set).
pub fn lid_estimates(rows: ArrayView2<f64>, reference: ArrayView2<f64>, params: &LidParams) -> Result<Array1<f64>> {
    let k = params.k;
    if k < 1 || k >= reference.nrows() {
        return Err(DetectorError::Neighbours { k, reference: reference.nrows() });
    }
    if rows.ncols() != reference.ncols() {
        return Err(DetectorError::FeatureCount { expected: reference.ncols(), found: rows.ncols() });
    }
    check_finite(rows)?;
    check_finite(reference)?;
    let ref_norms: Vec<f64> = reference.rows().into_iter().map(|r| r.dot(&r)).collect();
    let cross = rows.dot(&reference.t());
    Ok(rows
        .rows()
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            let norm = row.dot(&row);
            let mut d: Vec<f64> = ref_norms
                .iter()
                .enumerate()
                .map(|(j, rn)| (norm + rn - 2.0 * cross[[i, j]]).max(0.0).sqrt())
                .filter(|&d| d > 1e-9)
                .collect();
            d.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
            let d = &d[..k.min(d.len())];
            let dk = d.last().copied().unwrap_or(1.0).max(1e-12);
            let mean_log: f64 = d.iter().map(|&x| (x.max(1e-12) / dk).ln()).sum::<f64>() / d.len().max(1) as f64;
            if mean_log < 0.0 { -1.0 / mean_log } else { 0.0 }
        })
        .collect())
}
