//! Fitting the path-statistics detector: templates from clean training paths, then a
//! logistic regression on clean paths versus the paths of successful FGSM/PGD images, with
//! the threshold set for a target false-positive rate on held-out clean images.

use std::time::Instant;

use detectors::{DetectionMetrics, Detector, LogisticDetectorParams};
use ndarray::{concatenate, Array2, Axis};
use tch::{Device, Kind, Tensor};

use crate::attack_set::{run_attack, AttackParams, GateGradient};
use crate::data::Dataset;
use crate::detector::{DetectorRecord, PathDetector};
use crate::error::{Error, Result};
use crate::model::{DecoupledCnn, GateMode};
use crate::path::{path_features, FeatureSpec, PathTemplates};

/// Settings of `pathguard fit-detector`.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub attacks: Vec<AttackParams>,
    /// Fraction of the attacked training images held out to set and check the threshold.
    pub validation_fraction: f64,
    pub target_fpr: f64,
    pub batch_size: usize,
    pub gates: GateGradient,
    pub show_progress: bool,
}

/// Eval-mode features and predictions of `images`, in batches.
pub fn features_of(
    model: &DecoupledCnn,
    device: Device,
    images: &Tensor,
    templates: &PathTemplates,
    batch_size: usize,
) -> Result<(Array2<f64>, Tensor)> {
    let n = images.size()[0];
    let mut rows = Vec::new();
    let mut predictions = Vec::new();
    for start in (0..n).step_by(batch_size.max(1)) {
        let len = (batch_size as i64).min(n - start);
        let x = images.narrow(0, start, len).to_device(device);
        model.check_input(&x)?;
        let out = tch::no_grad(|| model.forward_with_path(&x, GateMode::Eval));
        rows.push(path_features(&out, templates));
        predictions.push(out.logits.argmax(1, false).to_device(Device::Cpu));
    }
    let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
    Ok((concatenate(Axis(0), &views).expect("same width"), Tensor::cat(&predictions, 0)))
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

fn select_rows(rows: &Array2<f64>, mask: &Tensor) -> Array2<f64> {
    let keep: Vec<usize> = Vec::<bool>::try_from(mask.to_kind(Kind::Bool))
        .expect("bool mask")
        .iter()
        .enumerate()
        .filter_map(|(i, &k)| k.then_some(i))
        .collect();
    rows.select(Axis(0), &keep)
}

/// Clean rows (correctly classified) and adversarial rows (attacks that fooled the model) of
/// `data`, one adversarial block per attack.
fn labelled_rows(
    model: &DecoupledCnn,
    device: Device,
    data: &Dataset,
    templates: &PathTemplates,
    options: &FitOptions,
) -> Result<(Array2<f64>, Vec<Array2<f64>>)> {
    let (clean_rows, clean_pred) = features_of(model, device, &data.images, templates, options.batch_size)?;
    let correct = clean_pred.eq_tensor(&data.labels);
    let clean = select_rows(&clean_rows, &correct);
    let indices = Tensor::arange(data.len() as i64, (Kind::Int64, Device::Cpu));
    let mut adversarial = Vec::new();
    for params in &options.attacks {
        let outcome = run_attack(model, device, data, &indices, params, options.gates, options.batch_size, options.show_progress)?;
        let (rows, pred) = features_of(model, device, &outcome.adversarial, templates, options.batch_size)?;
        // Adversarial examples proper: the image was classified correctly and now is not.
        let fooled = pred.ne_tensor(&data.labels).logical_and(&correct);
        adversarial.push(select_rows(&rows, &fooled));
    }
    Ok((clean, adversarial))
}

/// Fits the detector on the first images of `train`, validating on the rest.
pub fn fit_path_detector(
    model: &DecoupledCnn,
    model_hash: &str,
    device: Device,
    template_set: &Dataset,
    train: &Dataset,
    options: &FitOptions,
) -> Result<PathDetector> {
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
    let fit_part = Dataset { images: train.images.narrow(0, 0, n_fit as i64), labels: train.labels.narrow(0, 0, n_fit as i64) };
    let val_part = Dataset {
        images: train.images.narrow(0, n_fit as i64, n_val as i64),
        labels: train.labels.narrow(0, n_fit as i64, n_val as i64),
    };
    let (clean, adversarial) = labelled_rows(model, device, &fit_part, &templates, options)?;
    let adv_views: Vec<_> = adversarial.iter().map(|a| a.view()).collect();
    let adversarial = concatenate(Axis(0), &adv_views).expect("same width");
    let rows = concatenate![Axis(0), clean, adversarial];
    let labels: Vec<bool> = (0..rows.nrows()).map(|i| i >= clean.nrows()).collect();
    let mut classifier = LogisticDetectorParams::new("path-statistics")
        .check()
        .and_then(|p| p.fit(rows.view(), &labels))
        .map_err(|e| Error::Config(format!("fitting the detector: {e}")))?;

    let (val_clean, val_adv) = labelled_rows(model, device, &val_part, &templates, options)?;
    classifier
        .calibrate(val_clean.view(), options.target_fpr)
        .map_err(|e| Error::Config(format!("setting the threshold: {e}")))?;
    let val_views: Vec<_> = val_adv.iter().map(|a| a.view()).collect();
    let val_adv = concatenate(Axis(0), &val_views).expect("same width");
    let val_rows = concatenate![Axis(0), val_clean, val_adv];
    let val_labels: Vec<bool> = (0..val_rows.nrows()).map(|i| i >= val_clean.nrows()).collect();
    let scores = classifier.score(val_rows.view()).map_err(|e| Error::Config(e.to_string()))?;
    let validation = DetectionMetrics::compute(scores.as_slice().expect("contiguous"), &val_labels, classifier.threshold)
        .map_err(|e| Error::Config(format!("validating the detector: {e}")))?;

    let features = FeatureSpec::for_layers(model.config().gate_sizes().len());
    let mut detector = PathDetector::new(model_hash, features, templates, classifier);
    detector.record = Some(DetectorRecord {
        attacks: options.attacks.iter().map(describe_attack).collect(),
        train_images: n,
        clean_rows: clean.nrows(),
        adversarial_rows: adversarial.nrows(),
        validation_clean_rows: val_clean.nrows(),
        target_false_positive_rate: options.target_fpr,
        validation,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(detector)
}

/// "pgd eps 0.1 (40 steps)"-style description of an attack.
pub fn describe_attack(p: &AttackParams) -> String {
    let p = p.resolved();
    match p.steps {
        Some(s) if s > 1 => format!("{} eps {} ({} steps)", p.method, p.eps, s),
        _ => format!("{} eps {}", p.method, p.eps),
    }
}
