//! Fast Gradient Sign Method (Goodfellow et al. 2015).

use tch::Tensor;

use crate::classifier::loss_gradient;
use crate::error::check_eps;
use crate::{check_inputs, Attack, DifferentiableClassifier, Goal, Result};

/// One step of size `eps` along the sign of the loss gradient, clipped to [0, 1].
/// Untargeted: ascend the loss of the true label. Targeted: descend the loss of the target.
#[derive(Debug, Clone)]
pub struct Fgsm {
    eps: f64,
}

impl Fgsm {
    pub fn new(eps: f64) -> Result<Self> {
        check_eps(eps)?;
        Ok(Fgsm { eps })
    }
}

impl Attack for Fgsm {
    fn name(&self) -> &'static str {
        "fgsm"
    }

    fn perturb(&self, model: &dyn DifferentiableClassifier, images: &Tensor, labels: &Tensor, goal: &Goal) -> Result<Tensor> {
        check_inputs(images, labels, goal, model.num_classes())?;
        let (objective, direction) = match goal {
            Goal::Untargeted => (labels, 1.0),
            Goal::Targeted(targets) => (targets, -1.0),
        };
        let (grad, _) = loss_gradient(model, images, objective);
        Ok((images + grad.sign() * (self.eps * direction)).clamp(0.0, 1.0).detach())
    }
}
