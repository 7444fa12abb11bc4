//! Attacks that know the detector: the attacker must fool the classifier *and* stay below the
//! detector's threshold (Carlini & Wagner 2017, "Adversarial Examples Are Not Easily
//! Detected"; Bryniarski et al. 2022, "Evading Adversarial Example Detection Defenses with
//! Orthogonal Projected Gradient Descent").
//!
//! - Selective PGD: while an image has not reached the goal, step on the classifier's margin;
//!   once it has, step down the detector's loss.
//! - Orthogonal PGD: the same, with each step's component along the other objective's
//!   gradient removed, so that fixing one objective does not undo the other.
//! - Lagrangian PGD: one step on min(margin, 1) - lambda * detector loss.
//! - Extra class (C&W): the detector becomes class K+1 with logit (Z_D + 1) * max_j Z_j, where
//!   Z_D > 0 exactly when the image is flagged; PGD on the margin over the K+1 logits.
//! - Path matching: min(margin, 1) - detector loss - weight * distance of the gate logits to
//!   those of a clean image of the target class (the runner-up class when untargeted).
//!
//! All run in an L-infinity (sign steps) or L2 (normalised steps) ball, with restarts. Every
//! iterate is checked on the *real* detector ([`GuardedClassifier::flagged`]); per image the
//! attack returns the successful iterate (goal reached and not flagged) with the lowest
//! detector loss, or with `early_stop` the first one, else its last iterate.

use tch::{Kind, Tensor};

use crate::error::{check_eps, check_positive, check_steps};
use crate::norms::{l2_norms, per_sample};
use crate::{check_inputs, AttackError, Goal, Result};

/// One forward pass of a guarded classifier, differentiable with respect to the images.
pub struct GuardedForward {
    /// Class logits `[N, K]`.
    pub logits: Tensor,
    /// The detector's loss `[N]`: larger = more surely flagged; flagged above
    /// [`GuardedClassifier::detection_threshold`].
    pub detection: Tensor,
    /// Distance `[N]` of each image's path to the reference path of its path target class,
    /// when path targets were given and the classifier has reference paths.
    pub path_distance: Option<Tensor>,
}

/// A classifier guarded by a detector, both differentiable.
pub trait GuardedClassifier {
    /// Logits, detector loss and (with `path_targets` `[N]`) path distance from one pass.
    fn forward(&self, images: &Tensor, path_targets: Option<&Tensor>) -> GuardedForward;

    /// Whether the real detector flags each image: `[N]` bool, no gradient.
    fn flagged(&self, images: &Tensor) -> Tensor;

    /// The detector loss at the detector's threshold.
    fn detection_threshold(&self) -> f64;

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
    ExtraClass,
    PathMatching { weight: f64 },
}

/// The perturbation budget's norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ball {
    Linf,
    L2,
}

/// PGD against a guarded classifier.
#[derive(Debug, Clone)]
pub struct AdaptivePgd {
    kind: AdaptiveKind,
    ball: Ball,
    eps: f64,
    steps: usize,
    step_size: f64,
    random_start: bool,
    seed: i64,
    restarts: usize,
    early_stop: bool,
}

/// What one restart found, on the images it ran on.
struct Found {
    last: Tensor,
    best: Tensor,
    best_loss: Tensor,
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

fn logit_of(logits: &Tensor, classes: &Tensor) -> Tensor {
    logits.gather(1, &classes.unsqueeze(1), false).squeeze_dim(1)
}

/// The largest logit of a class other than `classes` `[N]`.
pub(crate) fn best_other(logits: &Tensor, classes: &Tensor) -> Tensor {
    let masked = logits - logits.zeros_like().scatter_value(1, &classes.unsqueeze(1), 1e9);
    masked.amax([1i64].as_slice(), false)
}

/// The logit the attacker pushes up and the one it pushes down, `[N]` each: untargeted, the
/// best wrong class against the true one; targeted, the target against the best other.
fn goal_logits(logits: &Tensor, labels: &Tensor, targets: Option<&Tensor>) -> (Tensor, Tensor) {
    match targets {
        None => (best_other(logits, labels), logit_of(logits, labels)),
        Some(t) => (logit_of(logits, t), best_other(logits, t)),
    }
}

/// Carlini & Wagner's detector as class K+1: the goal logit minus the larger of the logit it
/// must beat and the extra class's logit (Z_D + 1) * max_j Z_j, where Z_D, the detector's logit
/// relative to its threshold, log(e^L - 1) - log(e^L_t - 1), is positive exactly when flagged
/// (the loss L is -log(1 - score)). Positive = goal met and not flagged, `[N]`.
pub(crate) fn extra_class_margin(logits: &Tensor, detection: &Tensor, labels: &Tensor, targets: Option<&Tensor>, threshold: f64) -> Tensor {
    let (up, down) = goal_logits(logits, labels, targets);
    let z_detector = detection.clamp_min(1e-6).expm1().log() - threshold.exp_m1().ln();
    let z_max = logits.amax([1i64].as_slice(), false);
    let z_extra = (z_detector + 1.0) * z_max;
    up - down.maximum(&z_extra)
}

/// Whether each prediction meets the goal `[N]`.
pub(crate) fn goal_reached(logits: &Tensor, labels: &Tensor, targets: Option<&Tensor>) -> Tensor {
    let predicted = logits.argmax(1, false);
    match targets {
        None => predicted.ne_tensor(labels),
        Some(t) => predicted.eq_tensor(t),
    }
}

fn gradient(objective: &Tensor, input: &Tensor, keep_graph: bool) -> Tensor {
    Tensor::run_backward(&[objective], &[input], keep_graph, false).pop().expect("one gradient")
}

impl AdaptivePgd {
    /// An L-infinity attack with one restart that keeps the best iterate; see the `with_`
    /// methods for the rest.
    pub fn new(kind: AdaptiveKind, eps: f64, steps: usize, step_size: f64, random_start: bool, seed: i64) -> Result<Self> {
        check_eps(eps)?;
        check_steps(steps)?;
        check_positive(step_size, AttackError::StepSize)?;
        match kind {
            AdaptiveKind::Lagrangian { lambda } => check_positive(lambda, AttackError::Lambda)?,
            AdaptiveKind::PathMatching { weight } => check_positive(weight, AttackError::PathWeight)?,
            _ => {}
        }
        Ok(AdaptivePgd { kind, ball: Ball::Linf, eps, steps, step_size, random_start, seed, restarts: 1, early_stop: false })
    }

