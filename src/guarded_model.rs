//! The decoupled CNN and its path detector as one target for detector-aware attacks
//! ([`attacks::GuardedClassifier`]): gradients through the model with surrogate gates and the
//! [`DetectorTwin`]; the verdict "flagged" from the real detector with hard gates.

use attacks::GuardedClassifier;
use tch::{Kind, Tensor};

use crate::detector::PathDetector;
use crate::detector_twin::DetectorTwin;
use crate::model::{DecoupledCnn, GateMode};

pub struct GuardedModel<'a> {
    pub model: &'a DecoupledCnn,
    pub detector: &'a PathDetector,
    twin: DetectorTwin,
}

impl<'a> GuardedModel<'a> {
    pub fn new(model: &'a DecoupledCnn, detector: &'a PathDetector, device: tch::Device) -> Self {
        GuardedModel { model, detector, twin: DetectorTwin::new(detector, device) }
    }
}

impl GuardedClassifier for GuardedModel<'_> {
    /// The detector's loss is -log(1 - score) = the sum of softplus of the experts' logits:
    /// smooth, and steepest where the score is near 1 (where the sigmoid saturates).
    fn logits_and_detection(&self, images: &Tensor) -> (Tensor, Tensor) {
        let out = self.model.forward_with_path(images, GateMode::EvalSurrogate);
        let mut loss = Tensor::zeros([images.size()[0]], (Kind::Double, images.device()));
        for logit in self.twin.expert_logits(&out) {
            loss = loss + logit.softplus();
        }
        (out.logits, loss)
    }

    fn flagged(&self, images: &Tensor) -> Tensor {
        let scores = tch::no_grad(|| self.detector.score(&self.model.forward_with_path(images, GateMode::Eval)))
            .map(|s| s.to_vec())
            .unwrap_or_else(|_| vec![f64::INFINITY; images.size()[0] as usize]);
        Tensor::from_slice(&scores).ge(self.detector.threshold()).to_device(images.device())
    }

    fn num_classes(&self) -> i64 {
        self.model.config().num_classes
    }
}
