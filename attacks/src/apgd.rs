//! Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
//! ensemble of diverse parameter-free attacks"), in the L-infinity ball: PGD with momentum
//! whose step size starts at 2 eps and halves, per image, at checkpoints where progress
//! stalled, going back to the best point found. It has no step size to tune, so a robust
//! model cannot look robust because of a badly chosen one; AutoAttack's APGD-CE and APGD-DLR
//! are the yardstick robustness papers are judged by.
//!
//! The loop ([`Apgd::search`]) maximises a per-image loss it is given; the front ends give it
//! cross-entropy or the DLR loss for a classifier ([`Attack`]), or the extra-class objective
//! for a classifier guarded by a detector ([`Apgd::perturb_guarded`]).

use tch::{Kind, Tensor};

use crate::adaptive::{best_other, extra_class_margin, goal_reached};
use crate::classifier::check_cancelled;
use crate::error::{check_eps, check_steps};
use crate::norms::per_sample;
use crate::{check_inputs, Attack, AttackError, DifferentiableClassifier, Goal, GuardedClassifier, Result};

/// The loss APGD maximises against a classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApgdLoss {
    /// Cross-entropy of the true class (untargeted) or minus that of the target.
    CrossEntropy,
    /// Difference of logits ratio: the margin divided by the spread of the top logits, so that
    /// rescaling the logits (as a saturating softmax or a defence might) changes nothing.
    Dlr,
}

/// APGD with validated parameters.
#[derive(Debug, Clone)]
pub struct Apgd {
    loss: ApgdLoss,
    eps: f64,
    steps: usize,
    restarts: usize,
    seed: i64,
}

/// What the loop needs at a point: the loss to maximise per image `[N]` (with its graph to the
/// point) and whether each image meets the attacker's goal there `[N]` bool.
type Evaluate<'a> = dyn Fn(&Tensor) -> (Tensor, Tensor) + 'a;

/// Momentum weight of the new step (Croce & Hein's alpha).
const ALPHA: f64 = 0.75;
/// A checkpoint halves the step where fewer than this share of the steps since the last one
/// raised the loss.
const RHO: f64 = 0.75;

impl Apgd {
    /// `steps` gradient steps per restart in the L-infinity ball of radius `eps`, from a random
    /// start drawn with `seed`.
    pub fn new(loss: ApgdLoss, eps: f64, steps: usize, seed: i64) -> Result<Self> {
        check_eps(eps)?;
        check_steps(steps)?;
        Ok(Apgd { loss, eps, steps, restarts: 1, seed })
    }

    /// Runs again, from a new random start, on the images no earlier run succeeded on.
    pub fn with_restarts(mut self, restarts: usize) -> Result<Self> {
        check_steps(restarts).map_err(|_| AttackError::Restarts(restarts))?;
        self.restarts = restarts;
        Ok(self)
    }

    /// Against a classifier guarded by a detector: the extra-class objective of
    /// [`crate::AdaptiveKind::ExtraClass`] (the detector as class K+1), success = goal met
    /// and not flagged by the real detector. The loss choice is not used.
    pub fn perturb_guarded(&self, model: &dyn GuardedClassifier, images: &Tensor, labels: &Tensor, goal: &Goal) -> Result<Tensor> {
        check_inputs(images, labels, goal, model.num_classes())?;
        let targets = targets_of(goal);
        let threshold = model.detection_threshold();
        self.restarted(images, labels, targets.as_ref(), &|| model.cancelled(), &|x: &Tensor, y: &Tensor, t: Option<&Tensor>| {
            let out = model.forward(x, None);
            let objective = extra_class_margin(&out.logits, &out.detection.to_kind(Kind::Float), y, t, threshold);
            let reached = goal_reached(&out.logits, y, t);
            let success = reached.logical_and(&model.flagged(&x.detach()).logical_not());
            (objective, success)
        })
    }

    /// Every restart on the images without a success yet; per image the first successful
    /// iterate, else the one with the highest loss.
    fn restarted(
        &self,
        images: &Tensor,
        labels: &Tensor,
        targets: Option<&Tensor>,
        cancelled: &dyn Fn() -> bool,
        evaluate: &dyn Fn(&Tensor, &Tensor, Option<&Tensor>) -> (Tensor, Tensor),
    ) -> Result<Tensor> {
        let origin = images.detach();
        let mut result = origin.shallow_clone();
        let mut done = Tensor::zeros([origin.size()[0]], (Kind::Bool, origin.device()));
        tch::manual_seed(self.seed);
        for _ in 0..self.restarts {
            let rows = done.logical_not().nonzero().squeeze_dim(1);
            if rows.numel() == 0 {
                break;
            }
            let pick = |t: &Tensor| t.index_select(0, &rows);
            let (labels_r, targets_r) = (pick(labels), targets.map(pick));
            let (found, success) =
                self.search(&pick(&origin), cancelled, &|x: &Tensor| evaluate(x, &labels_r, targets_r.as_ref()))?;
            result = result.index_copy(0, &rows, &found);
            done = done.index_copy(0, &rows, &success);
        }
        Ok(result)
    }

