//! Attack sets: run an attack from the `attacks` crate against the decoupled CNN over a slice
//! of Fashion-MNIST, and write the result in formats the Python world reads.

use std::path::{Path, PathBuf};
use std::time::Instant;

use attacks::{
    l2_norms, linf_norms, AdaptiveKind, AdaptivePgd, Attack, Ball, CarliniWagnerL2, DeepFool, DifferentiableClassifier,
    Fgsm, Goal, Iterative, IterativeKind,
};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::detector::PathDetector;
use crate::error::{Error, Result};
use crate::guarded_model::GuardedModel;
use crate::model::{DecoupledCnn, GateMode};
use crate::progress;

/// The decoupled CNN seen by an attack: eval mode, with hard gates (whose gradient is zero)
/// or with the straight-through sigmoid surrogate for the gates. `cancelled` tells the attack
/// that its caller gave up (see [`DifferentiableClassifier::cancelled`]).
pub struct ModelClassifier<'a> {
    pub model: &'a DecoupledCnn,
    pub gates: GateGradient,
    pub cancelled: &'a dyn Fn() -> bool,
}

/// How gradients treat the hard 0/1 gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateGradient {
    /// Hard gates, zero gradient through them (gradients still flow through open filters).
    Hard,
    /// Hard gates forward, backward as if each gate were sigmoid(logit) (BPDA-style).
    Surrogate,
}

impl std::str::FromStr for GateGradient {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "hard" => Ok(GateGradient::Hard),
            "surrogate" => Ok(GateGradient::Surrogate),
            _ => Err(Error::Config(format!("unknown gate gradient {s:?}; use hard or surrogate"))),
        }
    }
}

impl DifferentiableClassifier for ModelClassifier<'_> {
    fn logits(&self, images: &Tensor) -> Tensor {
        let mode = match self.gates {
            GateGradient::Hard => GateMode::Eval,
            GateGradient::Surrogate => GateMode::EvalSurrogate,
        };
        self.model.logits(images, mode)
    }

    fn num_classes(&self) -> i64 {
        self.model.config().num_classes
    }

    fn cancelled(&self) -> bool {
        (self.cancelled)()
    }
}

/// Attack method names accepted on the command line and in manifests.
pub const METHODS: [&str; 12] = [
    "fgsm",
    "bim",
    "pgd",
    "pgd-l2",
    "mifgsm",
    "cw",
    "deepfool",
    "selective-pgd",
    "orthogonal-pgd",
    "lagrangian-pgd",
    "extra-class-pgd",
    "path-matching-pgd",
];

/// The methods that attack the detector too ([`attacks::AdaptivePgd`]); they need one.
pub const ADAPTIVE_METHODS: [&str; 5] =
    ["selective-pgd", "orthogonal-pgd", "lagrangian-pgd", "extra-class-pgd", "path-matching-pgd"];

/// A built attack: one that sees the classifier only, or one that sees the detector too.
pub enum BuiltAttack {
    Oblivious(Box<dyn Attack>),
    Adaptive(AdaptivePgd),
}

impl BuiltAttack {
    pub fn name(&self) -> &'static str {
        match self {
            BuiltAttack::Oblivious(a) => a.name(),
            BuiltAttack::Adaptive(a) => a.name(),
        }
    }
}

/// An attack and all its parameters; unset ones take the method's default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttackParams {
    pub method: String,
    /// Budget: L-infinity radius (fgsm, bim, pgd, mifgsm) or L2 radius (pgd-l2). Unused by
    /// cw and deepfool, which minimise the L2 norm.
    pub eps: f64,
    pub steps: Option<usize>,
    pub step_size: Option<f64>,
    pub random_start: bool,
    pub seed: i64,
    pub target_class: Option<i64>,
    /// MI-FGSM momentum decay (default 1.0).
    pub decay: Option<f64>,
    /// C&W confidence kappa (default 0), initial constant c (default 1), Adam learning rate
    /// (default 0.01), binary-search steps on c (default 3).
    pub confidence: Option<f64>,
    pub initial_const: Option<f64>,
    pub learning_rate: Option<f64>,
    pub search_steps: Option<usize>,
    /// DeepFool overshoot (default 0.02).
    pub overshoot: Option<f64>,
    /// Iterative attacks: stop each image at its first success (minimal, low-confidence
    /// adversarial examples).
    #[serde(default)]
    pub early_stop: bool,
    /// Adaptive attacks: the weight of the detector's loss (lagrangian-pgd) or of the path
    /// distance (path-matching-pgd), default 1.
    #[serde(default)]
    pub lambda: Option<f64>,
    /// Adaptive attacks: runs from a random start, keeping per image the best (default 1).
    #[serde(default)]
    pub restarts: Option<usize>,
    /// Adaptive attacks: the budget's norm, "linf" (default) or "l2".
    #[serde(default)]
    pub norm: Option<String>,
}

