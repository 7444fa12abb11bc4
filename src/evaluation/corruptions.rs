//! `pathguard corruption-report` (issue 19): how the model and the detector take benign
//! corruptions. Per corruption and severity: the model's accuracy and the detector's flag rate
//! at its stored threshold, beside the clean images'; and whether the detector can tell an
//! attack from a benign change (AUROC of adversarial against corrupted images).

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::attack_set::{run_attack, GateGradient};
use crate::attack_spec::{AttackName, AttackParams, AttackSpec};
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
    /// Which expert fires and how far from the training images, per group of images: what a
    /// pipeline could route on.
    #[serde(default)]
    pub reasons: Vec<ReasonRow>,
    pub seconds: f64,
}

/// The reasons behind the verdicts of one group of images (clean, a severity pooled over
/// every corruption, or an attack's misclassified images).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReasonRow {
    pub group: String,
    pub images: usize,
    pub verdicts: Verdicts,
}

pub const CORRUPTION_REPORT_FILES: [&str; 3] = ["report.md", "report.json", "corruptions.png"];

/// The verdicts of the images an attack misclassified.
fn fooled(screener: &Screener, data: &Dataset, spec: &AttackSpec) -> Result<Verdicts> {
    let indices = Tensor::arange(data.len() as i64, (tch::Kind::Int64, Device::Cpu));
    let outcome = run_attack(&screener.checkpoint.model, screener.device, data, &indices, spec, GateGradient::Surrogate, 128, true)?;
    let judged = verdicts(screener, &outcome.adversarial, &data.labels, 256)?;
    let labels = Vec::<i64>::try_from(&data.labels)?;
    let rows: Vec<usize> = (0..labels.len()).filter(|&i| judged.predictions[i] != labels[i]).collect();
    Ok(judged.select(&rows, &labels, &expert_names(screener), screener.detector.threshold()))
}

fn expert_names(screener: &Screener) -> Vec<String> {
    screener.detector.experts.iter().map(|e| e.name.clone()).collect()
}

/// Per-image verdicts of several image sets, pooled.
#[derive(Default)]
struct Pool {
    predictions: Vec<i64>,
    scores: Vec<f64>,
    expert_scores: Vec<Vec<f64>>,
    percentiles: Vec<Option<f64>>,
    labels: Vec<i64>,
}

impl Pool {
    fn add(&mut self, v: &Verdicts, labels: &[i64]) {
        self.predictions.extend(&v.predictions);
        self.scores.extend(&v.scores);
        self.expert_scores.extend(v.expert_scores.iter().cloned());
        self.percentiles.extend(&v.percentiles);
        self.labels.extend(labels);
    }

    fn verdicts(self, screener: &Screener) -> Verdicts {
        let labels = self.labels;
        let threshold = screener.detector.threshold();
        Verdicts::summarise(self.predictions, self.scores, self.expert_scores, self.percentiles, &labels, &expert_names(screener), threshold)
    }
}

