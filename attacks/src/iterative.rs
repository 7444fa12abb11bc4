//! Iterative gradient attacks: BIM / I-FGSM (Kurakin et al. 2017), PGD with L-infinity and L2
//! balls (Madry et al. 2018) and MI-FGSM (Dong et al. 2018).

use tch::{Kind, Tensor};

use crate::classifier::{check_cancelled, loss_gradient};
use crate::error::{check_eps, check_non_negative, check_positive, check_steps};
use crate::norms::{l2_norms, per_sample};
use crate::{check_inputs, Attack, AttackError, DifferentiableClassifier, Goal, Result};

/// Which iterative attack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IterativeKind {
    /// Sign steps in the L-infinity ball, no random start by default.
    Bim,
    /// Sign steps in the L-infinity ball, usually with a random start.
    PgdLinf,
    /// Normalised-gradient steps in the L2 ball.
    PgdL2,
    /// Sign steps of an accumulated, L1-normalised gradient with momentum `decay`.
    MiFgsm { decay: f64 },
}

/// An iterative attack with validated parameters.
#[derive(Debug, Clone)]
pub struct Iterative {
    kind: IterativeKind,
    eps: f64,
    steps: usize,
    step_size: f64,
    random_start: bool,
    seed: i64,
    early_stop: bool,
}

impl Iterative {
    /// `eps` is the radius of the ball (L-infinity, or L2 for [`IterativeKind::PgdL2`]).
    pub fn new(kind: IterativeKind, eps: f64, steps: usize, step_size: f64, random_start: bool, seed: i64) -> Result<Self> {
        check_eps(eps)?;
        check_steps(steps)?;
        check_positive(step_size, AttackError::StepSize)?;
        if let IterativeKind::MiFgsm { decay } = kind {
            check_non_negative(decay, AttackError::Momentum)?;
        }
        Ok(Iterative { kind, eps, steps, step_size, random_start, seed, early_stop: false })
    }

    /// Freezes each image at the first iterate that reaches the goal (the untargeted
    /// prediction left the true class, or the targeted one hit the target): minimal,
    /// low-confidence adversarial examples close to the decision boundary, like those of
    /// C&W and DeepFool, instead of PGD's usual over-confident ones.
    pub fn with_early_stop(mut self, early_stop: bool) -> Self {
        self.early_stop = early_stop;
        self
    }

    /// Projects `x` onto the ball of radius eps around `origin`, then onto [0, 1].
    fn project(&self, x: &Tensor, origin: &Tensor) -> Tensor {
        let delta = x - origin;
        let delta = match self.kind {
            IterativeKind::PgdL2 => {
                let norms = l2_norms(&delta).clamp_min(1e-12);
                let factor = (Tensor::from(self.eps as f32).to_device(x.device()) / norms).clamp_max(1.0);
                &delta * per_sample(&factor, &delta)
            }
            _ => delta.clamp(-self.eps, self.eps),
        };
        (origin + delta).clamp(0.0, 1.0)
    }

    fn random_start_point(&self, origin: &Tensor) -> Tensor {
        let noise = match self.kind {
            IterativeKind::PgdL2 => {
                // A random direction with a radius drawn uniformly in [0, eps].
                let direction = origin.randn_like();
                let norms = l2_norms(&direction).clamp_min(1e-12);
                let radius = Tensor::rand([origin.size()[0]], (Kind::Float, origin.device())) * self.eps;
                &direction * per_sample(&(radius / norms), &direction)
            }
            _ => (origin.rand_like() * 2.0 - 1.0) * self.eps,
        };
        self.project(&(origin + noise), origin)
    }

    /// The update direction for one step from the raw loss gradient.
    fn step_direction(&self, grad: &Tensor, momentum: &mut Option<Tensor>) -> Tensor {
        match self.kind {
            IterativeKind::PgdL2 => {
                let norms = l2_norms(grad).clamp_min(1e-12);
                grad / per_sample(&norms, grad)
            }
            IterativeKind::MiFgsm { decay } => {
                let l1 = grad.flatten(1, -1).abs().sum_dim_intlist([1i64].as_slice(), false, Kind::Float).clamp_min(1e-12);
                let normalised = grad / per_sample(&l1, grad);
                let g = match momentum.take() {
                    Some(m) => m * decay + normalised,
                    None => normalised,
                };
                let direction = g.sign();
                *momentum = Some(g);
                direction
            }
            _ => grad.sign(),
        }
    }
}

impl Attack for Iterative {
    fn name(&self) -> &'static str {
        match self.kind {
            IterativeKind::Bim => "bim",
            IterativeKind::PgdLinf => "pgd",
            IterativeKind::PgdL2 => "pgd-l2",
            IterativeKind::MiFgsm { .. } => "mifgsm",
        }
    }

    fn perturb(&self, model: &dyn DifferentiableClassifier, images: &Tensor, labels: &Tensor, goal: &Goal) -> Result<Tensor> {
        check_inputs(images, labels, goal, model.num_classes())?;
        let origin = images.detach();
        let (objective, direction) = match goal {
            Goal::Untargeted => (labels, 1.0),
            Goal::Targeted(targets) => (targets, -1.0),
        };
        let mut x = if self.random_start {
            tch::manual_seed(self.seed);
            self.random_start_point(&origin)
        } else {
            origin.shallow_clone()
        };
        let mut momentum = None;
        for _ in 0..self.steps {
            check_cancelled(model)?;
            let (grad, logits) = loss_gradient(model, &x, objective);
            let step = self.step_direction(&grad, &mut momentum) * (self.step_size * direction);
            let stepped = self.project(&(&x + step), &origin).detach();
            x = if self.early_stop {
                let reached = goal_reached(&logits, objective, goal);
                if bool::try_from(reached.all()).unwrap_or(false) {
                    break;
                }
                stepped.where_self(&reached.logical_not().view([-1, 1, 1, 1]), &x)
            } else {
                stepped
            };
        }
        Ok(x)
    }
}

/// Per image: does the prediction at these logits meet the goal?
fn goal_reached(logits: &Tensor, objective: &Tensor, goal: &Goal) -> Tensor {
    let predicted = logits.argmax(1, false);
    match goal {
        Goal::Untargeted => predicted.ne_tensor(objective),
        Goal::Targeted(_) => predicted.eq_tensor(objective),
    }
}
