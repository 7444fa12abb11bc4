use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::{DetectorError, Result};

/// Per-column mean and standard deviation (constant columns keep scale 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Standardizer {
    pub fn fit(rows: ArrayView2<f64>) -> Result<Self> {
        if rows.nrows() == 0 {
            return Err(DetectorError::Empty);
        }
        let mean = rows.mean_axis(Axis(0)).expect("non-empty");
        let std = rows.std_axis(Axis(0), 0.0);
        let scale = std.iter().map(|&s| if s > 1e-12 { s } else { 1.0 }).collect();
        Ok(Standardizer { mean: mean.to_vec(), scale })
    }

    pub fn transform(&self, rows: ArrayView2<f64>) -> Result<Array2<f64>> {
        if rows.ncols() != self.mean.len() {
            return Err(DetectorError::FeatureCount { expected: self.mean.len(), found: rows.ncols() });
        }
        let mean = Array1::from(self.mean.clone());
        let scale = Array1::from(self.scale.clone());
        Ok((&rows - &mean) / &scale)
    }
}