    /// One run of the APGD loop from a random start: the first successful iterate per image
    /// (else the best-loss one) and whether each succeeded.
    fn search(&self, origin: &Tensor, cancelled: &dyn Fn() -> bool, evaluate: &Evaluate) -> Result<(Tensor, Tensor)> {
        let n = origin.size()[0];
        let device = origin.device();
        let checkpoints = checkpoints(self.steps);
        let mut step_size = Tensor::full([n], 2.0 * self.eps, (Kind::Float, device));
        let mut x = self.project(&(origin + (origin.rand_like() * 2.0 - 1.0) * self.eps), origin);
        let (loss, success, mut grad) = gradient_at(evaluate, &x);
        let mut found = x.shallow_clone();
        let mut succeeded = success;
        let (mut best, mut best_loss, mut best_grad) = (x.shallow_clone(), loss.shallow_clone(), grad.shallow_clone());
        let mut previous_loss = loss;
        let mut previous_x = x.shallow_clone();
        let mut increases = Tensor::zeros([n], (Kind::Float, device));
        let mut best_loss_at_checkpoint = best_loss.shallow_clone();
        let mut halved_at_checkpoint = Tensor::ones([n], (Kind::Bool, device));
        let mut last_checkpoint = 0;
        for step in 0..self.steps {
            if cancelled() {
                return Err(AttackError::Cancelled);
            }
            // The step, with momentum from the second on.
            let z = self.project(&(&x + per_sample(&step_size, &x) * grad.sign()), origin);
            let alpha = if step == 0 { 1.0 } else { ALPHA };
            let next = self.project(&(&x + (&z - &x) * alpha + (&x - &previous_x) * (1.0 - alpha)), origin);
            previous_x = x;
            x = next;
            let (loss, success, g) = gradient_at(evaluate, &x);
            grad = g;
            let newly = success.logical_and(&succeeded.logical_not());
            found = x.where_self(&per_sample(&newly, &x), &found);
            succeeded = succeeded.logical_or(&success);
            if bool::try_from(succeeded.all()).unwrap_or(false) {
                break;
            }
            increases += loss.gt_tensor(&previous_loss).to_kind(Kind::Float);
            previous_loss = loss.shallow_clone();
            let improved = loss.gt_tensor(&best_loss);
            best = x.where_self(&per_sample(&improved, &x), &best);
            best_grad = grad.where_self(&per_sample(&improved, &grad), &best_grad);
            best_loss = loss.where_self(&improved, &best_loss);
            if checkpoints.contains(&(step + 1)) {
                // Halve where the loss rose on too few steps, or where the last checkpoint
                // kept the step and the best loss has not moved since.
                let span = (step + 1 - last_checkpoint) as f64;
                let oscillating = increases.le_tensor(&Tensor::from(span * RHO).to_device(device));
                let stalled = halved_at_checkpoint.logical_not().logical_and(&best_loss_at_checkpoint.ge_tensor(&best_loss));
                let halve = oscillating.logical_or(&stalled);
                step_size = (&step_size / 2.0).where_self(&halve, &step_size);
                x = best.where_self(&per_sample(&halve, &best), &x);
                grad = best_grad.where_self(&per_sample(&halve, &best_grad), &grad);
                halved_at_checkpoint = halve;
                best_loss_at_checkpoint = best_loss.shallow_clone();
                increases = increases.zero_();
                last_checkpoint = step + 1;
            }
        }
        let out = found.where_self(&per_sample(&succeeded, &found), &best);
        Ok((out, succeeded))
    }

    /// Onto the ball around `origin`, then onto [0, 1].
    fn project(&self, x: &Tensor, origin: &Tensor) -> Tensor {
        (origin + (x - origin).clamp(-self.eps, self.eps)).clamp(0.0, 1.0).detach()
    }
}

