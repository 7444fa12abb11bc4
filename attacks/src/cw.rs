//! Carlini-Wagner L2 (Carlini & Wagner 2017): Adam on a tanh-space variable, margin loss
//! with confidence kappa, and a binary search on the trade-off constant c per image.

use tch::{Kind, Tensor};

use crate::classifier::check_cancelled;
use crate::error::{check_non_negative, check_positive, check_steps};
use crate::norms::per_sample;
use crate::{check_inputs, Attack, AttackError, DifferentiableClassifier, Goal, Result};

/// Minimises `||x' - x||_2^2 + c * max(Z_y - max_{i != y} Z_i, -kappa)` (untargeted) or
/// `... + c * max(max_{i != t} Z_i - Z_t, -kappa)` (targeted) over `x' = (tanh(w) + 1) / 2`.
/// Images for which no adversarial example is found are returned unchanged.
#[derive(Debug, Clone)]
pub struct CarliniWagnerL2 {
    steps: usize,
    search_steps: usize,
    learning_rate: f64,
    confidence: f64,
    initial_const: f64,
}

impl CarliniWagnerL2 {
    pub fn new(steps: usize, search_steps: usize, learning_rate: f64, confidence: f64, initial_const: f64) -> Result<Self> {
        check_steps(steps)?;
        check_steps(search_steps)?;
        check_positive(learning_rate, AttackError::LearningRate)?;
        check_non_negative(confidence, AttackError::Confidence)?;
        check_positive(initial_const, AttackError::InitialConstant)?;
        Ok(CarliniWagnerL2 { steps, search_steps, learning_rate, confidence, initial_const })
    }
}

/// `(Z_label, max over other classes)` per sample.
fn label_and_best_other(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let one_hot = labels.one_hot(logits.size()[1]).to_kind(Kind::Float);
    let real = (logits * &one_hot).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let other = (logits - &one_hot * 1e9).amax([1i64].as_slice(), false);
    (real, other)
}

impl Attack for CarliniWagnerL2 {
    fn name(&self) -> &'static str {
        "cw"
    }

    fn perturb(&self, model: &dyn DifferentiableClassifier, images: &Tensor, labels: &Tensor, goal: &Goal) -> Result<Tensor> {
        check_inputs(images, labels, goal, model.num_classes())?;
        let x = images.detach();
        let n = x.size()[0];
        let device = x.device();
        let (objective, targeted) = match goal {
            Goal::Untargeted => (labels.shallow_clone(), false),
            Goal::Targeted(t) => (t.shallow_clone(), true),
        };
        let w0 = ((&x * 2.0 - 1.0).clamp(-1.0 + 1e-6, 1.0 - 1e-6)).atanh();
        let mut c = Tensor::full([n], self.initial_const, (Kind::Float, device));
        let mut lower = Tensor::zeros([n], (Kind::Float, device));
        let mut upper = Tensor::full([n], 1e10, (Kind::Float, device));
        let mut best_l2 = Tensor::full([n], f64::INFINITY, (Kind::Float, device));
        let mut best = x.shallow_clone();
        let (beta1, beta2, adam_eps) = (0.9, 0.999, 1e-8);
        for _ in 0..self.search_steps {
            let mut w = w0.shallow_clone();
            let mut m = w.zeros_like();
            let mut v = w.zeros_like();
            let mut succeeded = Tensor::zeros([n], (Kind::Bool, device));
            for t in 1..=self.steps {
                check_cancelled(model)?;
                let w_var = w.detach().set_requires_grad(true);
                let adv = (w_var.tanh() + 1.0) * 0.5;
                let l2 = (&adv - &x).square().flatten(1, -1).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
                let logits = model.logits(&adv);
                let (real, other) = label_and_best_other(&logits, &objective);
                let margin = if targeted { &other - &real } else { &real - &other };
                let f = margin.clamp_min(-self.confidence);
                let loss = (&l2 + &c * &f).sum(Kind::Float);
                let grad = Tensor::run_backward(&[loss], &[&w_var], false, false).pop().expect("gradient");
                // Adam update of w.
                m = &m * beta1 + &grad * (1.0 - beta1);
                v = &v * beta2 + grad.square() * (1.0 - beta2);
                let m_hat = &m / (1.0 - beta1.powi(t as i32));
                let v_hat = &v / (1.0 - beta2.powi(t as i32));
                w = (w_var.detach() - m_hat / (v_hat.sqrt() + adam_eps) * self.learning_rate).detach();
                // Record the smallest successful perturbation per image.
                let pred = logits.argmax(1, false);
                let success = if targeted { pred.eq_tensor(&objective) } else { pred.ne_tensor(&objective) };
                // With a confidence kappa > 0 the margin must also reach -kappa.
                let success = if self.confidence > 0.0 {
                    success.logical_and(&margin.le(-self.confidence + 1e-6))
                } else {
                    success
                };
                let l2 = l2.detach();
                let improved = success.logical_and(&l2.lt_tensor(&best_l2));
                best_l2 = l2.where_self(&improved, &best_l2);
                best = adv.detach().where_self(&per_sample(&improved, &adv), &best);
                succeeded = succeeded.logical_or(&success);
            }
            // Binary search on c: smaller where it worked, larger where it did not.
            upper = c.where_self(&succeeded, &upper).minimum(&upper);
            lower = lower.where_self(&succeeded, &c).maximum(&lower);
            let bisect = (&lower + &upper) / 2.0;
            let grow = &c * 10.0;
            c = bisect.where_self(&upper.lt(1e9), &grow);
        }
        Ok(best.clamp(0.0, 1.0))
    }
}
