//! Attacks that know the detector: the attacker must fool the classifier *and* stay below the
//! detector's threshold (Carlini & Wagner 2017; Bryniarski et al. 2022, "Evading Adversarial
//! Example Detection Defenses with Orthogonal Projected Gradient Descent").
//!
//! - Selective PGD: while an image is still classified correctly, step on the classifier's
//!   margin; once it is misclassified, step down the detector's loss.
//! - Orthogonal PGD: the same, with each step's component along the other objective's
//!   gradient removed, so that fixing one objective does not undo the other.
//! - Lagrangian PGD: one step on margin - lambda * detector loss.
//!
//! All are L-infinity PGD with sign steps. Every iterate is checked on the *real* detector
//! (`flagged`); per image the attack returns the successful iterate (misclassified and not
//! flagged) with the lowest detector loss, else its last iterate.

use tch::{Kind, Tensor};

use crate::error::{check_eps, check_positive, check_steps};
use crate::norms::per_sample;
use crate::{AttackError, Result};

/// A classifier guarded by a detector, both differentiable.
pub trait GuardedClassifier {
    /// Class logits `[N, K]` and the detector's loss `[N]` (larger = more surely flagged) from
    /// one forward pass, differentiable with respect to `images`.
    fn logits_and_detection(&self, images: &Tensor) -> (Tensor, Tensor);

    /// Whether the real detector flags each image: `[N]` bool, no gradient.
    fn flagged(&self, images: &Tensor) -> Tensor;

    fn num_classes(&self) -> i64;

    /// Whether the caller gave up (checked before every iteration).
    fn cancelled(&self) -> bool {
        false
    }
}

/// How a step combines the two objectives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdaptiveKind {
    Selective,
    Orthogonal,
    Lagrangian { lambda: f64 },
}

/// L-infinity PGD against a guarded classifier (untargeted).
#[derive(Debug, Clone)]
pub struct AdaptivePgd {
    kind: AdaptiveKind,
    eps: f64,
    steps: usize,
    step_size: f64,
    random_start: bool,
    seed: i64,
}

/// Per-sample dot product of two batches `[N, ...]`.
fn dot(a: &Tensor, b: &Tensor) -> Tensor {
    (a * b).flatten(1, -1).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
}

/// `a` without its component along `b`, per sample.
fn orthogonal_to(a: &Tensor, b: &Tensor) -> Tensor {
    let coefficient = dot(a, b) / dot(b, b).clamp_min(1e-20);
    a - per_sample(&coefficient, b) * b
}

/// Best other logit minus the true one `[N]`: positive once misclassified.
fn margin(logits: &Tensor, labels: &Tensor) -> Tensor {
    let true_logit = logits.gather(1, &labels.unsqueeze(1), false).squeeze_dim(1);
    let others = logits - logits.zeros_like().scatter_value(1, &labels.unsqueeze(1), 1e9);
    others.amax([1i64].as_slice(), false) - true_logit
}

impl AdaptivePgd {
    pub fn new(kind: AdaptiveKind, eps: f64, steps: usize, step_size: f64, random_start: bool, seed: i64) -> Result<Self> {
        check_eps(eps)?;
        check_steps(steps)?;
        check_positive(step_size, AttackError::StepSize)?;
        if let AdaptiveKind::Lagrangian { lambda } = kind {
            check_positive(lambda, AttackError::Lambda)?;
        }
        Ok(AdaptivePgd { kind, eps, steps, step_size, random_start, seed })
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            AdaptiveKind::Selective => "selective-pgd",
            AdaptiveKind::Orthogonal => "orthogonal-pgd",
            AdaptiveKind::Lagrangian { .. } => "lagrangian-pgd",
        }
    }

    /// Adversarial versions of `images` (`[N, ...]` in [0, 1], true `labels` `[N]`).
    pub fn perturb(&self, model: &dyn GuardedClassifier, images: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let origin = images.detach();
        let project = |x: &Tensor| (&origin + (x - &origin).clamp(-self.eps, self.eps)).clamp(0.0, 1.0).detach();
        let mut x = if self.random_start {
            tch::manual_seed(self.seed);
            project(&(&origin + (origin.rand_like() * 2.0 - 1.0) * self.eps))
        } else {
            origin.shallow_clone()
        };
        let n = origin.size()[0];
        let mut best = x.shallow_clone();
        let mut best_loss = Tensor::full([n], f64::INFINITY, (Kind::Float, origin.device()));
        for step in 0..=self.steps {
            if model.cancelled() {
                return Err(AttackError::Cancelled);
            }
            let variable = x.detach().set_requires_grad(true);
            let (logits, detection) = model.logits_and_detection(&variable);
            let detection = detection.to_kind(Kind::Float);
            // Keep, per image, the successful iterate that the detector likes best.
            let misclassified = logits.argmax(1, false).ne_tensor(labels);
            let success = misclassified.logical_and(&model.flagged(&x).logical_not());
            let better = success.logical_and(&detection.detach().lt_tensor(&best_loss));
            best = x.where_self(&per_sample(&better, &x), &best);
            best_loss = detection.detach().where_self(&better, &best_loss);
            if step == self.steps {
                break;
            }
            let classifier = margin(&logits, labels).sum(Kind::Float);
            let detector = detection.sum(Kind::Float);
            let direction = match self.kind {
                AdaptiveKind::Lagrangian { lambda } => {
                    let objective = classifier - detector * lambda;
                    Tensor::run_backward(&[objective], &[&variable], false, false).pop().expect("gradient")
                }
                kind => {
                    let up = Tensor::run_backward(&[classifier], &[&variable], true, false).pop().expect("gradient");
                    let down = -Tensor::run_backward(&[detector], &[&variable], false, false).pop().expect("gradient");
                    let (up, down) = if kind == AdaptiveKind::Orthogonal {
                        (orthogonal_to(&up, &down), orthogonal_to(&down, &up))
                    } else {
                        (up, down)
                    };
                    down.where_self(&per_sample(&misclassified, &down), &up)
                }
            };
            x = project(&(&x + direction.sign() * self.step_size));
        }
        let never = best_loss.isinf();
        Ok(x.where_self(&per_sample(&never, &x), &best))
    }
}
