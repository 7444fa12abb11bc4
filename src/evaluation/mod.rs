//! `pathguard evaluate`: every detector (ours and the baselines) fitted on the same attacked
//! training images and judged on the same attacked test images, including attacks none of
//! them saw, plus a cross-attack matrix; see [`report`].

pub mod adaptive;
pub mod corruption_sheet;
pub mod corruptions;
pub mod report;
pub mod roc_plot;
pub mod sr_plot;
pub mod suite;

use std::path::PathBuf;
use std::time::Instant;

use ndarray::Array1;
use tch::Device;

use crate::attack_material::{AttackBlock, AttackMaterial, MaterialOptions, PlannedAttack};
use crate::representations::Representations;
use crate::attack_set::GateGradient;
use crate::attack_spec::{AttackName, AttackParams};
use crate::data::Dataset;
use crate::detector::PathDetector;
use crate::error::{Error, Result};
use crate::model::DecoupledCnn;
use crate::path::PathTemplates;
pub use report::{AttackSummary, CrossAttackResult, DetectionResult, EvaluationReport, REPORT_FILES};
use suite::{DetectorSuite, View, ViewDetector, OURS, RAW_ACTIVATIONS};

/// Settings of one evaluation.
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    /// Attacks the detectors are fitted on, also tested ("seen").
    pub seen: Vec<PlannedAttack>,
    /// Attacks only tested ("unseen").
    pub unseen: Vec<PlannedAttack>,
    /// Attack-set directories (made from the first test images) tested as unseen attacks.
    pub attack_sets: Vec<PathBuf>,
    /// Name prefix of the attack drawn in `roc.png`, e.g. "pgd eps 0.1".
    pub roc_attack: String,
    pub batch_size: usize,
    pub gates: GateGradient,
    pub show_progress: bool,
    /// The command line, for the report.
    pub command: String,
}

/// What the evaluation needs beyond the options.
pub struct EvaluationInputs<'a> {
    pub model: &'a DecoupledCnn,
    pub model_hash: &'a str,
    pub device: Device,
    /// Templates of the path features (the shipped detector's, when there is one).
    pub templates: &'a PathTemplates,
    pub shipped: Option<PathDetector>,
    pub train: &'a Dataset,
    pub test: &'a Dataset,
}

/// The seen/unseen attack lists of the protocol: FGSM, PGD-40 and PGD-40 stopped at
/// the first success (low-confidence examples) at each `eps` seen;
/// BIM, MI-FGSM (eps 0.1), PGD-L2 (`l2_eps`), C&W-L2 and DeepFool unseen, the last two on
/// at most `slow_limit` images.
pub fn standard_attacks(
    eps: &[f64],
    pgd_steps: usize,
    l2_eps: f64,
    slow_limit: usize,
    seed: i64,
) -> Result<(Vec<PlannedAttack>, Vec<PlannedAttack>)> {
    use AttackName::*;
    let plan = |params: AttackParams, max_images: Option<usize>| -> Result<PlannedAttack> {
        Ok(PlannedAttack { spec: AttackParams { seed, ..params }.check()?, max_images })
    };
    let pgd = |e, early_stop: bool| AttackParams { steps: Some(pgd_steps), random_start: !early_stop, early_stop, ..AttackParams::new(Pgd, e) };
    let mut seen = Vec::new();
    for &e in eps {
        seen.push(plan(AttackParams::new(Fgsm, e), None)?);
    }
    for &e in eps {
        seen.push(plan(pgd(e, false), None)?);
    }
    for &e in eps {
        seen.push(plan(pgd(e, true), None)?);
    }
    let unseen = vec![
        plan(AttackParams::new(Bim, 0.1), None)?,
        plan(AttackParams::new(Mifgsm, 0.1), None)?,
        plan(AttackParams { random_start: true, ..AttackParams::new(PgdL2, l2_eps) }, None)?,
        plan(AttackParams::new(Cw, 0.0), Some(slow_limit))?,
        plan(AttackParams::new(Deepfool, 0.0), Some(slow_limit))?,
    ];
    Ok((seen, unseen))
}

pub use crate::detector_fit::labelled_scores;

fn metrics(detector: &str, attack: &str, clean: &Array1<f64>, adversarial: &Array1<f64>) -> Result<DetectionResult> {
    let (scores, labels) = labelled_scores(clean, adversarial);
    let wrap = |e: detectors::DetectorError| Error::detector(format!("{detector} on {attack}"))(e);
    Ok(DetectionResult {
        detector: detector.into(),
        attack: attack.into(),
        auroc: detectors::roc_auc(&scores, &labels).map_err(wrap)?,
        tpr_at_5_fpr: detectors::tpr_at_fpr(&scores, &labels, 0.05).map_err(wrap)?,
        clean: clean.len(),
        adversarial: adversarial.len(),
    })
}

