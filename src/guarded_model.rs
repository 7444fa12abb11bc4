//! The decoupled CNN and its path detector as one target for detector-aware attacks
//! ([`attacks::GuardedClassifier`]): gradients through the model with surrogate gates and the
//! [`DetectorTwin`]; the verdict "flagged" from the real detector with hard gates.

use attacks::{GuardedClassifier, GuardedForward};
use tch::{Kind, Tensor};

use crate::detector::PathDetector;
use crate::detector_twin::DetectorTwin;
use crate::error::{Error, Result};
use crate::model::{DecoupledCnn, GateMode};

pub struct GuardedModel<'a> {
    pub model: &'a DecoupledCnn,
    pub detector: &'a PathDetector,
    twin: DetectorTwin,
    /// Per class, the gate logits `[K, total_gates]` of one clean image of that class: the
    /// path a path-matching attack imitates.
    reference_paths: Option<Tensor>,
    cancelled: &'a dyn Fn() -> bool,
}

impl<'a> GuardedModel<'a> {
    pub fn new(model: &'a DecoupledCnn, detector: &'a PathDetector, device: tch::Device) -> Self {
        GuardedModel { model, detector, twin: DetectorTwin::new(detector, device), reference_paths: None, cancelled: &|| false }
    }

    /// Tells attacks that their caller gave up once `cancelled` turns true.
    pub fn with_cancel(mut self, cancelled: &'a dyn Fn() -> bool) -> Self {
        self.cancelled = cancelled;
        self
    }

    /// Takes as each class's reference path the gate logits of its clean image (among
    /// `images`, with true `labels`) that is classified correctly and scores lowest on the
    /// detector: the most typical path of that class the attacker can see.
    pub fn with_reference_paths(mut self, images: &Tensor, labels: &Tensor) -> Result<Self> {
        let out = tch::no_grad(|| self.model.forward_with_path(images, GateMode::Eval));
        let scores = Tensor::from_slice(self.detector.score(&out)?.as_slice().expect("contiguous"));
        let correct = out.logits.argmax(1, false).eq_tensor(labels).to_device(tch::Device::Cpu);
        let gate_logits = Tensor::cat(&out.gate_logits, 1);
        let labels = labels.to_device(tch::Device::Cpu);
        let mut rows = Vec::new();
        for class in 0..self.model.config().num_classes {
            let candidates = scores.where_scalarother(&labels.eq(class).logical_and(&correct), f64::INFINITY);
            let best = candidates.argmin(0, false).int64_value(&[]);
            if candidates.double_value(&[best]).is_infinite() {
                return Err(Error::Config(format!("no correctly classified clean image of class {class} for its reference path")));
            }
            rows.push(gate_logits.get(best));
        }
        self.reference_paths = Some(Tensor::stack(&rows, 0).detach());
        Ok(self)
    }
}

impl GuardedClassifier for GuardedModel<'_> {
    /// The detector's loss is -log(1 - score) = the sum of softplus of the experts' logits:
    /// smooth, and steepest where the score is near 1 (where the sigmoid saturates). The path
    /// distance is the mean squared difference of gate logits to the target's reference.
    fn forward(&self, images: &Tensor, path_targets: Option<&Tensor>) -> GuardedForward {
        let out = self.model.forward_with_path(images, GateMode::EvalSurrogate);
        let mut detection = Tensor::zeros([images.size()[0]], (Kind::Double, images.device()));
        for logit in self.twin.expert_logits(&out) {
            detection = detection + logit.softplus();
        }
        let path_distance = match (path_targets, &self.reference_paths) {
            (Some(targets), Some(references)) => {
                let gate_logits = Tensor::cat(&out.gate_logits, 1);
                let wanted = references.index_select(0, targets);
                Some((gate_logits - wanted).square().mean_dim([1i64].as_slice(), false, Kind::Float))
            }
            _ => None,
        };
        GuardedForward { logits: out.logits, detection, path_distance }
    }

    fn flagged(&self, images: &Tensor) -> Tensor {
        let scores = tch::no_grad(|| self.detector.score(&self.model.forward_with_path(images, GateMode::Eval)))
            .map(|s| s.to_vec())
            .unwrap_or_else(|_| vec![f64::INFINITY; images.size()[0] as usize]);
        Tensor::from_slice(&scores).ge(self.detector.threshold()).to_device(images.device())
    }

    fn detection_threshold(&self) -> f64 {
        -(1.0 - self.detector.threshold()).ln()
    }

    fn num_classes(&self) -> i64 {
        self.model.config().num_classes
    }

    fn cancelled(&self) -> bool {
        (self.cancelled)()
    }
}