fn auroc(positive: &[f64], negative: &[f64]) -> Result<f64> {
    let scores: Vec<f64> = negative.iter().chain(positive).copied().collect();
    let labels: Vec<bool> = negative.iter().map(|_| false).chain(positive.iter().map(|_| true)).collect();
    detectors::roc_auc(&scores, &labels).map_err(Error::detector("AUROC"))
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
        return Err(Error::NoData("no images to corrupt".into()));
    }
    let clean = verdicts(screener, &data.images, &data.labels, 256)?;
    let pgd = AttackParams { steps: Some(pgd_steps), random_start: true, seed, ..AttackParams::new(AttackName::Pgd, 0.1) }.check()?;
    eprintln!("attacking {} images with PGD-{pgd_steps} eps 0.1, {} with C&W", data.len(), slow_limit.min(data.len()));
    let pgd_verdicts = fooled(screener, data, &pgd)?;
    let cw_verdicts = if slow_limit == 0 { None } else { Some(fooled(screener, &data.take(slow_limit), &AttackParams::new(AttackName::Cw, 0.0).check()?)?) };
    let labels = Vec::<i64>::try_from(&data.labels)?;
    let mut rows = Vec::new();
    // Severities 1 and 2 pooled over every corruption: the "mild" changes of the goals.
    let mut pools: [Pool; 2] = Default::default();
    for corruption in &CORRUPTIONS {
        for severity in 1..=corruption.levels.len() {
            let corrupted = corruption.apply(&data.images, severity, seed)?;
            let judged = verdicts(screener, &corrupted, &data.labels, 256)?;
            if let Some(pool) = pools.get_mut(severity - 1) {
                pool.add(&judged, &labels);
            }
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
                auroc_pgd_vs_corrupted: auroc(&pgd_verdicts.scores, &judged.scores)?,
                verdicts: judged,
            });
        }
    }
    let pooled: Vec<Verdicts> = pools.into_iter().map(|p| p.verdicts(screener)).collect();
    let no_scores = Vec::new();
    let cw = cw_verdicts.as_ref().map(|v| &v.scores).unwrap_or(&no_scores);
    let mut separation = Vec::new();
    let pgd_name = format!("pgd eps 0.1 ({pgd_steps} steps)");
    for (attack, scores) in [(pgd_name.as_str(), &pgd_verdicts.scores), ("cw kappa 0 (100 steps x 3 searches)", cw)] {
        if !scores.is_empty() {
            separation.push(Separation {
                attack: attack.into(),
                adversarial_images: scores.len(),
                severity: 0,
                corrupted_images: clean.scores.len(),
                auroc: auroc(scores, &clean.scores)?,
            });
        }
        for (i, corrupted) in pooled.iter().enumerate() {
            if scores.is_empty() || corrupted.scores.is_empty() {
                continue;
            }
            separation.push(Separation {
                attack: attack.into(),
                adversarial_images: scores.len(),
                severity: i + 1,
                corrupted_images: corrupted.scores.len(),
                auroc: auroc(scores, &corrupted.scores)?,
            });
        }
    }
    let pgd_name_steps = format!("PGD eps 0.1 ({pgd_steps} steps), misclassified");
    let mut reasons = vec![ReasonRow { group: "clean".into(), images: clean.scores.len(), verdicts: clean.clone() }];
    for (i, verdicts) in pooled.into_iter().enumerate() {
        reasons.push(ReasonRow { group: format!("all corruptions, severity {}", i + 1), images: verdicts.scores.len(), verdicts });
    }
    reasons.push(ReasonRow { group: pgd_name_steps, images: pgd_verdicts.scores.len(), verdicts: pgd_verdicts });
    if let Some(verdicts) = cw_verdicts {
        reasons.push(ReasonRow { group: "C&W, misclassified".into(), images: verdicts.scores.len(), verdicts });
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
        reasons,
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
        self.reasons_markdown(&mut md);
        let _ = writeln!(md, "\n`corruptions.png`: one test image under every corruption and severity, with each cell's flag rate.");
        md
    }

    /// Which expert fires and how far from the training images, per group of images.
    fn reasons_markdown(&self, md: &mut String) {
        use std::fmt::Write as _;
        let Some(first) = self.reasons.first() else { return };
        let experts: Vec<&String> = first.verdicts.fired.keys().collect();
        let _ = writeln!(md, "\n## Why they are flagged: which expert fires, how far from the training images\n");
        let _ = writeln!(
            md,
            "Share of each group's images: flagged; flagged by each expert alone; farther from the training \
             distribution than {:.0}% of held-out clean training images (`far`, from distribution.json).\n",
            crate::corruption_set::FAR_PERCENTILE * 100.0
        );
        let head: String = experts.iter().map(|e| format!(" {e} fires |")).collect();
        let _ = writeln!(md, "| images | count | flagged |{head} far |\n|---|---|---|{}---|", "---|".repeat(experts.len()));
        for r in &self.reasons {
            let fired: String = experts.iter().map(|e| format!(" {:.3} |", r.verdicts.fired.get(*e).copied().unwrap_or(0.0))).collect();
            let far = r.verdicts.far_rate.map(|f| format!("{f:.3}")).unwrap_or_else(|| "-".into());
            let _ = writeln!(md, "| {} | {} | {:.3} |{fired} {far} |", r.group, r.images, r.verdicts.flag_rate);
        }
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
