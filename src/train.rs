//! Training and evaluation loops for the decoupled CNN.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use crate::adversarial_training::{kl_divergence, robust_accuracy, AdversarialMethod, AdversarialOptions, RobustAccuracy};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::gate::GateMode;
use crate::model::losses::{decoupling_loss, LossTerms};
use crate::model::{DecoupledCnn, Execution, Inference, LossWeights};
use crate::path::{class_templates, off_diagonal_mean_min, template_hamming};
use crate::progress;

/// How the decoupling is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recipe {
    /// Gates and weights trained together from scratch with all losses.
    Joint,
    /// The paper's recipe: train the plain CNN (gates open, CE only) for `pretrain_epochs`,
    /// then train everything with all losses for the remaining epochs.
    Pretrain,
}

impl std::str::FromStr for Recipe {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "joint" => Ok(Recipe::Joint),
            "pretrain" => Ok(Recipe::Pretrain),
            _ => Err(Error::Config(format!("unknown recipe {s:?}; use joint or pretrain"))),
        }
    }
}

/// Training settings. Checked by [`TrainOptions::validate`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    pub epochs: usize,
    pub recipe: Recipe,
    /// Plain-CNN epochs before decoupling (only for [`Recipe::Pretrain`]).
    pub pretrain_epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate of the one-cycle schedule (AdamW).
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub loss: LossWeights,
    /// Random horizontal flips of training images.
    pub augment: bool,
    /// Final epochs trained with noise-free hard gates (the paths are then fixed functions of
    /// the input and only the weights around them adapt; removes the train/inference mismatch
    /// of the noisy gates). Counted within `epochs`.
    #[serde(default)]
    pub hard_gate_epochs: usize,
    /// Random per-image translation of training images by up to this many pixels (0 = off).
    #[serde(default)]
    pub max_shift: i64,
    pub seed: i64,
    /// Train on adversarial inputs (see [`crate::adversarial_training`]); `None` = clean.
    #[serde(default)]
    pub adversarial: Option<AdversarialOptions>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 15,
            recipe: Recipe::Joint,
            pretrain_epochs: 3,
            batch_size: 128,
            learning_rate: 3e-3,
            weight_decay: 5e-4,
            loss: LossWeights {
                mutual_information: 0.04,
                alignment: 1.0,
                sparsity: 2e-3,
                target_density: 0.5,
                group_sparsity: 0.0,
            },
            augment: true,
            hard_gate_epochs: 0,
            max_shift: 0,
            seed: 0,
            adversarial: None,
        }
    }
}

impl TrainOptions {
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        if self.epochs < 1 {
            return fail("epochs must be >= 1".into());
        }
        let pretrain = if self.recipe == Recipe::Pretrain { self.pretrain_epochs } else { 0 };
        if pretrain + self.hard_gate_epochs > self.epochs {
            return fail(format!(
                "pretrain_epochs ({pretrain}) + hard_gate_epochs ({}) exceed epochs ({})",
                self.hard_gate_epochs, self.epochs
            ));
        }
        if !(0..=4).contains(&self.max_shift) {
            return fail(format!("max_shift must be in 0..=4 pixels, got {}", self.max_shift));
        }
        if self.batch_size < 1 {
            return fail("batch_size must be >= 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return fail(format!("learning_rate must be > 0, got {}", self.learning_rate));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return fail(format!("weight_decay must be >= 0, got {}", self.weight_decay));
        }
        if let Some(adversarial) = &self.adversarial {
            adversarial.validate()?;
        }
        self.loss.validate()
    }

    /// `(gate mode, epochs)` of each training phase (phases of 0 epochs are skipped).
    fn phases(&self) -> Vec<(GateMode, usize)> {
        let pretrain = if self.recipe == Recipe::Pretrain { self.pretrain_epochs } else { 0 };
        let decoupled = self.epochs - pretrain - self.hard_gate_epochs;
        [
            (GateMode::PlainTrain, pretrain),
            (GateMode::Train, decoupled),
            (GateMode::RecalibrateNorm, self.hard_gate_epochs),
        ]
        .into_iter()
        .filter(|(_, epochs)| *epochs > 0)
        .collect()
    }
}

