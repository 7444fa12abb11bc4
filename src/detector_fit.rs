//! Fitting the path-statistics detector: templates from clean training paths, then a
//! logistic regression on clean paths versus the paths of successful FGSM/PGD images, with
//! the threshold set for a target false-positive rate on clean images kept out of the fit
//! (every clean image counts, right or wrong: a user's benign traffic is flagged at that rate).

use std::time::Instant;

use detectors::{DetectionMetrics, LogisticDetectorParams};
use ndarray::{concatenate, Array1, Array2, Axis};
use tch::{Device, Tensor};

use crate::attack_material::{AttackBlock, BlockKind, AttackMaterial, MaterialOptions, PlannedAttack};
use crate::detector::PathExpert;
use crate::representations::Representations;
use crate::attack_set::GateGradient;
use crate::attack_spec::AttackSpec;
use crate::data::Dataset;
use crate::detector::{DetectorRecord, PathDetector};
use crate::error::{Error, Result};
use crate::model::DecoupledCnn;
use crate::path::{FeatureSpec, PathTemplates};

/// Settings of `pathguard fit-detector`.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub attacks: Vec<AttackSpec>,
    /// Fraction of the attacked training images held out to set and check the threshold.
    pub validation_fraction: f64,
    pub target_fpr: f64,
    pub batch_size: usize,
    pub gates: GateGradient,
    pub show_progress: bool,
    /// Count mildly corrupted images (every corruption at severity 1-2,
    /// [`crate::corruptions::mild_mix`]) as clean, in fitting and in setting the threshold.
    pub benign_corruptions: bool,
    pub seed: i64,
}

/// The mildly corrupted versions of some images ([`crate::corruptions::mild_mix`]).
struct Corrupted {
    /// Every one, right or wrong: benign traffic, which the threshold must let through.
    all: Representations,
    /// The rows the model still classifies correctly: the experts' extra clean rows.
    correct: Vec<usize>,
}

/// The clean rows of `material` and, with `benign` on, those of the mildly corrupted versions of
/// `data` that the model still classifies correctly (the corrupted images also returned).
fn negatives(
    material: &AttackMaterial,
    model: &DecoupledCnn,
    device: Device,
    data: &Dataset,
    templates: &PathTemplates,
    options: &FitOptions,
) -> Result<(Representations, Option<Corrupted>)> {
    let clean = material.clean();
    if !options.benign_corruptions {
        return Ok((clean, None));
    }
    let corrupted = corrupt(model, device, data, templates, options)?;
    let kept = corrupted.all.select(&corrupted.correct);
    Ok((Representations::concat(&[&clean, &kept]).expect("two parts"), Some(corrupted)))
}

fn corrupt(model: &DecoupledCnn, device: Device, data: &Dataset, templates: &PathTemplates, options: &FitOptions) -> Result<Corrupted> {
    let images = crate::corruptions::mild_mix(&data.images, options.seed)?;
    let all = Representations::compute(model, device, &images, templates, options.batch_size)?;
    let labels = Vec::<i64>::try_from(&data.labels)?;
    let correct = all.predictions.iter().zip(&labels).enumerate().filter(|(_, (p, l))| p == l).map(|(i, _)| i).collect();
    Ok(Corrupted { all, correct })
}

/// The rows the threshold is set on: every clean image of the held-out part and of
/// `calibration`, right or wrong (a misclassified benign image that gets flagged is still a
/// benign image flagged), and with `benign` on their mild corruptions, right or wrong too (the
/// held-out part's already computed, `val_corrupted`). Only correctly classified corrupted
/// rows would lower the threshold's share of clean ones, whose 5% would then not hold.
fn threshold_rows(
    val_material: &AttackMaterial,
    val_corrupted: Option<Corrupted>,
    model: &DecoupledCnn,
    device: Device,
    calibration: &Dataset,
    templates: &PathTemplates,
    options: &FitOptions,
) -> Result<Representations> {
    let mut parts = vec![val_material.all_clean.clone()];
    if !calibration.is_empty() {
        parts.push(Representations::compute(model, device, &calibration.images, templates, options.batch_size)?);
    }
    parts.extend(val_corrupted.map(|c| c.all));
    if options.benign_corruptions && !calibration.is_empty() {
        parts.push(corrupt(model, device, calibration, templates, options)?.all);
    }
    let refs: Vec<&Representations> = parts.iter().collect();
    Ok(Representations::concat(&refs).expect("at least the held-out part"))
}

