//! Adversarial training: each training step learns from inputs crafted against the model as
//! it is at that step, and each epoch measures accuracy under PGD on test images.
//!
//! Inputs are crafted the way attackers see the deployed model: eval-mode BatchNorm, hard
//! gates forward and a straight-through sigmoid gradient through them (`EvalSurrogate`), in
//! pixels in [0, 1]. The training step then applies the usual decoupling losses (CE, MI, KL,
//! sparsity) to the crafted inputs, so paths are trained on them too.

use attacks::{Attack, Goal, Iterative, IterativeKind};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::attack_set::{GateGradient, ModelClassifier};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{DecoupledCnn, GateMode};

/// How training inputs are perturbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AdversarialMethod {
    /// FGSM from a uniform random start in the eps-ball, step 1.25 eps, projected back
    /// (Wong et al. 2020, "Fast is better than free"): one gradient per step.
    FgsmRs,
    /// N-FGSM (de Jorge et al. 2022): noise from [-2 eps, 2 eps], one step of eps, no
    /// projection to the eps-ball: the same cost as FGSM-RS without its catastrophic
    /// overfitting at large eps.
    NFgsm,
    /// PGD (Madry et al. 2018): random start, `steps` sign steps of `step_size`, projected.
    Pgd,
    /// TRADES (Zhang et al. 2019): PGD on KL(f(x) || f(x')) from a small random start; the
    /// loss is the decoupling loss on clean inputs + beta * that KL.
    Trades,
}

impl AdversarialMethod {
    /// The name on the command line and in `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            AdversarialMethod::FgsmRs => "fgsm-rs",
            AdversarialMethod::NFgsm => "n-fgsm",
            AdversarialMethod::Pgd => "pgd",
            AdversarialMethod::Trades => "trades",
        }
    }
}

/// Adversarial-training settings. Checked by [`AdversarialOptions::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdversarialOptions {
    pub method: AdversarialMethod,
    /// L-infinity radius in [0, 1] pixels.
    pub eps: f64,
    /// Steps of PGD and TRADES (FGSM-RS and N-FGSM take one).
    pub steps: usize,
    /// Step size of PGD and TRADES as a fraction of eps.
    pub step_fraction: f64,
    /// TRADES weight of the KL term.
    pub beta: f64,
    /// eps grows linearly from 0 to `eps` over this many epochs (0 = full eps from the start).
    pub eps_warmup_epochs: usize,
    /// Test images of the per-epoch PGD accuracy (0 = skip it).
    pub eval_images: usize,
    /// Steps of that per-epoch PGD (random start, step 2.5 eps / steps).
    pub eval_steps: usize,
}

impl Default for AdversarialOptions {
    fn default() -> Self {
        AdversarialOptions {
            method: AdversarialMethod::NFgsm,
            eps: 0.1,
            steps: 7,
            step_fraction: 0.25,
            beta: 6.0,
            eps_warmup_epochs: 0,
            eval_images: 500,
            eval_steps: 20,
        }
    }
}