/// What one epoch measured. Loss terms are unweighted batch means.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    /// "plain" (gates open, CE only), "decoupled" (noisy gates, all losses) or "hard-gates"
    /// (noise-free gates, all losses; only the weights around the paths learn).
    pub phase: String,
    pub cross_entropy: f64,
    pub mutual_information: f64,
    pub alignment: f64,
    pub sparsity: f64,
    /// Accuracy on the training batches with training-mode (noisy) gates.
    pub train_accuracy: f64,
    pub test: EvalReport,
    /// Adversarial training: the radius this epoch ended at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adversarial_eps: Option<f64>,
    /// Adversarial training: clean and PGD accuracy on test images after the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robust: Option<RobustAccuracy>,
    pub seconds: f64,
    pub train_images_per_second: f64,
}

/// Everything a checkpoint records about how it was trained.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub options: TrainOptions,
    pub device: String,
    pub train_examples: usize,
    pub test_examples: usize,
    /// Weights hash of the checkpoint training started from (`--init`), if any.
    #[serde(default)]
    pub initialized_from: Option<String>,
    pub epochs: Vec<EpochMetrics>,
    /// Test evaluation after BatchNorm statistics were re-estimated with noise-free gates.
    #[serde(default)]
    pub batchnorm_recalibrated: Option<EvalReport>,
}

impl TrainingRecord {
    /// One line on how the last training stage ran: clean or adversarial (method and eps),
    /// its epochs, where it started, and its last test (and PGD) accuracy.
    pub fn summary(&self) -> String {
        let kind = match &self.options.adversarial {
            Some(a) => format!("adversarial training ({} at L-inf eps {})", a.method.name(), a.eps),
            None => "clean training (no adversarial inputs)".to_string(),
        };
        let start = match &self.initialized_from {
            Some(hash) => format!("from {}", &hash[..hash.len().min(12)]),
            None => "from scratch".to_string(),
        };
        let mut line = format!("{kind}, {} of {} epoch(s) {start}", self.epochs.len(), self.options.epochs);
        if let Some(last) = self.epochs.last() {
            line += &format!(", test accuracy {:.4}", last.test.accuracy);
            if let Some(r) = &last.robust {
                line += &format!(", PGD-{} accuracy {:.4} at eps {} on {} test images", r.steps, r.pgd_accuracy, r.eps, r.images);
            }
        }
        line
    }
}

/// Evaluation of a model on a data set (eval-mode hard gates).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub examples: usize,
    pub accuracy: f64,
    /// Fraction of open gates in each gated layer.
    pub open_fraction: Vec<f64>,
    /// Mean of `open_fraction` over gated layers (each layer counts once).
    pub mean_open_fraction: f64,
    /// Fraction of all gates open (layers weighted by their filter count).
    pub overall_open_fraction: f64,
    /// Mean over inputs of the conv MACs its path needs / the ungated network's MACs.
    pub mean_flops_fraction: f64,
    /// Hamming distance between binarised class templates: mean and minimum over class pairs.
    pub template_hamming_mean: f64,
    pub template_hamming_min: f64,
    /// Total gates in a path.
    pub path_bits: i64,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// Trains `model` (whose variables are in `vs`), calling `on_epoch` after every epoch (the
