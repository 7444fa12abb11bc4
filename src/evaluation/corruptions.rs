//! `pathguard corruption-report` (issue 19): how the model and the detector take benign
//! corruptions. Per corruption and severity: the model's accuracy and the detector's flag rate
//! at its stored threshold, beside the clean images'; and whether the detector can tell an
//! attack from a benign change (AUROC of adversarial against corrupted images).

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::attack_set::{run_attack, AttackParams, GateGradient};
use crate::corruption_set::{verdicts, Verdicts};
use crate::corruptions::CORRUPTIONS;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::screener::Screener;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorruptionRow {
    pub corruption: String,
    pub severity: usize,
    pub level: f64,
    pub unit: String,
    pub mean_change: f64,
    pub verdicts: Verdicts,
    /// AUROC of the PGD images (eps 0.1, misclassified) against these corrupted images.
    pub auroc_pgd_vs_corrupted: f64,
}

/// Adversarial images of one attack against the corrupted images of one severity, pooled
/// over every corruption (severity 0: against the clean images).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Separation {
    pub attack: String,
    pub adversarial_images: usize,
    pub severity: usize,
    pub corrupted_images: usize,
    pub auroc: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorruptionReport {
    pub command: String,
    pub model_hash: String,
    pub threshold: f64,
    pub images: usize,
    pub seed: i64,
    pub clean: Verdicts,
    pub rows: Vec<CorruptionRow>,
    pub separation: Vec<Separation>,
    pub seconds: f64,
}

pub const CORRUPTION_REPORT_FILES: [&str; 3] = ["report.md", "report.json", "corruptions.png"];

/// Scores of the images an attack misclassified.
fn fooled_scores(screener: &Screener, data: &Dataset, params: &AttackParams) -> Result<Vec<f64>> {
    let indices = Tensor::arange(data.len() as i64, (tch::Kind::Int64, Device::Cpu));
    let outcome = run_attack(&screener.checkpoint.model, screener.device, data, &indices, params, GateGradient::Surrogate, 128, true)?;
    let judged = verdicts(screener, &outcome.adversarial, &data.labels, 256)?;
    let labels = Vec::<i64>::try_from(&data.labels)?;
    Ok(judged.scores.iter().zip(judged.predictions.iter().zip(&labels)).filter(|(_, (p, l))| p != l).map(|(&s, _)| s).collect())
}

fn auroc(positive: &[f64], negative: &[f64]) -> Result<f64> {
    let scores: Vec<f64> = negative.iter().chain(positive).copied().collect();
    let labels: Vec<bool> = negative.iter().map(|_| false).chain(positive.iter().map(|_| true)).collect();
    detectors::roc_auc(&scores, &labels).map_err(|e| Error::Config(format!("AUROC: {e}")))
}