    pub fn with_ball(mut self, ball: Ball) -> Self {
        self.ball = ball;
        self
    }

    /// Runs `restarts` times (each later one from a random start) on the images that have no
    /// success yet (with early stop) or on all (keeping the best success per image).
    pub fn with_restarts(mut self, restarts: usize) -> Result<Self> {
        check_steps(restarts).map_err(|_| AttackError::Restarts(restarts))?;
        self.restarts = restarts;
        Ok(self)
    }

    /// Stops each image at its first success instead of looking for the lowest detector loss;
    /// successful images are no longer computed, which makes a sweep over budgets affordable.
    pub fn with_early_stop(mut self, early_stop: bool) -> Self {
        self.early_stop = early_stop;
        self
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            AdaptiveKind::Selective => "selective-pgd",
            AdaptiveKind::Orthogonal => "orthogonal-pgd",
            AdaptiveKind::Lagrangian { .. } => "lagrangian-pgd",
            AdaptiveKind::ExtraClass => "extra-class-pgd",
            AdaptiveKind::PathMatching { .. } => "path-matching-pgd",
        }
    }

    /// Adversarial versions of `images` (`[N, ...]` in [0, 1]) for the true `labels` `[N]`.
    pub fn perturb(&self, model: &dyn GuardedClassifier, images: &Tensor, labels: &Tensor, goal: &Goal) -> Result<Tensor> {
        check_inputs(images, labels, goal, model.num_classes())?;
        let targets = match goal {
            Goal::Targeted(t) => Some(t.shallow_clone()),
            Goal::Untargeted => None,
        };
        // Path matching imitates a clean path of the target class, else of the runner-up.
        let path_targets = match (self.kind, &targets) {
            (AdaptiveKind::PathMatching { .. }, Some(t)) => Some(t.shallow_clone()),
            (AdaptiveKind::PathMatching { .. }, None) => {
                let logits = tch::no_grad(|| model.forward(images, None).logits);
                Some(logits.scatter_value(1, &labels.unsqueeze(1), f64::NEG_INFINITY).argmax(1, false))
            }
            _ => None,
        };
        let origin = images.detach();
        let n = origin.size()[0];
        let mut last = origin.shallow_clone();
        let mut best = origin.shallow_clone();
        let mut best_loss = Tensor::full([n], f64::INFINITY, (Kind::Float, origin.device()));
        tch::manual_seed(self.seed);
        for restart in 0..self.restarts {
            let pending = if self.early_stop { best_loss.isinf() } else { best_loss.ones_like().to_kind(Kind::Bool) };
            let rows = pending.nonzero().squeeze_dim(1);
            if rows.numel() == 0 {
                break;
            }
            let pick = |t: &Tensor| t.index_select(0, &rows);
            let found = self.run_once(
                model,
                &pick(&origin),
                &pick(labels),
                targets.as_ref().map(pick).as_ref(),
                path_targets.as_ref().map(pick).as_ref(),
                self.random_start || restart > 0,
            )?;
            let better = found.best_loss.lt_tensor(&pick(&best_loss));
            last = last.index_copy(0, &rows, &found.last);
            best = best.index_copy(0, &rows, &found.best.where_self(&per_sample(&better, &found.best), &pick(&best)));
            best_loss = best_loss.index_copy(0, &rows, &found.best_loss.minimum(&pick(&best_loss)));
        }
        let never = best_loss.isinf();
        Ok(last.where_self(&per_sample(&never, &last), &best))
    }

