//! Adversarial attacks on differentiable tch classifiers.
//!
//! Every attack takes a batch `[N, C, H, W]` of float32 images in [0, 1] and their true
//! labels (or target labels for targeted attacks) and returns adversarial images in [0, 1].
//! Parameters are validated up front, one [`AttackError`] variant per rule. Runs are
//! reproducible: attacks that draw random numbers seed libtorch's generator from their
//! `seed` parameter.
//!
//! This crate depends on tch only; it knows nothing of the server or the detectors.

mod adaptive;
mod apgd;
mod classifier;
mod cw;
mod deepfool;
mod error;
mod fgsm;
mod iterative;
mod norms;

pub use adaptive::{AdaptiveKind, AdaptivePgd, Ball, GuardedClassifier, GuardedForward};
pub use apgd::{Apgd, ApgdLoss};
pub use classifier::DifferentiableClassifier;
pub use cw::CarliniWagnerL2;
pub use deepfool::DeepFool;
pub use error::AttackError;
pub use fgsm::Fgsm;
pub use iterative::{Iterative, IterativeKind};
pub use norms::{linf_norms, l2_norms};

use tch::Tensor;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, AttackError>;

/// What the attacker wants.
#[derive(Debug)]
pub enum Goal {
    /// Any class other than the true one (`labels` are the true labels).
    Untargeted,
    /// These classes (`labels` are then ignored by the objective).
    Targeted(Tensor),
}

/// An adversarial attack with validated parameters.
pub trait Attack {
    /// Short name, as used on the command line (`fgsm`, `pgd`, ...).
    fn name(&self) -> &'static str;

    /// Adversarial versions of `images` (same shape, values in [0, 1]).
    fn perturb(
        &self,
        model: &dyn DifferentiableClassifier,
        images: &Tensor,
        labels: &Tensor,
        goal: &Goal,
    ) -> Result<Tensor>;
}

/// Checks the common inputs of every attack: a float batch `[N, ...]` in [0, 1], labels `[N]`
/// in range, and targets (if any) in range.
pub fn check_inputs(images: &Tensor, labels: &Tensor, goal: &Goal, classes: i64) -> Result<()> {
    let size = images.size();
    if size.len() < 2 || size[0] < 1 {
        return Err(AttackError::BadInput(format!("images have shape {size:?}; expected [N >= 1, ...]")));
    }
    if images.kind() != tch::Kind::Float {
        return Err(AttackError::BadInput(format!("images have dtype {:?}; expected float32", images.kind())));
    }
    let min = images.min().double_value(&[]);
    let max = images.max().double_value(&[]);
    if !(min >= 0.0 && max <= 1.0) {
        return Err(AttackError::BadInput(format!("pixel values span [{min}, {max}]; expected [0, 1]")));
    }
    let check_labels = |what: &str, t: &Tensor| -> Result<()> {
        if t.size() != [size[0]] {
            return Err(AttackError::BadInput(format!("{what} have shape {:?}; expected [{}]", t.size(), size[0])));
        }
        let (lo, hi) = (t.min().int64_value(&[]), t.max().int64_value(&[]));
        if lo < 0 || hi >= classes {
            return Err(AttackError::BadInput(format!("{what} span [{lo}, {hi}]; classes are 0..{classes}")));
        }
        Ok(())
    };
    check_labels("labels", labels)?;
    if let Goal::Targeted(targets) = goal {
        check_labels("target labels", targets)?;
    }
    Ok(())
}