impl AdversarialOptions {
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        if !(self.eps.is_finite() && self.eps > 0.0 && self.eps <= 1.0) {
            return fail(format!("adversarial eps must be in (0, 1], got {}", self.eps));
        }
        if self.steps < 1 {
            return fail("adversarial steps must be >= 1".into());
        }
        if !(self.step_fraction.is_finite() && self.step_fraction > 0.0 && self.step_fraction <= 2.5) {
            return fail(format!("adversarial step fraction must be in (0, 2.5], got {}", self.step_fraction));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return fail(format!("TRADES beta must be >= 0, got {}", self.beta));
        }
        if self.eval_images > 0 && self.eval_steps < 1 {
            return fail("adversarial eval steps must be >= 1".into());
        }
        Ok(())
    }

    /// The radius at optimiser step `step` of `warmup_steps` (linear ramp, then flat).
    pub fn eps_at(&self, step: i64, warmup_steps: i64) -> f64 {
        if warmup_steps <= 0 {
            return self.eps;
        }
        self.eps * ((step + 1) as f64 / warmup_steps as f64).min(1.0)
    }

    /// Inputs to train on for clean images `x` with labels `y` at radius `eps`: detached,
    /// in [0, 1]. Model gradients are not touched (only the input's gradient is taken).
    /// Not `attacks::Iterative`: its random start reseeds the global generator on every call,
    /// which would replay the same noise and flips in every training batch.
    pub fn perturb(&self, model: &DecoupledCnn, x: &Tensor, y: &Tensor, eps: f64) -> Tensor {
        let x = x.detach();
        let uniform = |radius: f64| (x.rand_like() * 2.0 - 1.0) * radius;
        let project = |candidate: &Tensor| (&x + (candidate - &x).clamp(-eps, eps)).clamp(0.0, 1.0).detach();
        match self.method {
            AdversarialMethod::FgsmRs => {
                let start = project(&(&x + uniform(eps)));
                let grad = cross_entropy_gradient(model, &start, y);
                project(&(&start + grad.sign() * (1.25 * eps)))
            }
            AdversarialMethod::NFgsm => {
                let start = (&x + uniform(2.0 * eps)).clamp(0.0, 1.0).detach();
                let grad = cross_entropy_gradient(model, &start, y);
                (&start + grad.sign() * eps).clamp(0.0, 1.0).detach()
            }
            AdversarialMethod::Pgd => {
                let step = self.step_fraction * eps;
                let mut current = project(&(&x + uniform(eps)));
                for _ in 0..self.steps {
                    let grad = cross_entropy_gradient(model, &current, y);
                    current = project(&(&current + grad.sign() * step));
                }
                current
            }
            AdversarialMethod::Trades => {
                let step = self.step_fraction * eps;
                let clean = tch::no_grad(|| model.logits(&x, GateMode::EvalSurrogate).softmax(1, Kind::Float));
                let mut current = project(&(&x + x.randn_like() * 1e-3));
                for _ in 0..self.steps {
                    let input = current.set_requires_grad(true);
                    let divergence = kl_divergence(&clean, &model.logits(&input, GateMode::EvalSurrogate));
                    let grad = Tensor::run_backward(&[divergence], &[&input], false, false).pop().expect("one gradient");
                    current = project(&(&input.detach() + grad.sign() * step));
                }
                current
            }
        }
    }
}

/// KL(p || softmax(logits)), summed over classes, mean over the batch.
pub fn kl_divergence(p: &Tensor, logits: &Tensor) -> Tensor {
    let n = logits.size()[0].max(1) as f64;
    logits.log_softmax(1, Kind::Float).kl_div(p, Reduction::Sum, false) / n
}

/// Gradient of the cross-entropy with respect to the input, through the surrogate gates.
fn cross_entropy_gradient(model: &DecoupledCnn, x: &Tensor, y: &Tensor) -> Tensor {
    let input = x.detach().set_requires_grad(true);
    let loss = model.logits(&input, GateMode::EvalSurrogate).cross_entropy_for_logits(y);
    Tensor::run_backward(&[loss], &[&input], false, false).pop().expect("one gradient")
}

/// Accuracy under PGD measured after an epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RobustAccuracy {
    pub eps: f64,
    pub steps: usize,
    pub images: usize,
    /// Clean accuracy on the same images.
    pub clean_accuracy: f64,
    /// Correct after PGD (L-infinity, random start, step 2.5 eps / steps, surrogate gates).
    pub pgd_accuracy: f64,
}