impl AttackParams {
    /// Parameters with the method's defaults for everything but `method` and `eps`.
    pub fn new(method: &str, eps: f64) -> Self {
        AttackParams {
            method: method.into(),
            eps,
            steps: None,
            step_size: None,
            random_start: false,
            seed: 0,
            target_class: None,
            decay: None,
            confidence: None,
            initial_const: None,
            learning_rate: None,
            search_steps: None,
            overshoot: None,
            early_stop: false,
            lambda: None,
            restarts: None,
            norm: None,
        }
    }

    /// Fills in every default, so that a manifest records what really ran.
    pub fn is_adaptive(&self) -> bool {
        ADAPTIVE_METHODS.contains(&self.method.as_str())
    }

    pub fn resolved(&self) -> Self {
        let mut p = self.clone();
        if p.is_adaptive() {
            // Step size eps/10 as in Bryniarski et al.; 100 steps walk the ball ten times.
            p.steps.get_or_insert(100);
            p.step_size.get_or_insert((p.eps / 10.0).max(1e-6));
            p.restarts.get_or_insert(1);
            p.norm.get_or_insert_with(|| "linf".into());
            if matches!(p.method.as_str(), "lagrangian-pgd" | "path-matching-pgd") {
                p.lambda.get_or_insert(1.0);
            }
            return p;
        }
        let default_steps = match p.method.as_str() {
            "fgsm" => 1,
            "bim" | "mifgsm" => 10,
            "pgd" | "pgd-l2" => 40,
            "cw" => 100,
            "deepfool" => 50,
            _ => 1,
        };
        let steps = *p.steps.get_or_insert(default_steps);
        if matches!(p.method.as_str(), "bim" | "pgd" | "pgd-l2" | "mifgsm") && p.step_size.is_none() {
            // Madry et al.: 2.5 * eps / steps lets PGD walk across the ball; BIM and MI-FGSM
            // use eps / steps, as in their papers.
            let factor = if p.method.starts_with("pgd") { 2.5 } else { 1.0 };
            p.step_size = Some((factor * p.eps / steps as f64).max(1e-6));
        }
        match p.method.as_str() {
            "mifgsm" => {
                p.decay.get_or_insert(1.0);
            }
            "cw" => {
                p.confidence.get_or_insert(0.0);
                p.initial_const.get_or_insert(1.0);
                p.learning_rate.get_or_insert(0.01);
                p.search_steps.get_or_insert(3);
            }
            "deepfool" => {
                p.overshoot.get_or_insert(0.02);
            }
            _ => {}
        }
        p
    }

