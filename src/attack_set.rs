//! Attack sets: run an attack from the `attacks` crate against the decoupled CNN over a slice
//! of Fashion-MNIST, and write the result in formats the Python world reads.

use std::path::{Path, PathBuf};
use std::time::Instant;

use attacks::{l2_norms, linf_norms, DifferentiableClassifier, Goal};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::attack_spec::{AttackSpec, BuiltAttack};
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
            _ => Err(Error::InvalidInput(format!("unknown gate gradient {s:?}; use hard or surrogate"))),
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

/// Runs the attack of `spec` against `model` on `data` in batches. `indices` are the images' positions in
/// their split (recorded in the output).
pub fn run_attack(
    model: &DecoupledCnn,
    device: Device,
    data: &Dataset,
    indices: &Tensor,
    spec: &AttackSpec,
    gates: GateGradient,
    batch_size: usize,
    show_progress: bool,
) -> Result<AttackOutcome> {
    run_attack_until(model, None, device, data, indices, spec, gates, batch_size, show_progress, &|| false)
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
    spec: &AttackSpec,
    gates: GateGradient,
    batch_size: usize,
    show_progress: bool,
    cancelled: &dyn Fn() -> bool,
) -> Result<AttackOutcome> {
    let attack = spec.build()?;
    let classes = model.config().num_classes;
    if let Some(t) = spec.target_class {
        if !(0..classes).contains(&t) {
            return Err(Error::InvalidInput(format!("target class {t} is not in 0..{classes}")));
        }
    }
    if data.is_empty() {
        return Err(Error::NoData("no images to attack".into()));
    }
    let guarded = match (&attack, detector) {
        (BuiltAttack::Adaptive(_), None) => {
            return Err(Error::InvalidInput(format!("{} attacks the detector too: it needs one", attack.name())))
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
        let goal = match spec.target_class {
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
            e => Error::Attack { what: attack.name().into(), source: e },
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
    let success = match spec.target_class {
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
    pub parameters: AttackSpec,
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
