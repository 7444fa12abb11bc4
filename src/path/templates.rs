//! Per-class path templates and distances between them.
//!
//! A path is the concatenation of an input's eval-mode gates over all gated layers, a
//! `[N, total_gates]` tensor of 0/1 values. A class template is the open frequency of each
//! gate over inputs of that class.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Templates of every class, as stored in `detector.json`: `frequencies[class][bit]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathTemplates {
    pub layer_sizes: Vec<i64>,
    pub frequencies: Vec<Vec<f32>>,
}

impl PathTemplates {
    /// Templates from clean paths `[N, B]` and their labels `[N]`.
    pub fn fit(paths: &Tensor, labels: &Tensor, num_classes: i64, layer_sizes: &[i64]) -> Self {
        let t = class_templates(paths, labels, num_classes);
        let frequencies = (0..num_classes)
            .map(|k| Vec::<f32>::try_from(t.get(k).to_kind(Kind::Float)).expect("float row"))
            .collect();
        PathTemplates { layer_sizes: layer_sizes.to_vec(), frequencies }
    }

    /// The templates as a `[K, B]` tensor on `device`.
    pub fn tensor(&self, device: tch::Device) -> Tensor {
        let k = self.frequencies.len() as i64;
        let flat: Vec<f32> = self.frequencies.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([k, -1]).to_device(device)
    }
}

/// Per-class open frequency `[classes, total_gates]` from paths `[N, B]` and labels `[N]`.
/// A class with no examples gets an all-zero template.
pub fn class_templates(paths: &Tensor, labels: &Tensor, num_classes: i64) -> Tensor {
    let bits = paths.size()[1];
    let one_hot = labels.one_hot(num_classes).to_kind(Kind::Float); // [N, K]
    let sums = one_hot.transpose(0, 1).matmul(&paths.to_kind(Kind::Float)); // [K, B]
    let counts = one_hot.sum_dim_intlist([0i64].as_slice(), false, Kind::Float).clamp_min(1.0);
    debug_assert_eq!(sums.size(), vec![num_classes, bits]);
    sums / counts.unsqueeze(1)
}

/// Hamming distance (in bits) between the binarised templates (frequency > 0.5) of every
/// pair of classes, as a `[K, K]` matrix.
pub fn template_hamming(templates: &Tensor) -> Vec<Vec<f64>> {
    let binary = templates.gt(0.5).to_kind(Kind::Float);
    let k = binary.size()[0];
    (0..k)
        .map(|i| {
            (0..k)
                .map(|j| {
                    (binary.get(i) - binary.get(j)).abs().sum(Kind::Float).double_value(&[])
                })
                .collect()
        })
        .collect()
}

/// Mean and minimum of the off-diagonal entries of a square distance matrix.
pub fn off_diagonal_mean_min(matrix: &[Vec<f64>]) -> (f64, f64) {
    let values: Vec<f64> = matrix
        .iter()
        .enumerate()
        .flat_map(|(i, row)| row.iter().enumerate().filter(move |(j, _)| *j != i).map(|(_, v)| *v))
        .collect();
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (mean, values.iter().cloned().fold(f64::INFINITY, f64::min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_distances_on_hand_made_paths() {
        // Class 0: paths 1100 and 1110; class 1: 0011 twice; class 2: no examples.
        let paths = Tensor::from_slice(&[1f32, 1., 0., 0., 1., 1., 1., 0., 0., 0., 1., 1., 0., 0., 1., 1.])
            .view([4, 4]);
        let labels = Tensor::from_slice(&[0i64, 0, 1, 1]);
        let t = class_templates(&paths, &labels, 3);
        let expected = Tensor::from_slice(&[1f32, 1., 0.5, 0., 0., 0., 1., 1., 0., 0., 0., 0.])
            .view([3, 4]);
        assert!(t.allclose(&expected, 1e-6, 1e-6, false));
        let d = template_hamming(&t);
        // Binarised: 1100, 0011, 0000 (0.5 is not > 0.5).
        assert_eq!(d[0][1], 4.0);
        assert_eq!(d[0][2], 2.0);
        assert_eq!(d[1][2], 2.0);
        assert_eq!(d[1][1], 0.0);
        let (mean, min) = off_diagonal_mean_min(&d);
        assert!((mean - 8.0 / 3.0).abs() < 1e-9);
        assert_eq!(min, 2.0);
    }
}
