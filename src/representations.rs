//! What detectors see of a set of images. One eval-mode forward pass per batch gives every
//! view at once: the path features of our detector, the raw path bits, the class
//! probabilities (max-softmax baseline), the penultimate features (Mahalanobis baseline) and
//! the pooled activations of the gated layers (LID and raw-activation baselines).

use ndarray::{concatenate, Array2, Axis};
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::model::{DecoupledCnn, GateMode};
use crate::path::features::{to_ndarray, PathViews};
use crate::path::PathTemplates;

/// Row-aligned views of N images (row i of every matrix is image i).
#[derive(Debug, Clone)]
pub struct Representations {
    /// Predicted class of each image.
    pub predictions: Vec<i64>,
    /// Path features `[N, 6L + 1]` (see [`crate::path::features`]).
    pub path_features: Array2<f64>,
    /// The path, one 0/1 column per gate `[N, total_gates]`.
    pub path_bits: Array2<f64>,
    /// Softmax class probabilities `[N, classes]`.
    pub probabilities: Array2<f64>,
    /// Input of the classifier `[N, C_last]`.
    pub penultimate: Array2<f64>,
    /// Controlling-module outputs before thresholding, concatenated `[N, total_gates]`.
    pub gate_logits: Array2<f64>,
    /// Pre-gate global-average-pooled outputs of the gated layers, concatenated `[N, total_gates]`.
    pub activations: Array2<f64>,
    /// Width of each gated layer in `path_bits` and `activations`.
    pub layer_sizes: Vec<usize>,
}

impl Representations {
    /// Computes every view of `images` (`[N, C, H, W]` float, any device) in batches.
    pub fn compute(
        model: &DecoupledCnn,
        device: Device,
        images: &Tensor,
        templates: &PathTemplates,
        batch_size: usize,
    ) -> Result<Self> {
        let n = images.size()[0];
        let layer_sizes: Vec<usize> = model.config().gate_sizes().iter().map(|&s| s as usize).collect();
        let mut parts = Vec::new();
        for start in (0..n).step_by(batch_size.max(1)) {
            let len = (batch_size as i64).min(n - start);
            let x = images.narrow(0, start, len).to_device(device);
            model.check_input(&x)?;
            let out = tch::no_grad(|| model.forward_with_path(&x, GateMode::Eval));
            let views = PathViews::of(&out, templates);
            parts.push(Representations {
                predictions: Vec::<i64>::try_from(out.logits.argmax(1, false).to_device(Device::Cpu))
                    .expect("int64 predictions"),
                path_features: views.statistics,
                path_bits: views.path_bits,
                probabilities: to_ndarray(&out.logits.softmax(1, Kind::Float)),
                penultimate: to_ndarray(&out.penultimate),
                activations: to_ndarray(&Tensor::cat(&out.pooled_outputs, 1)),
                gate_logits: views.gate_logits,
                layer_sizes: layer_sizes.clone(),
            });
        }
        Ok(Self::concat(&parts.iter().collect::<Vec<_>>()).unwrap_or_else(|| Self::empty(model, templates)))
    }

    fn empty(model: &DecoupledCnn, templates: &PathTemplates) -> Self {
        let c = model.config();
        let gates: usize = c.gate_sizes().iter().map(|&s| s as usize).sum();
        let features = crate::path::FeatureSpec::for_layers(templates.layer_sizes.len()).len();
        let last = c.layers.last().map(|l| l.out_channels as usize).unwrap_or(0);
        Representations {
            predictions: Vec::new(),
            path_features: Array2::zeros((0, features)),
            path_bits: Array2::zeros((0, gates)),
            probabilities: Array2::zeros((0, c.num_classes as usize)),
            penultimate: Array2::zeros((0, last)),
            activations: Array2::zeros((0, gates)),
            gate_logits: Array2::zeros((0, gates)),
            layer_sizes: c.gate_sizes().iter().map(|&s| s as usize).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.predictions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.predictions.is_empty()
    }

    /// The rows at `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Self {
        Representations {
            predictions: rows.iter().map(|&i| self.predictions[i]).collect(),
            path_features: self.path_features.select(Axis(0), rows),
            path_bits: self.path_bits.select(Axis(0), rows),
            probabilities: self.probabilities.select(Axis(0), rows),
            penultimate: self.penultimate.select(Axis(0), rows),
            activations: self.activations.select(Axis(0), rows),
            gate_logits: self.gate_logits.select(Axis(0), rows),
            layer_sizes: self.layer_sizes.clone(),
        }
    }

    /// The rows of `parts` one after the other; `None` when `parts` is empty.
    pub fn concat(parts: &[&Self]) -> Option<Self> {
        let first = parts.first()?;
        let stack = |view: fn(&Self) -> &Array2<f64>| {
            let views: Vec<_> = parts.iter().map(|p| view(p).view()).collect();
            concatenate(Axis(0), &views).expect("views of one model have the same width")
        };
        Some(Representations {
            predictions: parts.iter().flat_map(|p| p.predictions.iter().copied()).collect(),
            path_features: stack(|p| &p.path_features),
            path_bits: stack(|p| &p.path_bits),
            probabilities: stack(|p| &p.probabilities),
            penultimate: stack(|p| &p.penultimate),
            activations: stack(|p| &p.activations),
            gate_logits: stack(|p| &p.gate_logits),
            layer_sizes: first.layer_sizes.clone(),
        })
    }

    /// The rows a path detector with `spec` scores: path statistics, then path bits if the
    /// spec has them.
    pub fn detector_rows(&self, spec: &crate::path::FeatureSpec) -> Array2<f64> {
        spec.select(self.path_features.view(), self.path_bits.view(), self.gate_logits.view())
    }

    /// Column blocks of `activations`, one per gated layer.
    pub fn activation_layers(&self) -> Vec<Array2<f64>> {
        let mut start = 0;
        self.layer_sizes
            .iter()
            .map(|&size| {
                let block = self.activations.slice(ndarray::s![.., start..start + size]).to_owned();
                start += size;
                block
            })
            .collect()
    }
}