/// caller saves a checkpoint there; its error stops training). The first `completed` epochs
/// are skipped: a resumed run whose weights already hold them. The learning-rate schedule, the
/// eps ramp and the random stream of each epoch (seeded from `seed` and the epoch) continue
/// where an uninterrupted run would be; only AdamW's moment estimates start afresh.
/// Returns the metrics of the epochs trained now.
pub fn train(
    vs: &nn::VarStore,
    model: &DecoupledCnn,
    train_set: &Dataset,
    test_set: &Dataset,
    options: &TrainOptions,
    completed: usize,
    mut on_epoch: impl FnMut(&EpochMetrics) -> Result<()>,
) -> Result<Vec<EpochMetrics>> {
    options.validate()?;
    if train_set.is_empty() || test_set.is_empty() {
        return Err(Error::Config("training and test sets must not be empty".into()));
    }
    if completed > options.epochs {
        return Err(Error::Config(format!("{completed} epochs already done of {}", options.epochs)));
    }
    let device = vs.device();
    let mut optimizer = nn::AdamW { wd: options.weight_decay, ..Default::default() }
        .build(vs, options.learning_rate)?;
    let n = train_set.len() as i64;
    let batch = options.batch_size as i64;
    let batches = (n + batch - 1) / batch;
    let adversarial = options.adversarial.as_ref();
    let warmup_steps = adversarial.map_or(0, |a| a.eps_warmup_epochs as i64 * batches);
    let mut history = Vec::new();
    let mut epoch = 0;
    for (mode, phase_epochs) in options.phases() {
        let total_steps = (phase_epochs as i64 * batches).max(1);
        let mut step = 0;
        for _ in 0..phase_epochs {
            epoch += 1;
            if epoch <= completed {
                step += batches;
                continue;
            }
            // Epoch 1 keeps the stream seeded once at the start (as before resumable runs);
            // later epochs reseed so that a resumed run draws what an uninterrupted one would.
            tch::manual_seed(if epoch == 1 { options.seed } else { options.seed.wrapping_mul(1_000).wrapping_add(epoch as i64) });
            let started = Instant::now();
            let bar = progress::bar(batches as u64, format!("epoch {epoch}"));
            let mut sums = [0f64; 4];
            let mut correct = 0i64;
            let mut epoch_eps = None;
            let order = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
            for b in 0..batches {
                let len = batch.min(n - b * batch);
                let idx = order.narrow(0, b * batch, len);
                let mut x = train_set.images.index_select(0, &idx).to_device(device);
                let y = train_set.labels.index_select(0, &idx).to_device(device);
                if options.augment {
                    x = random_horizontal_flip(&x);
                }
                if options.max_shift > 0 {
                    x = random_shift(&x, options.max_shift);
                }
                optimizer.set_lr(one_cycle_lr(options.learning_rate, step, total_steps));
                let global_step = (epoch as i64 - 1) * batches + b;
                step += 1;
                let crafted = adversarial.map(|a| {
                    let eps = a.eps_at(global_step, warmup_steps);
                    epoch_eps = Some(eps);
                    (a, a.perturb(model, &x, &y, eps))
                });
                let (out, loss, terms) = match &crafted {
                    // TRADES: the decoupling loss on clean inputs, plus beta * KL(clean || crafted).
                    Some((a, x_adv)) if a.method == AdversarialMethod::Trades => {
                        let out = model.forward_with_path(&x, mode);
                        let terms = decoupling_loss(&out, &y, &options.loss);
                        let clean = out.logits.softmax(1, Kind::Float);
                        let divergence = kl_divergence(&clean, &model.logits(x_adv, mode));
                        let loss = selected_loss(&terms, mode) + divergence * a.beta;
                        (out, loss, terms)
                    }
                    _ => {
                        let input = crafted.as_ref().map_or(&x, |(_, x_adv)| x_adv);
                        let out = model.forward_with_path(input, mode);
                        let terms = decoupling_loss(&out, &y, &options.loss);
                        let loss = selected_loss(&terms, mode).shallow_clone();
                        (out, loss, terms)
                    }
                };
                optimizer.backward_step(&loss);
                for (sum, term) in sums.iter_mut().zip([
                    &terms.cross_entropy,
                    &terms.mutual_information,
                    &terms.alignment,
                    &terms.sparsity,
                ]) {
                    *sum += term.double_value(&[]) * len as f64;
                }
                correct += out.logits.argmax(1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
                bar.inc(1);
            }
            bar.finish_and_clear();
            let train_seconds = started.elapsed().as_secs_f64();
            let test = evaluate(model, test_set, device, 500, false, Execution::Dense)?;
            let robust = match adversarial {
                Some(a) if a.eval_images > 0 => {
                    Some(robust_accuracy(model, test_set, device, a.eps, a.eval_steps, a.eval_images, options.seed)?)
                }
                _ => None,
            };
            let metrics = EpochMetrics {
                epoch,
                phase: match mode {
                    GateMode::PlainTrain => "plain",
                    GateMode::RecalibrateNorm => "hard-gates",
                    _ => "decoupled",
                }
                .into(),
                cross_entropy: sums[0] / n as f64,
                mutual_information: sums[1] / n as f64,
                alignment: sums[2] / n as f64,
                sparsity: sums[3] / n as f64,
                train_accuracy: correct as f64 / n as f64,
                test,
                adversarial_eps: epoch_eps,
                robust,
                seconds: started.elapsed().as_secs_f64(),
                train_images_per_second: n as f64 / train_seconds,
            };
            on_epoch(&metrics)?;
            history.push(metrics);
        }
    }
    Ok(history)
}

/// The loss a phase optimises: cross-entropy alone for the plain CNN, all terms otherwise.
fn selected_loss(terms: &LossTerms, mode: GateMode) -> &Tensor {
    match mode {
        GateMode::PlainTrain => &terms.cross_entropy,
        _ => &terms.total,
    }
}

/// Re-estimates every BatchNorm's running statistics with inference-mode (noise-free) gates
/// over `data`, without gradients. Training leaves statistics of noisy-gate activations behind;
/// this makes them match what evaluation computes.
pub fn recalibrate_batchnorm(model: &DecoupledCnn, data: &Dataset, device: Device, batch_size: usize) -> Result<()> {
    if data.is_empty() {
        return Err(Error::NoData("cannot recalibrate BatchNorm on an empty data set".into()));
    }
    let n = data.len() as i64;
    let batch = batch_size.max(2) as i64;
    let order = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
    let bar = progress::bar(((n + batch - 1) / batch) as u64, "BN recalib");
    tch::no_grad(|| {
        for start in (0..n).step_by(batch as usize) {
            let len = batch.min(n - start);
            if len < 2 {
                break;
            }
            let idx = order.narrow(0, start, len);
            let x = data.images.index_select(0, &idx).to_device(device);
            let _ = model.forward_with_path(&x, GateMode::RecalibrateNorm);
            bar.inc(1);
        }
    });
    bar.finish_and_clear();
    Ok(())
}

/// One-cycle schedule: linear warm-up over the first 25% of steps from peak/25 to the peak,
/// then cosine annealing to peak/1000.
pub fn one_cycle_lr(peak: f64, step: i64, total: i64) -> f64 {
    let warmup = (total as f64 * 0.25).max(1.0);
    let s = step as f64;
    if s < warmup {
        let start = peak / 25.0;
        start + (peak - start) * s / warmup
    } else {
        let progress = ((s - warmup) / (total as f64 - warmup).max(1.0)).min(1.0);
        let end = peak / 1000.0;
        end + (peak - end) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

fn random_horizontal_flip(x: &Tensor) -> Tensor {
    let n = x.size()[0];
    let flip = Tensor::rand([n, 1, 1, 1], (Kind::Float, x.device())).lt(0.5);
    x.flip([3i64].as_slice()).where_self(&flip, x)
}

/// Translates each image by a random whole number of pixels in [-max, max] on both axes,
/// filling with zeros (nearest-neighbour sampling keeps pixel values exact).
fn random_shift(x: &Tensor, max: i64) -> Tensor {
    let size = x.size();
    let (n, h, w) = (size[0], size[2] as f64, size[3] as f64);
    let opts = (Kind::Float, x.device());
    let shifts = Tensor::randint_low(-max, max + 1, [n, 2], opts);
    let tx = shifts.select(1, 0) * (2.0 / w);
    let ty = shifts.select(1, 1) * (2.0 / h);
    let ones = Tensor::ones([n], opts);
    let zeros = Tensor::zeros([n], opts);
    let theta = Tensor::stack(&[&ones, &zeros, &tx, &zeros, &ones, &ty], 1).view([n, 2, 3]);
    let grid = Tensor::affine_grid_generator(&theta, size.as_slice(), false);
    x.grid_sampler(&grid, 1, 0, false)
}

/// Evaluates `model` on `data` with eval-mode (hard) gates, the forward pass run
/// `execution`'s way.
pub fn evaluate(
    model: &DecoupledCnn,
    data: &Dataset,
    device: Device,
    batch_size: usize,
    show_progress: bool,
    execution: Execution,
) -> Result<EvalReport> {
    if data.is_empty() {
        return Err(Error::NoData("cannot evaluate on an empty data set".into()));
    }
    let config = model.config();
    let macs = config.conv_macs();
    let total_macs: f64 = macs.iter().sum();
    let inference = Inference::new(model, execution)?;
    let started = Instant::now();
    let n = data.len() as i64;
    let batch = batch_size.max(1) as i64;
    let bar = progress::bar(((n + batch - 1) / batch) as u64, "evaluating");
    if !show_progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut correct = 0i64;
    let mut flops_sum = 0f64;
    let mut paths = Vec::new();
    for start in (0..n).step_by(batch as usize) {
        let len = batch.min(n - start);
        let x = data.images.narrow(0, start, len).to_device(device);
        let y = data.labels.narrow(0, start, len).to_device(device);
        let out = inference.forward(model, &x)?;
        correct += out.logits.argmax(1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
        flops_sum += path_macs(config, &macs, &out.gates).sum(Kind::Double).double_value(&[]);
        paths.push(out.path().to_device(Device::Cpu));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let paths = Tensor::cat(&paths, 0);
    let sizes = config.gate_sizes();
    let open_fraction: Vec<f64> = paths
        .split_with_sizes(sizes.as_slice(), 1)
        .iter()
        .map(|layer| layer.mean(Kind::Double).double_value(&[]))
        .collect();
    let templates = class_templates(&paths, &data.labels, config.num_classes);
    let (template_hamming_mean, template_hamming_min) =
        off_diagonal_mean_min(&template_hamming(&templates));
    Ok(EvalReport {
        examples: n as usize,
        accuracy: correct as f64 / n as f64,
        mean_open_fraction: open_fraction.iter().sum::<f64>() / open_fraction.len().max(1) as f64,
        overall_open_fraction: paths.mean(Kind::Double).double_value(&[]),
        open_fraction,
        mean_flops_fraction: flops_sum / n as f64 / total_macs,
        template_hamming_mean,
        template_hamming_min,
        path_bits: sizes.iter().sum(),
        seconds,
        images_per_second: n as f64 / seconds,
    })
}

/// Conv MACs each input's path needs `[N]`: per layer, MACs x open fraction of its input
/// channels x open fraction of its filters (ungated layers, and residual sums for the layer
/// that reads them, count as fully open).
pub fn path_macs(config: &crate::model::ModelConfig, macs: &[f64], gates: &[Tensor]) -> Tensor {
    let n = gates.first().map(|g| g.size()[0]).unwrap_or(1);
    let device = gates.first().map(|g| g.device()).unwrap_or(Device::Cpu);
    let ones = Tensor::ones([n], (Kind::Double, device));
    let mut gate_iter = gates.iter();
    let mut in_fraction = ones.shallow_clone();
    let mut total = Tensor::zeros([n], (Kind::Double, device));
    for (i, (layer, &layer_macs)) in config.layers.iter().zip(macs).enumerate() {
        let out_fraction = match layer.gated {
            true => gate_iter
                .next()
                .expect("one gate tensor per gated layer")
                .mean_dim([1i64].as_slice(), false, Kind::Double),
            false => ones.shallow_clone(),
        };
        total += &in_fraction * &out_fraction * layer_macs;
        // After a residual sum every channel carries the shortcut: the next conv reads all.
        in_fraction = if config.output_always_full(i) { ones.shallow_clone() } else { out_fraction };
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cycle_rises_then_falls() {
        let peak = 1e-2;
        assert!((one_cycle_lr(peak, 0, 100) - peak / 25.0).abs() < 1e-12);
        assert!((one_cycle_lr(peak, 25, 100) - peak).abs() < 1e-12);
        assert!(one_cycle_lr(peak, 99, 100) < peak / 100.0);
    }

    #[test]
    fn random_shift_translates_whole_pixels_with_zero_fill() {
        let x = Tensor::arange(28 * 28, (Kind::Float, Device::Cpu)).view([1, 1, 28, 28]) + 1.0;
        for _ in 0..5 {
            let y = random_shift(&x, 2);
            // Each output pixel is either 0 (filled) or exactly some input pixel.
            let values = y.flatten(0, -1);
            let frac = values.fmod(1.0).abs().sum(Kind::Float).double_value(&[]);
            assert_eq!(frac, 0.0);
            // Interior stays a translation: differences between horizontal neighbours are 1.
            let centre = y.double_value(&[0, 0, 14, 15]) - y.double_value(&[0, 0, 14, 14]);
            assert_eq!(centre, 1.0);
        }
    }

    #[test]
    fn path_macs_follow_the_method_formula() {
        let config = crate::model::ModelConfig::tiny();
        let macs = config.conv_macs();
        let sizes = config.gate_sizes();
        // All gates open: the full network.
        let open: Vec<Tensor> = sizes.iter().map(|&c| Tensor::ones([2, c], (Kind::Float, Device::Cpu))).collect();
        let full = path_macs(&config, &macs, &open);
        assert!((full.double_value(&[0]) - macs.iter().sum::<f64>()).abs() < 1e-6);
        // Half of every gated layer open: gated->gated layers cost 1/4, the first gated 1/2.
        let half: Vec<Tensor> = sizes
            .iter()
            .map(|&c| Tensor::cat(&[Tensor::ones([1, c / 2], (Kind::Float, Device::Cpu)), Tensor::zeros([1, c / 2], (Kind::Float, Device::Cpu))], 1))
            .collect();
        let expected = macs[0] + macs[1] * 0.5 + macs[2..].iter().sum::<f64>() * 0.25;
        assert!((path_macs(&config, &macs, &half).double_value(&[0]) - expected).abs() < 1e-6);
    }
}
