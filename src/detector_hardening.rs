//! Hardening the path detector against the attacker who knows it. A detector fitted on FGSM
//! and PGD alone is evaded by detector-aware attacks (`pathguard adaptive-report`); each round
//! here attacks the current detector with the strongest of them (every adaptive attack, best
//! per image, targeted restarts: [`crate::evaluation::adaptive::strongest_attack`]) on the
//! fitting images, adds the images that fool the model as positive rows of both experts,
//! refits, sets the threshold again on the clean validation images, and measures the same
//! attack against the new detector on the held-out validation images (never fitted on).

use std::time::Instant;

use attacks::Ball;
use tch::{Device, Kind};

use crate::attack_material::{AttackBlock, BlockKind};
use crate::data::Dataset;
use crate::detector::{HardeningBudget, HardeningRound, PathDetector};
use crate::detector_fit::{fit_experts, validate, DetectorFit};
use crate::error::{Error, Result};
use crate::evaluation::adaptive::{strongest_attack, AdaptiveInputs, AdaptiveOptions};
use crate::model::DecoupledCnn;
use crate::representations::Representations;

/// Settings of `fit-detector --harden-rounds`.
#[derive(Debug, Clone)]
pub struct HardeningOptions {
    pub rounds: usize,
    /// L-infinity budgets attacked each round (for fitting and for measuring).
    pub eps: Vec<f64>,
    /// The attacks' settings (steps, restarts, targets, lambdas, path weight, batch, seed).
    pub attack: AdaptiveOptions,
    pub target_fpr: f64,
}

/// Runs `options.rounds` rounds on `fit` and returns the final detector, its record holding
/// every round (round 0: the detector before hardening).
pub fn harden_detector(
    model: &DecoupledCnn,
    model_hash: &str,
    device: Device,
    fit: DetectorFit,
    options: &HardeningOptions,
) -> Result<PathDetector> {
    if options.eps.is_empty() {
        return Err(Error::InvalidInput("hardening needs at least one L-inf budget (--harden-eps)".into()));
    }
    let DetectorFit { mut detector, fit_part, val_part, clean, mut blocks, fit_correct, val_clean, val_adv, threshold_rows } = fit;
    let labels = Vec::<i64>::try_from(fit_part.labels.to_kind(Kind::Int64))?;
    let parts = Parts { model, model_hash, device, fit_part: &fit_part, val_part: &val_part, threshold_rows: &threshold_rows };
    let mut rounds = vec![parts.measure(&detector, options, 0, 0, Instant::now())?];
    for round in 1..=options.rounds {
        let started = Instant::now();
        let mut added = 0;
        for &eps in &options.eps {
            let attack_started = Instant::now();
            let inputs = AdaptiveInputs { model, detector: &detector, model_hash, device, test: &fit_part, references: &fit_part };
            let (images, _) = strongest_attack(&inputs, &options.attack, Ball::Linf, eps)?;
            let reps = Representations::compute(model, device, &images, &detector.templates, options.attack.batch_size)?;
            let attempted: Vec<usize> = (0..labels.len()).filter(|&i| fit_correct[i]).collect();
            let fooled: Vec<usize> = attempted.iter().copied().filter(|&i| reps.predictions[i] != labels[i]).collect();
            added += fooled.len();
            blocks.push(AttackBlock {
                name: format!("adaptive round {round} eps {eps} ({} steps)", options.attack.steps),
                attack: None,
                kind: BlockKind::Adaptive,
                attempted: attempted.len(),
                fooled: reps.select(&fooled),
                images: None,
                seconds: attack_started.elapsed().as_secs_f64(),
            });
        }
        let refs: Vec<&AttackBlock> = blocks.iter().collect();
        let mut next = PathDetector::new(model_hash, detector.templates.clone(), fit_experts(model, &clean, &refs)?);
        next.calibrate(&threshold_rows, options.target_fpr)?;
        next.record = detector.record.take();
        detector = next;
        rounds.push(parts.measure(&detector, options, round, added, started)?);
    }
    let validation = validate(&detector, &val_clean, &val_adv)?;
    if let Some(record) = detector.record.as_mut() {
        record.attacks.extend(blocks.iter().filter(|b| b.kind == BlockKind::Adaptive).map(|b| b.name.clone()));
        record.adversarial_rows = blocks.iter().map(|b| b.fooled.len()).sum();
        record.validation = validation;
        record.seconds += rounds.iter().map(|r| r.seconds).sum::<f64>();
        record.hardening = rounds;
    }
    Ok(detector)
}

/// What every round's measurement reads.
struct Parts<'a> {
    model: &'a DecoupledCnn,
    model_hash: &'a str,
    device: Device,
    fit_part: &'a Dataset,
    val_part: &'a Dataset,
    /// The clean rows the threshold is set on.
    threshold_rows: &'a Representations,
}

impl Parts<'_> {
    /// The strongest attack at every budget against `detector` on the validation images.
    fn measure(&self, detector: &PathDetector, options: &HardeningOptions, round: usize, added_rows: usize, started: Instant) -> Result<HardeningRound> {
        let inputs = AdaptiveInputs {
            model: self.model,
            detector,
            model_hash: self.model_hash,
            device: self.device,
            test: self.val_part,
            references: self.fit_part,
        };
        let mut budgets = Vec::new();
        for &eps in &options.eps {
            let (_, result) = strongest_attack(&inputs, &options.attack, Ball::Linf, eps)?;
            let best = result.best();
            budgets.push(HardeningBudget {
                eps,
                sr_at_5: best.sr_at_5,
                misclassified: best.misclassified,
                model_alone_accuracy: result.model_alone_accuracy,
            });
        }
        let scores = detector.score_representations(self.threshold_rows)?;
        let flagged = scores.iter().filter(|&&s| s >= detector.threshold()).count() as f64 / scores.len().max(1) as f64;
        let line: Vec<String> = budgets.iter().map(|b| format!("SR@5 {:.3} at eps {}", b.sr_at_5, b.eps)).collect();
        eprintln!("hardening round {round}: {added_rows} rows added; validation: {}; clean flagged {flagged:.3}", line.join(", "));
        Ok(HardeningRound {
            round,
            added_rows,
            threshold: detector.threshold(),
            validation_clean_flag_rate: flagged,
            budgets,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}