    /// One restart of the attack on `origin`.
    fn run_once(
        &self,
        model: &dyn GuardedClassifier,
        origin: &Tensor,
        labels: &Tensor,
        targets: Option<&Tensor>,
        path_targets: Option<&Tensor>,
        random_start: bool,
    ) -> Result<Found> {
        let n = origin.size()[0];
        let mut x = if random_start { self.project(&(origin + self.random_offset(origin)), origin) } else { origin.shallow_clone() };
        let mut best = x.shallow_clone();
        let mut best_loss = Tensor::full([n], f64::INFINITY, (Kind::Float, origin.device()));
        let all = Tensor::arange(n, (Kind::Int64, origin.device()));
        for step in 0..=self.steps {
            if model.cancelled() {
                return Err(AttackError::Cancelled);
            }
            let rows = if self.early_stop { best_loss.isinf().nonzero().squeeze_dim(1) } else { all.shallow_clone() };
            if rows.numel() == 0 {
                break;
            }
            let pick = |t: &Tensor| t.index_select(0, &rows);
            let (xa, labels_a) = (pick(&x), pick(labels));
            let (targets_a, path_targets_a) = (targets.map(pick), path_targets.map(pick));
            let variable = xa.detach().set_requires_grad(true);
            let out = model.forward(&variable, path_targets_a.as_ref());
            let detection = out.detection.to_kind(Kind::Float);
            let reached = goal_reached(&out.logits, &labels_a, targets_a.as_ref());
            let success = reached.logical_and(&model.flagged(&xa).logical_not());
            let better = success.logical_and(&detection.detach().lt_tensor(&pick(&best_loss)));
            best = best.index_copy(0, &rows, &xa.where_self(&per_sample(&better, &xa), &pick(&best)));
            best_loss = best_loss.index_copy(0, &rows, &detection.detach().where_self(&better, &pick(&best_loss)));
            if step == self.steps {
                break;
            }
            let direction = self.direction(model, &out, &detection, &variable, &labels_a, targets_a.as_ref(), &reached)?;
            let stepped = self.project(&(&xa + self.scaled_step(&direction)), &pick(origin));
            x = x.index_copy(0, &rows, &stepped);
        }
        Ok(Found { last: x, best, best_loss })
    }

    /// The ascent direction of this attack's objective at `variable`.
    #[allow(clippy::too_many_arguments)]
    fn direction(
        &self,
        model: &dyn GuardedClassifier,
        out: &GuardedForward,
        detection: &Tensor,
        variable: &Tensor,
        labels: &Tensor,
        targets: Option<&Tensor>,
        reached: &Tensor,
    ) -> Result<Tensor> {
        let (up, down) = goal_logits(&out.logits, labels, targets);
        let margin = &up - &down;
        let objective = match self.kind {
            AdaptiveKind::Selective | AdaptiveKind::Orthogonal => {
                let classifier = gradient(&margin.sum(Kind::Float), variable, true);
                let detector = -gradient(&detection.sum(Kind::Float), variable, false);
                let (classifier, detector) = if self.kind == AdaptiveKind::Orthogonal {
                    (orthogonal_to(&classifier, &detector), orthogonal_to(&detector, &classifier))
                } else {
                    (classifier, detector)
                };
                return Ok(detector.where_self(&per_sample(reached, &detector), &classifier));
            }
            AdaptiveKind::Lagrangian { lambda } => margin.clamp_max(1.0) - detection * lambda,
            AdaptiveKind::ExtraClass => {
                extra_class_margin(&out.logits, detection, labels, targets, model.detection_threshold()).clamp_max(1.0)
            }
            AdaptiveKind::PathMatching { weight } => {
                let distance = out.path_distance.as_ref().ok_or_else(|| {
                    AttackError::BadInput("path matching needs a classifier with reference paths".into())
                })?;
                margin.clamp_max(1.0) - detection - distance.to_kind(Kind::Float) * weight
            }
        };
        Ok(gradient(&objective.sum(Kind::Float), variable, false))
    }

    fn scaled_step(&self, direction: &Tensor) -> Tensor {
        match self.ball {
            Ball::Linf => direction.sign() * self.step_size,
            Ball::L2 => direction / per_sample(&l2_norms(direction).clamp_min(1e-12), direction) * self.step_size,
        }
    }

    fn random_offset(&self, origin: &Tensor) -> Tensor {
        match self.ball {
            Ball::Linf => (origin.rand_like() * 2.0 - 1.0) * self.eps,
            Ball::L2 => {
                let direction = origin.randn_like();
                let radius = Tensor::rand([origin.size()[0]], (Kind::Float, origin.device())) * self.eps;
                &direction * per_sample(&(radius / l2_norms(&direction).clamp_min(1e-12)), &direction)
            }
        }
    }

    /// Projects onto the ball around `origin`, then onto [0, 1].
    fn project(&self, x: &Tensor, origin: &Tensor) -> Tensor {
        let delta = x - origin;
        let delta = match self.ball {
            Ball::Linf => delta.clamp(-self.eps, self.eps),
            Ball::L2 => {
                let factor = (l2_norms(&delta).clamp_min(1e-12).reciprocal() * self.eps).clamp_max(1.0);
                &delta * per_sample(&factor, &delta)
            }
        };
        (origin + delta).clamp(0.0, 1.0).detach()
    }
}