/// Every corruption at every severity on `data`; PGD (eps 0.1, `pgd_steps`) on all of `data`
/// and C&W on the first `slow_limit` images (none: 0) for the separation AUROCs.
pub fn corruption_report(
    screener: &Screener,
    data: &Dataset,
    pgd_steps: usize,
    slow_limit: usize,
    seed: i64,
    command: String,
) -> Result<CorruptionReport> {
    let started = Instant::now();
    if data.is_empty() {
        return Err(Error::Config("no images to corrupt".into()));
    }
    let clean = verdicts(screener, &data.images, &data.labels, 256)?;
    let pgd_params = AttackParams { steps: Some(pgd_steps), random_start: true, seed, ..AttackParams::new("pgd", 0.1) };
    eprintln!("attacking {} images with PGD-{pgd_steps} eps 0.1, {} with C&W", data.len(), slow_limit.min(data.len()));
    let pgd = fooled_scores(screener, data, &pgd_params)?;
    let cw = if slow_limit == 0 { Vec::new() } else { fooled_scores(screener, &data.take(slow_limit), &AttackParams::new("cw", 0.0))? };
    let mut rows = Vec::new();
    let mut pooled: Vec<Vec<f64>> = Vec::new();
    for corruption in &CORRUPTIONS {
        for severity in 1..=corruption.levels.len() {
            let corrupted = corruption.apply(&data.images, severity, seed)?;
            let judged = verdicts(screener, &corrupted, &data.labels, 256)?;
            if pooled.len() < severity {
                pooled.resize(severity, Vec::new());
            }
            pooled[severity - 1].extend(judged.scores.iter().copied());
            eprintln!(
                "{} severity {severity}: accuracy {:.3}, flagged {:.3}",
                corruption.name, judged.accuracy, judged.flag_rate
            );
            rows.push(CorruptionRow {
                corruption: corruption.name.into(),
                severity,
                level: corruption.level(severity)?,
                unit: corruption.unit.into(),
                mean_change: (&corrupted - &data.images).abs().mean(tch::Kind::Float).double_value(&[]),
                auroc_pgd_vs_corrupted: auroc(&pgd, &judged.scores)?,
                verdicts: judged,
            });
        }
    }
    let mut separation = Vec::new();
    let pgd_name = format!("pgd eps 0.1 ({pgd_steps} steps)");
    for (attack, scores) in [(pgd_name.as_str(), &pgd), ("cw kappa 0 (100 steps x 3 searches)", &cw)] {
        if !scores.is_empty() {
            separation.push(Separation {
                attack: attack.into(),
                adversarial_images: scores.len(),
                severity: 0,
                corrupted_images: clean.scores.len(),
                auroc: auroc(scores, &clean.scores)?,
            });
        }
        for severity in [1usize, 2] {
            if scores.is_empty() || pooled.len() < severity {
                continue;
            }
            separation.push(Separation {
                attack: attack.into(),
                adversarial_images: scores.len(),
                severity,
                corrupted_images: pooled[severity - 1].len(),
                auroc: auroc(scores, &pooled[severity - 1])?,
            });
        }
    }
    Ok(CorruptionReport {
        command,
        model_hash: screener.checkpoint.model_hash().into(),
        threshold: screener.detector.threshold(),
        images: data.len(),
        seed,
        clean,
        rows,
        separation,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl CorruptionReport {
    /// Severities 1-2 whose flag rate exceeds the clean one by more than 5 points.
    pub fn over_goal(&self) -> Vec<&CorruptionRow> {
        self.rows.iter().filter(|r| r.severity <= 2 && r.verdicts.flag_rate > self.clean.flag_rate + 0.05).collect()
    }

    pub fn to_markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut md = String::new();
        let _ = writeln!(md, "# Benign corruptions\n\nCommand: `{}`  \nModel: `{}`  ", self.command, self.model_hash);
        let _ = writeln!(
            md,
            "{} test images; the detector's stored threshold {:.4}. Clean: accuracy {:.3}, flagged {:.3} \
             ({:.3} of the correctly classified). Took {:.0} s.\n",
            self.images, self.threshold, self.clean.accuracy, self.clean.flag_rate, self.clean.flag_rate_of_correct, self.seconds
        );
        let _ = writeln!(
            md,
            "| corruption | severity | level | mean change | accuracy | flagged | flagged (still correct) | AUROC PGD vs it |\n|---|---|---|---|---|---|---|---|"
        );
        let _ = writeln!(
            md,
            "| clean | - | - | 0 | {:.3} | {:.3} | {:.3} | - |",
            self.clean.accuracy, self.clean.flag_rate, self.clean.flag_rate_of_correct
        );
        for r in &self.rows {
            let over = r.severity <= 2 && r.verdicts.flag_rate > self.clean.flag_rate + 0.05;
            let flagged = if over { format!("**{:.3}**", r.verdicts.flag_rate) } else { format!("{:.3}", r.verdicts.flag_rate) };
            let _ = writeln!(
                md,
                "| {} | {} | {} {} | {:.4} | {:.3} | {flagged} | {:.3} | {:.3} |",
                r.corruption,
                r.severity,
                r.level,
                r.unit,
                r.mean_change,
                r.verdicts.accuracy,
                r.verdicts.flag_rate_of_correct,
                r.auroc_pgd_vs_corrupted
            );
        }
        let over = self.over_goal();
        let _ = writeln!(
            md,
            "\nBold: severity 1-2 flag rates more than 5 points above the clean one ({} of {} rows; goal: none).\n",
            over.len(),
            self.rows.iter().filter(|r| r.severity <= 2).count()
        );
        let _ = writeln!(md, "## Attack or benign change? (adversarial = positive)\n");
        let _ = writeln!(md, "| adversarial | images | against | images | AUROC |\n|---|---|---|---|---|");
        for s in &self.separation {
            let against = if s.severity == 0 { "clean".to_string() } else { format!("all corruptions, severity {}", s.severity) };
            let _ = writeln!(md, "| {} | {} | {against} | {} | {:.3} |", s.attack, s.adversarial_images, s.corrupted_images, s.auroc);
        }
        let _ = writeln!(md, "\n`corruptions.png`: one test image under every corruption and severity, with each cell's flag rate.");
        md
    }

    pub fn write(&self, out: &std::path::Path, example: &Tensor) -> Result<()> {
        crate::atomic::write_dir_atomic(out, |tmp| {
            let json = serde_json::to_vec_pretty(self).expect("report serialises");
            crate::model::checkpoint::write_atomic(&tmp.join("report.json"), &json)?;
            crate::model::checkpoint::write_atomic(&tmp.join("report.md"), self.to_markdown().as_bytes())?;
            crate::evaluation::corruption_sheet::draw(&tmp.join("corruptions.png"), self, example)
        })
    }
}