/// Templates from the clean images of `data` that the model classifies correctly.
pub fn fit_templates(model: &DecoupledCnn, device: Device, data: &Dataset, batch_size: usize) -> Result<PathTemplates> {
    let n = data.len() as i64;
    let (mut paths, mut predictions) = (Vec::new(), Vec::new());
    for start in (0..n).step_by(batch_size.max(1)) {
        let len = (batch_size as i64).min(n - start);
        let (logits, path) = model.predict(&data.images.narrow(0, start, len).to_device(device))?;
        paths.push(path.to_device(Device::Cpu));
        predictions.push(logits.argmax(1, false).to_device(Device::Cpu));
    }
    let paths = Tensor::cat(&paths, 0);
    let correct = Tensor::cat(&predictions, 0).eq_tensor(&data.labels).nonzero().squeeze_dim(1);
    let config = model.config();
    Ok(PathTemplates::fit(
        &paths.index_select(0, &correct),
        &data.labels.index_select(0, &correct),
        config.num_classes,
        &config.gate_sizes(),
    ))
}

/// Clean scores then adversarial scores, with their labels (`true` = adversarial).
pub fn labelled_scores(clean: &Array1<f64>, adversarial: &Array1<f64>) -> (Vec<f64>, Vec<bool>) {
    let scores: Vec<f64> = clean.iter().chain(adversarial.iter()).copied().collect();
    let labels: Vec<bool> = (0..scores.len()).map(|i| i >= clean.len()).collect();
    (scores, labels)
}

/// Clean rows then adversarial rows, with their labels (`true` = adversarial).
pub fn labelled_rows(clean: &Array2<f64>, adversarial: &Array2<f64>) -> (Array2<f64>, Vec<bool>) {
    let rows = concatenate![Axis(0), clean.view(), adversarial.view()];
    let labels = (0..rows.nrows()).map(|i| i >= clean.nrows()).collect();
    (rows, labels)
}

pub const GATE_LOGIT_EXPERT: &str = "gate logits";
pub const PATH_STATISTICS_EXPERT: &str = "path statistics";

/// The two experts of the path detector (see [`crate::detector`]), fitted on `clean` rows
/// versus the adversarial rows of `blocks`: the gate-logit expert on the full-strength
/// attacks, the path-statistics expert on the early-stopped ones (minimal, low-confidence
/// examples), both on detector-aware ones ([`BlockKind::Adaptive`]). An expert with no blocks of
/// its kind learns from all of them.
pub fn fit_experts<'a>(
    model: &DecoupledCnn,
    clean: &Representations,
    blocks: &[&'a AttackBlock],
) -> Result<Vec<PathExpert>> {
    let sizes = model.config().gate_sizes();
    let total = sizes.iter().sum::<i64>() as usize;
    let (minimal, strong): (Vec<&AttackBlock>, Vec<&AttackBlock>) =
        blocks.iter().copied().partition(|b| b.kind == BlockKind::Minimal);
    // Detector-aware attacks evade both experts at once, so both learn from them.
    let (adaptive, strong): (Vec<&AttackBlock>, Vec<&AttackBlock>) = strong.into_iter().partition(|b| b.kind == BlockKind::Adaptive);
    let with_adaptive = |v: Vec<&'a AttackBlock>| -> Vec<&'a AttackBlock> {
        if v.is_empty() {
            return blocks.to_vec();
        }
        v.into_iter().chain(adaptive.iter().copied()).collect()
    };
    let experts = [
        (GATE_LOGIT_EXPERT, FeatureSpec::gate_logits_only(sizes.len(), total), with_adaptive(strong)),
        (PATH_STATISTICS_EXPERT, FeatureSpec::for_layers(sizes.len()), with_adaptive(minimal)),
    ];
    experts
        .into_iter()
        .map(|(name, features, blocks)| {
            let parts: Vec<&Representations> = blocks.iter().map(|b| &b.fooled).collect();
            let adversarial = Representations::concat(&parts)
                .filter(|a| !a.is_empty())
                .ok_or_else(|| {
                    let attacks: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
                    Error::NoData(format!(
                        "no attack fooled the model on the fitting images ({}), so the {name} expert has no adversarial rows to learn from; attack more images (--limit) or at a larger --eps",
                        attacks.join(", ")
                    ))
                })?;
            let (rows, labels) = labelled_rows(&clean.detector_rows(&features), &adversarial.detector_rows(&features));
            let classifier = LogisticDetectorParams::new(name)
                .check()
                .and_then(|p| p.fit(rows.view(), &labels))
                .map_err(Error::detector(format!("fitting the {name} expert")))?;
            Ok(PathExpert { name: name.into(), features, classifier, attacks: blocks.iter().map(|b| b.name.clone()).collect() })
        })
        .collect()
}

