//! DeepFool (Moosavi-Dezfooli et al. 2016): step to the nearest linearised decision boundary
//! until the label flips, then overshoot.

use tch::{Kind, Tensor};

use crate::classifier::check_cancelled;
use crate::error::{check_non_negative, check_steps};
use crate::norms::{l2_norms, per_sample};
use crate::{check_inputs, Attack, AttackError, DifferentiableClassifier, Goal, Result};

/// Untargeted L2 DeepFool over all classes.
#[derive(Debug, Clone)]
pub struct DeepFool {
    steps: usize,
    overshoot: f64,
}

impl DeepFool {
    pub fn new(steps: usize, overshoot: f64) -> Result<Self> {
        check_steps(steps)?;
        check_non_negative(overshoot, AttackError::Overshoot)?;
        Ok(DeepFool { steps, overshoot })
    }
}

impl Attack for DeepFool {
    fn name(&self) -> &'static str {
        "deepfool"
    }

    fn perturb(&self, model: &dyn DifferentiableClassifier, images: &Tensor, labels: &Tensor, goal: &Goal) -> Result<Tensor> {
        check_inputs(images, labels, goal, model.num_classes())?;
        if matches!(goal, Goal::Targeted(_)) {
            return Err(AttackError::TargetedUnsupported("deepfool"));
        }
        let x = images.detach();
        let classes = model.num_classes();
        let mut r_total = x.zeros_like();
        for _ in 0..self.steps {
            check_cancelled(model)?;
            let candidate = (&x + &r_total * (1.0 + self.overshoot)).clamp(0.0, 1.0).set_requires_grad(true);
            let logits = model.logits(&candidate);
            let active = logits.argmax(1, false).eq_tensor(labels);
            if active.sum(Kind::Int64).int64_value(&[]) == 0 {
                break;
            }
            // Gradient of every class logit (samples are independent, so sum over the batch).
            let grads: Vec<Tensor> = (0..classes)
                .map(|k| {
                    let out = logits.select(1, k).sum(Kind::Float);
                    Tensor::run_backward(&[out], &[&candidate], true, false).pop().expect("gradient")
                })
                .collect();
            let grads = Tensor::stack(&grads, 1); // [N, K, ...]
            let logits = logits.detach();
            let label_logit = logits.gather(1, &labels.unsqueeze(1), false); // [N, 1]
            let f = &logits - &label_logit; // [N, K]
            let n = grads.size()[0];
            let rows = Tensor::arange(n, (Kind::Int64, x.device()));
            let label_grad = grads.index(&[Some(&rows), Some(labels)]).unsqueeze(1); // [N, 1, ...]
            let w = &grads - label_grad; // [N, K, ...]
            let w_norm = w.flatten(2, -1).norm_scalaropt_dim(2, [2i64].as_slice(), false).to_kind(Kind::Float);
            // Distance to each linearised boundary; the true class itself is excluded.
            let ratio = f.abs() / (&w_norm + 1e-8) + labels.one_hot(classes).to_kind(Kind::Float) * 1e10;
            let best = ratio.argmin(1, false); // [N]
            let w_best = w.index(&[Some(&rows), Some(&best)]); // [N, ...]
            let dist = ratio.gather(1, &best.unsqueeze(1), false).squeeze_dim(1);
            let norms = l2_norms(&w_best).clamp_min(1e-8);
            let step = &w_best * per_sample(&((dist + 1e-4) / norms), &w_best);
            r_total += step * per_sample(&active.to_kind(Kind::Float), &w_best);
        }
        Ok((&x + &r_total * (1.0 + self.overshoot)).clamp(0.0, 1.0).detach())
    }
}