/// Runs the evaluation; the caller writes the report with [`write_report`].
pub fn evaluate(inputs: &EvaluationInputs, options: &EvaluateOptions) -> Result<(EvaluationReport, Vec<(String, f64, Vec<(f64, f64)>)>)> {
    let started = Instant::now();
    if options.seen.is_empty() {
        return Err(Error::Config("evaluate needs at least one training (seen) attack".into()));
    }
    let material_options =
        MaterialOptions { gates: options.gates, batch_size: options.batch_size, show_progress: options.show_progress, keep_images: false };
    let (model, device, templates) = (inputs.model, inputs.device, inputs.templates);

    eprintln!("attacking {} training images", inputs.train.len());
    let train = AttackMaterial::build(model, device, inputs.train, templates, &options.seen, &material_options)?;
    let train_clean = train.clean();
    let train_adversarial = train.adversarial().expect("seen attacks exist");
    if train_adversarial.is_empty() {
        return Err(Error::NoData("no training attack fooled the model; nothing to fit on".into()));
    }
    eprintln!("fitting detectors on {} clean and {} adversarial rows", train_clean.len(), train_adversarial.len());
    let fit_ours = |blocks: Vec<&AttackBlock>| -> Result<PathDetector> {
        let experts = crate::detector_fit::fit_experts(model, &train_clean, &blocks)?;
        Ok(PathDetector::new(inputs.model_hash, templates.clone(), experts))
    };
    let ours = fit_ours(train.attacks.iter().collect())?;
    let suite = DetectorSuite::fit(&train_clean, &train_adversarial, ours, inputs.shipped.clone())?;
    // Cross-attack: ours and the raw-activation baseline fitted on one family of attacks.
    let mut families = Vec::new();
    for (family, method) in [("FGSM only", AttackName::Fgsm), ("PGD only", AttackName::Pgd)] {
        let blocks: Vec<&AttackBlock> =
            train.attacks.iter().filter(|b| b.attack == Some(method) && !b.fooled.is_empty()).collect();
        if blocks.is_empty() {
            continue;
        }
        let parts: Vec<&Representations> = blocks.iter().map(|b| &b.fooled).collect();
        let adversarial = Representations::concat(&parts).expect("non-empty");
        let raw = ViewDetector::fit(RAW_ACTIVATIONS, &train_clean, &adversarial, View::Activations)?;
        families.push((family, fit_ours(blocks)?, raw));
    }

    eprintln!("attacking {} test images", inputs.test.len());
    let all: Vec<PlannedAttack> = options.seen.iter().chain(&options.unseen).cloned().collect();
    let mut test = AttackMaterial::build(model, device, inputs.test, templates, &all, &material_options)?;
    for dir in &options.attack_sets {
        test.add_attack_set(model, device, dir, templates, options.batch_size)?;
    }
    let test_clean = test.clean();
    let clean_scores = suite.score(&test_clean)?;
    let seen_names: Vec<String> = options.seen.iter().map(|p| p.spec.describe()).collect();

    let mut report = EvaluationReport {
        model_hash: inputs.model_hash.into(),
        command: options.command.clone(),
        test_images: inputs.test.len(),
        clean_test_rows: test_clean.len(),
        train_images: inputs.train.len(),
        clean_train_rows: train_clean.len(),
        adversarial_train_rows: train_adversarial.len(),
        training_attacks: seen_names.clone(),
        detectors: suite.names().iter().map(|s| s.to_string()).collect(),
        attacks: Vec::new(),
        results: Vec::new(),
        cross_attack: Vec::new(),
        roc_attack: String::new(),
        seconds: 0.0,
    };
    let mut roc_curves = Vec::new();
    for block in &test.attacks {
        report.attacks.push(AttackSummary {
            name: block.name.clone(),
            seen: seen_names.contains(&block.name),
            attempted: block.attempted,
            fooled: block.fooled.len(),
            success_rate: block.success_rate(),
            seconds: block.seconds,
        });
        if block.fooled.is_empty() {
            continue;
        }
        let adversarial_scores = suite.score(&block.fooled)?;
        let draw = report.roc_attack.is_empty() && block.name.starts_with(&options.roc_attack);
        for ((name, clean), (_, adversarial)) in clean_scores.iter().zip(&adversarial_scores) {
            let result = metrics(name, &block.name, clean, adversarial)?;
            if draw {
                let (scores, labels) = labelled_scores(clean, adversarial);
                let curve = detectors::roc_curve(&scores, &labels).map_err(Error::detector("ROC curve"))?;
                roc_curves.push((name.to_string(), result.auroc, curve));
            }
            report.results.push(result);
        }
        if draw {
            report.roc_attack = block.name.clone();
        }
        for (family, ours, raw) in &families {
            let pairs = [
                (OURS, ours.score_representations(&test_clean)?, ours.score_representations(&block.fooled)?),
                (RAW_ACTIVATIONS, raw.score(&test_clean)?, raw.score(&block.fooled)?),
            ];
            for (name, clean, adversarial) in pairs {
                report.cross_attack.push(CrossAttackResult {
                    fitted_on: family.to_string(),
                    detector: name.to_string(),
                    attack: block.name.clone(),
                    auroc: metrics(name, &block.name, &clean, &adversarial)?.auroc,
                });
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok((report, roc_curves))
}

/// Writes `report.json`, `report.md` and `roc.png` into `out` atomically.
pub fn write_report(out: &std::path::Path, report: &EvaluationReport, roc_curves: &[(String, f64, Vec<(f64, f64)>)]) -> Result<()> {
    let title = format!("ROC, {}", report.roc_attack);
    report.write(out, |png| roc_plot::draw_roc(png, &title, roc_curves))
}
