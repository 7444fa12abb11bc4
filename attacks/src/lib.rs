//! Adversarial attacks on differentiable tch classifiers (FGSM, PGD, C&W, DeepFool, ...).
//!
//! This crate depends on tch only; it knows nothing of the server or the detectors.
//! The attacks arrive with the attacks issue; for now it holds the classifier trait they use.

use tch::Tensor;

/// A classifier whose logits are differentiable with respect to its input.
pub trait DifferentiableClassifier {
    /// Logits `[N, classes]` for a batch `[N, C, H, W]` in [0, 1], with the graph kept so
    /// that gradients flow back to the input.
    fn logits(&self, images: &Tensor) -> Tensor;
}