    /// Builds the attack, validating every parameter. Defaults come from [`Self::resolved`]
    /// alone, so that what runs is exactly what a manifest records.
    pub fn build(&self) -> Result<BuiltAttack> {
        fn boxed<A: Attack + 'static>(
            attack: std::result::Result<A, attacks::AttackError>,
        ) -> std::result::Result<Box<dyn Attack>, attacks::AttackError> {
            attack.map(|a| Box::new(a) as Box<dyn Attack>)
        }
        let p = self.resolved();
        if p.is_adaptive() {
            return p.build_adaptive().map(BuiltAttack::Adaptive);
        }
        if p.lambda.is_some() || p.restarts.is_some() || p.norm.is_some() {
            return Err(Error::Config(format!("lambda, restarts and norm apply to the adaptive attacks, not to {}", p.method)));
        }
        if p.early_stop && !matches!(p.method.as_str(), "bim" | "pgd" | "pgd-l2" | "mifgsm") {
            return Err(Error::Config(format!(
                "early stop applies to the iterative attacks bim, pgd, pgd-l2 and mifgsm, not to {}",
                p.method
            )));
        }
        let resolved = "resolved() sets every parameter of its method";
        let steps = p.steps.expect(resolved);
        let iterative = |kind| {
            Iterative::new(kind, p.eps, steps, p.step_size.expect(resolved), p.random_start, p.seed)
                .map(|a| a.with_early_stop(p.early_stop))
        };
        let attack = match p.method.as_str() {
            "fgsm" => boxed(Fgsm::new(p.eps)),
            "bim" => boxed(iterative(IterativeKind::Bim)),
            "pgd" => boxed(iterative(IterativeKind::PgdLinf)),
            "pgd-l2" => boxed(iterative(IterativeKind::PgdL2)),
            "mifgsm" => boxed(iterative(IterativeKind::MiFgsm { decay: p.decay.expect(resolved) })),
            "cw" => boxed(CarliniWagnerL2::new(
                steps,
                p.search_steps.expect(resolved),
                p.learning_rate.expect(resolved),
                p.confidence.expect(resolved),
                p.initial_const.expect(resolved),
            )),
            "deepfool" => boxed(DeepFool::new(steps, p.overshoot.expect(resolved))),
            other => {
                return Err(Error::Config(format!(
                    "unknown attack method {other:?}; use one of {}",
                    METHODS.join(", ")
                )))
            }
        };
        attack.map(BuiltAttack::Oblivious).map_err(|e| Error::Config(format!("{} parameters: {e}", p.method)))
    }

    /// The adaptive attack of resolved parameters.
    fn build_adaptive(&self) -> Result<AdaptivePgd> {
        let resolved = "resolved() sets every parameter of an adaptive method";
        let lambda = self.lambda.unwrap_or(1.0);
        let kind = match self.method.as_str() {
            "selective-pgd" => AdaptiveKind::Selective,
            "orthogonal-pgd" => AdaptiveKind::Orthogonal,
            "lagrangian-pgd" => AdaptiveKind::Lagrangian { lambda },
            "extra-class-pgd" => AdaptiveKind::ExtraClass,
            _ => AdaptiveKind::PathMatching { weight: lambda },
        };
        let ball = match self.norm.as_deref().expect(resolved) {
            "linf" => Ball::Linf,
            "l2" => Ball::L2,
            other => return Err(Error::Config(format!("norm {other:?} is not linf or l2"))),
        };
        let config = |e: attacks::AttackError| Error::Config(format!("{} parameters: {e}", self.method));
        Ok(AdaptivePgd::new(kind, self.eps, self.steps.expect(resolved), self.step_size.expect(resolved), self.random_start, self.seed)
            .map_err(config)?
            .with_ball(ball)
            .with_restarts(self.restarts.expect(resolved))
            .map_err(config)?
            .with_early_stop(self.early_stop))
    }
}

/// What running an attack over a data slice produced. Tensors are on the CPU.
pub struct AttackOutcome {
    pub adversarial: Tensor,
    pub clean: Tensor,
    pub labels: Tensor,
    pub indices: Tensor,
    pub clean_predictions: Tensor,
    pub predictions: Tensor,
    pub stats: AttackStats,
    /// The detector's verdicts, when the attack ran with one.
    pub detector: Option<DetectorVerdicts>,
}

/// Summary figures of an attack run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttackStats {
    pub images: usize,
    pub clean_accuracy: f64,
    pub adversarial_accuracy: f64,
    /// Untargeted: prediction differs from the true label; targeted: prediction is the target.
    pub success_rate: f64,
    /// The same, among the images the model classified correctly before the attack.
    pub success_rate_on_correct: f64,
    pub mean_linf: f64,
    pub max_linf: f64,
    pub mean_l2: f64,
    pub max_l2: f64,
    /// Wall time of the whole run, the prediction passes for these statistics included.
    pub seconds: f64,
    /// Images crafted per second of time spent inside the attack itself (what a caller of
    /// the attack waits for; the clean and adversarial prediction passes are not counted).
    pub images_per_second: f64,
}

/// Runs `params` against `model` on `data` in batches. `indices` are the images' positions in
/// their split (recorded in the output).
pub fn run_attack(
    model: &DecoupledCnn,
    device: Device,
    data: &Dataset,
    indices: &Tensor,
    params: &AttackParams,
    gates: GateGradient,
    batch_size: usize,
    show_progress: bool,
) -> Result<AttackOutcome> {
    run_attack_until(model, None, device, data, indices, params, gates, batch_size, show_progress, &|| false)
}

