use tch::Tensor;

/// A classifier whose logits are differentiable with respect to its input.
///
/// Implementations run in inference mode (e.g. BatchNorm with running statistics) but keep
/// the autograd graph, so that `logits(x)` can be back-propagated to `x`.
pub trait DifferentiableClassifier {
    /// Logits `[N, classes]` for a batch `[N, C, H, W]` in [0, 1].
    fn logits(&self, images: &Tensor) -> Tensor;

    /// Number of classes.
    fn num_classes(&self) -> i64;

    /// Whether the caller has given up on the attack (it went away, or its deadline passed):
    /// iterative attacks look before every iteration and stop with
    /// [`AttackError::Cancelled`](crate::AttackError::Cancelled). Never, by default.
    fn cancelled(&self) -> bool {
        false
    }
}

/// [`AttackError::Cancelled`](crate::AttackError::Cancelled) once `model` says the caller gave up.
pub(crate) fn check_cancelled(model: &dyn DifferentiableClassifier) -> crate::Result<()> {
    if model.cancelled() {
        Err(crate::AttackError::Cancelled)
    } else {
        Ok(())
    }
}

/// Gradient of the summed cross-entropy w.r.t. the input, and the logits (detached).
/// For a targeted goal the caller passes the target labels and descends instead of ascending.
pub(crate) fn loss_gradient(model: &dyn DifferentiableClassifier, x: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let x = x.detach().set_requires_grad(true);
    let logits = model.logits(&x);
    let loss = logits.cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Sum, -100, 0.0);
    let grad = Tensor::run_backward(&[loss], &[&x], false, false).pop().expect("one gradient");
    (grad, logits.detach())
}
