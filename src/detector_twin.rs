//! A differentiable twin of the path detector (issue 14, part 1): the same path statistics,
//! standardisers, logistic experts and noisy-OR as [`PathDetector`], computed in libtorch
//! from one forward pass, so that an attack that knows the detector can follow its gradient.
//!
//! Run the model with [`GateMode::EvalSurrogate`](crate::model::GateMode::EvalSurrogate): the
//! forward values are exactly the hard gates' (so the twin's scores equal the detector's), and
//! the backward pass goes straight through a sigmoid of the gate logits (BPDA). Template
//! distances are written so that they have a gradient on 0/1 gates (see
//! [`crate::path::features::path_feature_tensor`]). Every success found with the twin is to
//! be checked again on the real detector with hard gates.

use tch::{Device, Kind, Tensor};

use crate::detector::PathDetector;
use crate::model::ForwardOutput;
use crate::path::features::path_feature_tensor;
use crate::path::{FeatureSpec, PathTemplates};

/// One logistic expert as tensors (float64, like the detectors crate).
struct TwinExpert {
    spec: FeatureSpec,
    mean: Tensor,
    scale: Tensor,
    weights: Tensor,
    intercept: f64,
}

/// The detector in libtorch, on one device.
pub struct DetectorTwin {
    templates: PathTemplates,
    experts: Vec<TwinExpert>,
    pub threshold: f64,
}

impl DetectorTwin {
    pub fn new(detector: &PathDetector, device: Device) -> Self {
        let vector = |v: &[f64]| Tensor::from_slice(v).to_device(device);
        let experts = detector
            .experts
            .iter()
            .map(|e| TwinExpert {
                spec: e.features.clone(),
                mean: vector(&e.classifier.standardizer.mean),
                scale: vector(&e.classifier.standardizer.scale),
                weights: vector(&e.classifier.weights),
                intercept: e.classifier.intercept,
            })
            .collect();
        DetectorTwin { templates: detector.templates.clone(), experts, threshold: detector.threshold() }
    }

    /// Each expert's logit `[N]` (float64, before its sigmoid) for a forward pass with path
    /// and heads (`forward_with_path`).
    pub fn expert_logits(&self, out: &ForwardOutput) -> Vec<Tensor> {
        let statistics = path_feature_tensor(out, &self.templates);
        self.experts
            .iter()
            .map(|e| {
                let rows = e.spec.tensor_rows(Some(&statistics), out).to_kind(Kind::Double);
                ((rows - &e.mean) / &e.scale).matmul(&e.weights) + e.intercept
            })
            .collect()
    }

    /// Adversarial scores `[N]` in [0, 1] (float64): the noisy-OR of the experts.
    pub fn scores(&self, out: &ForwardOutput) -> Tensor {
        let logits = self.expert_logits(out);
        let mut keep = logits[0].ones_like();
        for logit in &logits {
            keep = keep * (logit.sigmoid().neg() + 1.0);
        }
        keep.neg() + 1.0
    }
}