/// [`run_attack`] against a model guarded by `detector` (which the adaptive methods need and
/// attack; with any method the outcome then records the detector's verdicts), stopping with
/// [`Error::Cancelled`] within one iteration of `cancelled` turning true (the service's caller
/// went away or its deadline passed).
#[allow(clippy::too_many_arguments)]
pub fn run_attack_until(
    model: &DecoupledCnn,
    detector: Option<&PathDetector>,
    device: Device,
    data: &Dataset,
    indices: &Tensor,
    params: &AttackParams,
    gates: GateGradient,
    batch_size: usize,
    show_progress: bool,
    cancelled: &dyn Fn() -> bool,
) -> Result<AttackOutcome> {
    let attack = params.build()?;
    let classes = model.config().num_classes;
    if let Some(t) = params.target_class {
        if !(0..classes).contains(&t) {
            return Err(Error::Config(format!("target class {t} is not in 0..{classes}")));
        }
    }
    if data.is_empty() {
        return Err(Error::Config("no images to attack".into()));
    }
    let guarded = match (&attack, detector) {
        (BuiltAttack::Adaptive(_), None) => {
            return Err(Error::Config(format!("{} attacks the detector too: it needs one", attack.name())))
        }
        (BuiltAttack::Adaptive(a), Some(detector)) => {
            let guarded = GuardedModel::new(model, detector, device).with_cancel(cancelled);
            Some(if a.name() == "path-matching-pgd" {
                guarded.with_reference_paths(&data.images.to_device(device), &data.labels.to_device(device))?
            } else {
                guarded
            })
        }
        _ => None,
    };
    let classifier = ModelClassifier { model, gates, cancelled };
    let n = data.len() as i64;
    let batch = batch_size.max(1) as i64;
    let bar = progress::bar(n as u64, attack.name());
    if !show_progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = Instant::now();
    let mut attack_seconds = 0.0;
    let (mut adversarial, mut clean_predictions, mut predictions, mut scores) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for start in (0..n).step_by(batch as usize) {
        let len = batch.min(n - start);
        let x = data.images.narrow(0, start, len).to_device(device);
        let y = data.labels.narrow(0, start, len).to_device(device);
        let goal = match params.target_class {
            Some(t) => Goal::Targeted(y.full_like(t)),
            None => Goal::Untargeted,
        };
        let attack_started = Instant::now();
        let adv = match (&attack, &guarded) {
            (BuiltAttack::Adaptive(a), Some(g)) => a.perturb(g, &x, &y, &goal),
            (BuiltAttack::Oblivious(a), _) => a.perturb(&classifier, &x, &y, &goal),
            (BuiltAttack::Adaptive(_), None) => unreachable!("checked above"),
        }
        .map_err(|e| match e {
            attacks::AttackError::Cancelled => Error::Cancelled,
            e => Error::Config(format!("{}: {e}", attack.name())),
        })?;
        attack_seconds += attack_started.elapsed().as_secs_f64();
        let (clean_logits, _) = model.predict(&x)?;
        let out = tch::no_grad(|| model.forward_with_path(&adv, GateMode::Eval));
        if let Some(detector) = detector {
            scores.extend(detector.score(&out)?.iter().copied());
        }
        clean_predictions.push(clean_logits.argmax(1, false).to_device(Device::Cpu));
        predictions.push(out.logits.argmax(1, false).to_device(Device::Cpu));
        adversarial.push(adv.to_device(Device::Cpu));
        bar.inc(len as u64);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let adversarial = Tensor::cat(&adversarial, 0);
    let clean_predictions = Tensor::cat(&clean_predictions, 0);
    let predictions = Tensor::cat(&predictions, 0);
    let labels = data.labels.shallow_clone();
    let success = match params.target_class {
        Some(t) => predictions.eq(t),
        None => predictions.ne_tensor(&labels),
    };
    let correct = clean_predictions.eq_tensor(&labels);
    let mean = |t: &Tensor| t.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
    let correct_count = correct.sum(Kind::Int64).int64_value(&[]);
    let success_on_correct = if correct_count == 0 {
        0.0
    } else {
        success.logical_and(&correct).sum(Kind::Int64).int64_value(&[]) as f64 / correct_count as f64
    };
    let delta = &adversarial - &data.images;
    let (linf, l2) = (linf_norms(&delta), l2_norms(&delta));
    let verdicts = detector.map(|d| {
        let flagged = Tensor::from_slice(&scores).ge(d.threshold());
        DetectorVerdicts {
            detector_sha256: d.sha256(),
            threshold: d.threshold(),
            flagged_rate: mean(&flagged),
            evasion_rate: mean(&success.logical_and(&flagged.logical_not())),
            scores: scores.clone(),
        }
    });
    let stats = AttackStats {
        images: n as usize,
        clean_accuracy: mean(&correct),
        adversarial_accuracy: mean(&predictions.eq_tensor(&labels)),
        success_rate: mean(&success),
        success_rate_on_correct: success_on_correct,
        mean_linf: mean(&linf),
        max_linf: linf.max().double_value(&[]),
        mean_l2: mean(&l2),
        max_l2: l2.max().double_value(&[]),
        seconds,
        images_per_second: n as f64 / attack_seconds.max(1e-9),
    };
    Ok(AttackOutcome {
        adversarial,
        clean: data.images.shallow_clone(),
        labels,
        indices: indices.shallow_clone(),
        clean_predictions,
        predictions,
        stats,
        detector: verdicts,
    })
}

/// What the detector said of an attack's images, at its stored threshold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectorVerdicts {
    /// SHA-256 of the detector as saved (`detector.json`).
    pub detector_sha256: String,
    pub threshold: f64,
    /// Adversarial images flagged.
    pub flagged_rate: f64,
    /// Attack succeeded and the image was not flagged: what got through the screen.
    pub evasion_rate: f64,
    /// Each adversarial image's score.
    pub scores: Vec<f64>,
}