/// Clean and PGD accuracy of `model` on the first `images` of `data`, in batches of 250.
pub fn robust_accuracy(
    model: &DecoupledCnn,
    data: &Dataset,
    device: Device,
    eps: f64,
    steps: usize,
    images: usize,
    seed: i64,
) -> Result<RobustAccuracy> {
    let data = data.take(images);
    let n = data.len() as i64;
    if n == 0 {
        return Err(Error::NoData("no images to measure robust accuracy on".into()));
    }
    let attack = Iterative::new(IterativeKind::PgdLinf, eps, steps, 2.5 * eps / steps as f64, true, seed)
        .map_err(Error::attack("robust accuracy"))?;
    let classifier = ModelClassifier { model, gates: GateGradient::Surrogate, cancelled: &|| false };
    let (mut clean, mut robust) = (0i64, 0i64);
    for start in (0..n).step_by(250) {
        let len = 250.min(n - start);
        let x = data.images.narrow(0, start, len).to_device(device);
        let y = data.labels.narrow(0, start, len).to_device(device);
        let correct = |images: &Tensor| -> i64 {
            tch::no_grad(|| model.logits(images, GateMode::Eval)).argmax(1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[])
        };
        clean += correct(&x);
        let adversarial = attack
            .perturb(&classifier, &x, &y, &Goal::Untargeted)
            .map_err(Error::attack("robust accuracy"))?;
        robust += correct(&adversarial);
    }
    Ok(RobustAccuracy {
        eps,
        steps,
        images: n as usize,
        clean_accuracy: clean as f64 / n as f64,
        pgd_accuracy: robust as f64 / n as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use tch::nn;

    fn tiny_model() -> (nn::VarStore, DecoupledCnn) {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = DecoupledCnn::new(&vs.root(), &ModelConfig::tiny()).unwrap();
        (vs, model)
    }

    #[test]
    fn perturbations_stay_in_their_ball_and_in_pixel_range() {
        let (_vs, model) = tiny_model();
        let x = Tensor::rand([6, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]);
        let eps = 0.1;
        for (method, radius) in [
            (AdversarialMethod::FgsmRs, eps),
            (AdversarialMethod::NFgsm, 3.0 * eps),
            (AdversarialMethod::Pgd, eps),
            (AdversarialMethod::Trades, eps),
        ] {
            let options = AdversarialOptions { method, steps: 3, ..Default::default() };
            let adversarial = options.perturb(&model, &x, &y, eps);
            assert_eq!(adversarial.size(), x.size());
            assert!(!adversarial.requires_grad(), "{method:?} must return a detached tensor");
            let linf = (&adversarial - &x).abs().max().double_value(&[]);
            assert!(linf <= radius + 1e-6, "{method:?}: L-inf {linf} > {radius}");
            assert!(linf > 0.5 * eps, "{method:?} did not move the input (L-inf {linf})");
            assert!(adversarial.min().double_value(&[]) >= 0.0 && adversarial.max().double_value(&[]) <= 1.0);
        }
    }

    #[test]
    fn crafting_leaves_model_gradients_alone() {
        let (vs, model) = tiny_model();
        let x = Tensor::rand([4, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
        let options = AdversarialOptions { method: AdversarialMethod::Pgd, steps: 2, ..Default::default() };
        let _ = options.perturb(&model, &x, &y, 0.1);
        for (name, variable) in vs.variables() {
            let grad = variable.grad();
            assert!(!grad.defined() || grad.abs().sum(Kind::Float).double_value(&[]) == 0.0, "{name} got a gradient");
        }
    }

    #[test]
    fn pgd_raises_the_loss_more_than_noise() {
        let (_vs, model) = tiny_model();
        let x = Tensor::rand([16, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = tch::no_grad(|| model.logits(&x, GateMode::Eval)).argmax(1, false);
        let loss = |images: &Tensor| {
            tch::no_grad(|| model.logits(images, GateMode::Eval).cross_entropy_for_logits(&y)).double_value(&[])
        };
        let options = AdversarialOptions { method: AdversarialMethod::Pgd, steps: 5, ..Default::default() };
        let noise = (&x + (x.rand_like() * 2.0 - 1.0) * 0.1).clamp(0.0, 1.0);
        assert!(loss(&options.perturb(&model, &x, &y, 0.1)) > loss(&noise));
    }

    #[test]
    fn eps_ramps_linearly_then_stays() {
        let options = AdversarialOptions { eps: 0.1, ..Default::default() };
        assert!((options.eps_at(0, 10) - 0.01).abs() < 1e-12);
        assert!((options.eps_at(4, 10) - 0.05).abs() < 1e-12);
        assert_eq!(options.eps_at(50, 10), 0.1);
        assert_eq!(options.eps_at(0, 0), 0.1);
    }

    #[test]
    fn method_names_are_the_serialised_ones() {
        use clap::ValueEnum;
        for method in AdversarialMethod::value_variants() {
            assert_eq!(serde_json::to_value(method).unwrap(), method.name());
            assert_eq!(method.to_possible_value().unwrap().get_name(), method.name());
        }
    }

    #[test]
    fn invalid_settings_are_named() {
        let bad = AdversarialOptions { eps: 0.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("eps"));
        let bad = AdversarialOptions { steps: 0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("steps"));
    }
}