/// A fitted detector with what it was fitted and validated on, for hardening to go on from.
pub struct DetectorFit {
    pub detector: PathDetector,
    /// The images the experts were fitted on, and the held-out ones.
    pub fit_part: Dataset,
    pub val_part: Dataset,
    /// Negative rows of the fit (clean, plus mild corruptions when asked), and the positive blocks.
    pub clean: Representations,
    pub blocks: Vec<AttackBlock>,
    /// Which fit images the model classifies correctly.
    pub fit_correct: Vec<bool>,
    /// Clean validation rows (correctly classified) and the attacked validation rows.
    pub val_clean: Representations,
    pub val_adv: Representations,
    /// What the threshold is set on ([`threshold_rows`]).
    pub threshold_rows: Representations,
}

/// Fits the detector on the first images of `train`, validating on the rest; the threshold is
/// set on the clean held-out images and on `calibration` (clean images seen by neither the fit
/// nor the templates' attacks; may be empty).
pub fn fit_detector_parts(
    model: &DecoupledCnn,
    model_hash: &str,
    device: Device,
    template_set: &Dataset,
    train: &Dataset,
    calibration: &Dataset,
    options: &FitOptions,
) -> Result<DetectorFit> {
    if !(options.validation_fraction > 0.0 && options.validation_fraction < 1.0) {
        return Err(Error::Config(format!("validation fraction must be in (0, 1), got {}", options.validation_fraction)));
    }
    if options.attacks.is_empty() {
        return Err(Error::Config("at least one attack is needed to fit the detector".into()));
    }
    let started = Instant::now();
    let templates = fit_templates(model, device, template_set, options.batch_size)?;
    let n = train.len();
    let n_val = ((n as f64) * options.validation_fraction).round() as usize;
    if n_val < 10 || n - n_val < 10 {
        return Err(Error::Config(format!("{n} training images are too few to fit and validate a detector")));
    }
    let n_fit = n - n_val;
    let fit_part = train.slice(0, n_fit);
    let val_part = train.slice(n_fit, n_val);
    let planned: Vec<PlannedAttack> =
        options.attacks.iter().map(|&spec| PlannedAttack { spec, max_images: None }).collect();
    let material_options =
        MaterialOptions { gates: options.gates, batch_size: options.batch_size, show_progress: options.show_progress, keep_images: false };
    let fit_material = AttackMaterial::build(model, device, &fit_part, &templates, &planned, &material_options)?;
    let (clean, corrupted) = negatives(&fit_material, model, device, &fit_part, &templates, options)?;
    let adversarial = fit_material.adversarial().expect("at least one attack");
    let blocks: Vec<&AttackBlock> = fit_material.attacks.iter().collect();
    let mut detector = PathDetector::new(model_hash, templates, fit_experts(model, &clean, &blocks)?);

    let val_material = AttackMaterial::build(model, device, &val_part, &detector.templates, &planned, &material_options)?;
    let (val_clean, val_corrupted) = negatives(&val_material, model, device, &val_part, &detector.templates, options)?;
    let val_adv = val_material.adversarial().expect("at least one attack");
    let threshold_rows = threshold_rows(&val_material, val_corrupted, model, device, calibration, &detector.templates, options)?;
    detector.calibrate(&threshold_rows, options.target_fpr)?;
    let validation = validate(&detector, &val_clean, &val_adv)?;

    detector.record = Some(DetectorRecord {
        attacks: options.attacks.iter().map(AttackSpec::describe).collect(),
        train_images: n,
        clean_rows: clean.len(),
        benign_corruption_rows: corrupted.map_or(0, |c| c.correct.len()),
        adversarial_rows: adversarial.len(),
        validation_clean_rows: val_clean.len(),
        threshold_rows: threshold_rows.len(),
        calibration: String::new(),
        target_false_positive_rate: options.target_fpr,
        validation,
        seconds: started.elapsed().as_secs_f64(),
        hardening: Vec::new(),
    });
    Ok(DetectorFit {
        detector,
        fit_part,
        val_part,
        clean,
        fit_correct: fit_material.correct.clone(),
        blocks: fit_material.attacks,
        val_clean,
        val_adv,
        threshold_rows,
    })
}

/// Clean versus attacked validation rows at the detector's threshold.
pub fn validate(detector: &PathDetector, val_clean: &Representations, val_adv: &Representations) -> Result<DetectionMetrics> {
    if val_adv.is_empty() || val_clean.is_empty() {
        let missing = if val_adv.is_empty() { "no attack fooled the model on them" } else { "the model classified none of them correctly" };
        return Err(Error::Config(format!(
            "cannot validate the detector on the held-out images: {missing}; fit on more images (--limit) or a larger --validation-fraction"
        )));
    }
    let (scores, labels) = labelled_scores(
        &detector.score_representations(val_clean)?,
        &detector.score_representations(val_adv)?,
    );
    DetectionMetrics::compute(&scores, &labels, detector.threshold).map_err(Error::detector("validating the detector"))
}