/// `manifest.json` of an attack set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub pathguard_version: String,
    pub method: String,
    pub parameters: AttackParams,
    pub gate_gradient: GateGradient,
    /// Success rate with the other gate gradient, when it was measured (`--compare-gates`).
    pub other_gate_gradient: Option<(GateGradient, AttackStats)>,
    pub model_dir: PathBuf,
    pub model_hash: String,
    pub split: String,
    pub offset: usize,
    pub stats: AttackStats,
    /// The detector's verdicts on the adversarial images, when there was one.
    #[serde(default)]
    pub detector: Option<DetectorVerdicts>,
    pub class_names: Vec<String>,
    pub pixel_convention: String,
    pub files: Vec<String>,
}

/// Writes an attack set directory atomically: everything goes into a temporary sibling
/// directory, which then replaces `out` (an existing `out` is moved aside first and removed
/// only after the new one is in place).
pub fn write_attack_set(out: &Path, outcome: &AttackOutcome, manifest: &Manifest, class_names: &[String]) -> Result<()> {
    crate::atomic::write_dir_atomic(out, |tmp| {
        write_npy_f32(&tmp.join("images.npy"), &outcome.adversarial)?;
        write_npy_f32(&tmp.join("clean.npy"), &outcome.clean)?;
        write_npy_i64(&tmp.join("labels.npy"), &outcome.labels)?;
        write_npy_i64(&tmp.join("indices.npy"), &outcome.indices)?;
        write_npy_i64(&tmp.join("predictions.npy"), &outcome.predictions)?;
        let columns = crate::preview::SheetColumns {
            clean: &outcome.clean,
            altered: &outcome.adversarial,
            labels: &outcome.labels,
            predictions: &outcome.predictions,
            altered_title: "adversarial",
        };
        crate::preview::contact_sheet(&tmp.join("preview.png"), &columns, class_names, 8)?;
        let json = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
        crate::model::checkpoint::write_atomic(&tmp.join("manifest.json"), &json)
    })
}

/// Files of an attack set, in the order they are written.
pub const ATTACK_SET_FILES: [&str; 7] =
    ["images.npy", "clean.npy", "labels.npy", "indices.npy", "predictions.npy", "preview.png", "manifest.json"];

pub(crate) fn write_npy_f32(path: &Path, t: &Tensor) -> Result<()> {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let values = Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1))?;
    let array = ndarray::ArrayD::from_shape_vec(shape, values).expect("shape matches");
    ndarray_npy::write_npy(path, &array).map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
}

pub(crate) fn write_npy_i64(path: &Path, t: &Tensor) -> Result<()> {
    let values = Vec::<i64>::try_from(t.to_kind(Kind::Int64).flatten(0, -1))?;
    let array = ndarray::Array1::from_vec(values);
    ndarray_npy::write_npy(path, &array).map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
}

/// Reads `images.npy` (or any float32 NPY) of an attack set as `[N, 1, 28, 28]`.
pub fn read_attack_images(dir: &Path) -> Result<Tensor> {
    crate::data::image::read_npy_batch(&dir.join("images.npy"))
}