impl Attack for Apgd {
    fn name(&self) -> &'static str {
        match self.loss {
            ApgdLoss::CrossEntropy => "apgd-ce",
            ApgdLoss::Dlr => "apgd-dlr",
        }
    }

    fn perturb(&self, model: &dyn DifferentiableClassifier, images: &Tensor, labels: &Tensor, goal: &Goal) -> Result<Tensor> {
        check_inputs(images, labels, goal, model.num_classes())?;
        let targets = targets_of(goal);
        // The DLR denominator reads the third (untargeted) or fourth (targeted) largest logit.
        let needed = if targets.is_some() { 4 } else { 3 };
        if self.loss == ApgdLoss::Dlr && model.num_classes() < needed {
            return Err(AttackError::BadInput(format!("the DLR loss needs at least {needed} classes, the model has {}", model.num_classes())));
        }
        check_cancelled(model)?;
        let loss = self.loss;
        self.restarted(images, labels, targets.as_ref(), &|| model.cancelled(), &|x: &Tensor, y: &Tensor, t: Option<&Tensor>| {
            let logits = model.logits(x);
            let objective = match loss {
                ApgdLoss::CrossEntropy => cross_entropy(&logits, y, t),
                ApgdLoss::Dlr => dlr(&logits, y, t),
            };
            (objective, goal_reached(&logits, y, t))
        })
    }
}

/// The checkpoints (step counts) of a run of `steps` steps, in AutoAttack's integer form of
/// Croce & Hein's p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), p_1 = 0.22: the first
/// period is 22% of the steps, each next one 3% shorter, never under 6%.
fn checkpoints(steps: usize) -> Vec<usize> {
    let share = |percent: usize| (percent * steps / 100).max(1);
    let (decrease, shortest) = (share(3), share(6));
    let (mut period, mut at) = (share(22), 0);
    let mut out = Vec::new();
    while at + period <= steps {
        at += period;
        out.push(at);
        period = period.saturating_sub(decrease).max(shortest);
    }
    out
}

/// The loss and goal at `x`, and the loss's gradient there.
fn gradient_at(evaluate: &Evaluate, x: &Tensor) -> (Tensor, Tensor, Tensor) {
    let variable = x.detach().set_requires_grad(true);
    let (loss, success) = evaluate(&variable);
    let grad = Tensor::run_backward(&[loss.sum(Kind::Float)], &[&variable], false, false).pop().expect("one gradient");
    (loss.detach(), success.detach(), grad)
}

fn targets_of(goal: &Goal) -> Option<Tensor> {
    match goal {
        Goal::Targeted(t) => Some(t.shallow_clone()),
        Goal::Untargeted => None,
    }
}

fn cross_entropy(logits: &Tensor, labels: &Tensor, targets: Option<&Tensor>) -> Tensor {
    let per_image = |classes: &Tensor| logits.cross_entropy_loss::<Tensor>(classes, None, tch::Reduction::None, -100, 0.0);
    match targets {
        None => per_image(labels),
        Some(t) => -per_image(t),
    }
}

/// Untargeted: -(z_y - max_{i != y} z_i) / (z_1 - z_3); targeted: -(z_y - z_t) / (z_1 - (z_3 +
/// z_4) / 2), with z_k the k-th largest logit.
fn dlr(logits: &Tensor, labels: &Tensor, targets: Option<&Tensor>) -> Tensor {
    let sorted = logits.sort(1, true).0;
    let top = |k: i64| sorted.select(1, k);
    let true_logit = logits.gather(1, &labels.unsqueeze(1), false).squeeze_dim(1);
    match targets {
        None => {
            -(true_logit - best_other(logits, labels)) / (top(0) - top(2) + 1e-12)
        }
        Some(t) => {
            let target_logit = logits.gather(1, &t.unsqueeze(1), false).squeeze_dim(1);
            -(true_logit - target_logit) / (top(0) - (top(2) + top(3)) * 0.5 + 1e-12)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_follow_the_paper() {
        // Croce & Hein: 0, 0.22, 0.41, 0.57, 0.7, 0.8, 0.87, 0.93, 0.99 (x 100).
        assert_eq!(checkpoints(100), vec![22, 41, 57, 70, 80, 87, 93, 99]);
    }

    #[test]
    fn dlr_is_minus_the_scaled_margin() {
        let logits = Tensor::from_slice(&[4.0f32, 1.0, 0.0, 2.0]).view([1, 4]);
        let labels = Tensor::from_slice(&[0i64]);
        // Untargeted: -(4 - 2) / (4 - 1).
        let loss = f64::try_from(dlr(&logits, &labels, None).squeeze()).unwrap();
        assert!((loss + 2.0 / 3.0).abs() < 1e-6, "{loss}");
        // Targeted at class 1: -(4 - 1) / (4 - (1 + 0) / 2).
        let loss = f64::try_from(dlr(&logits, &labels, Some(&Tensor::from_slice(&[1i64]))).squeeze()).unwrap();
        assert!((loss + 3.0 / 3.5).abs() < 1e-6, "{loss}");
        // Rescaling the logits changes nothing.
        let scaled = f64::try_from(dlr(&(&logits * 7.0), &labels, None).squeeze()).unwrap();
        assert!((scaled + 2.0 / 3.0).abs() < 1e-6, "{scaled}");
    }
}
