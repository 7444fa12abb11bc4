//! The evaluation report: `report.json` (everything), `report.md` (the tables) and `roc.png`,
//! written together into one directory that replaces the old one only when complete.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// How one attack went on the evaluated images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttackSummary {
    pub name: String,
    /// Part of the detectors' training attacks.
    pub seen: bool,
    /// Correctly classified clean images attacked.
    pub attempted: usize,
    /// Of those, the ones the attack fooled: the adversarial rows.
    pub fooled: usize,
    pub success_rate: f64,
    pub seconds: f64,
}

/// One detector on one attack: clean test rows versus that attack's adversarial rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectionResult {
    pub detector: String,
    pub attack: String,
    pub auroc: f64,
    pub tpr_at_5_fpr: f64,
    pub clean: usize,
    pub adversarial: usize,
}

/// AUROC of a detector fitted on one family of attacks only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrossAttackResult {
    pub fitted_on: String,
    pub detector: String,
    pub attack: String,
    pub auroc: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluationReport {
    pub model_hash: String,
    pub command: String,
    pub test_images: usize,
    pub clean_test_rows: usize,
    pub train_images: usize,
    pub clean_train_rows: usize,
    pub adversarial_train_rows: usize,
    pub training_attacks: Vec<String>,
    pub detectors: Vec<String>,
    pub attacks: Vec<AttackSummary>,
    pub results: Vec<DetectionResult>,
    pub cross_attack: Vec<CrossAttackResult>,
    /// The attack whose ROC curves are drawn in `roc.png`.
    pub roc_attack: String,
    pub seconds: f64,
}

impl EvaluationReport {
    pub fn result(&self, detector: &str, attack: &str) -> Option<&DetectionResult> {
        self.results.iter().find(|r| r.detector == detector && r.attack == attack)
    }

    /// The report as Markdown tables.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Detection report\n");
        let _ = writeln!(md, "Command: `{}`  ", self.command);
        let _ = writeln!(md, "Model: `{}`  ", self.model_hash);
        let _ = writeln!(
            md,
            "Detectors fitted on {} training images: {} clean rows versus {} adversarial rows from {}.  ",
            self.train_images,
            self.clean_train_rows,
            self.adversarial_train_rows,
            self.training_attacks.join(", ")
        );
        let _ = writeln!(
            md,
            "Tested on the first {} test images: {} correctly classified clean rows versus, per attack, the \
             attacked versions of those that fool the model. Took {:.0} s.\n",
            self.test_images, self.clean_test_rows, self.seconds
        );
        let _ = writeln!(md, "## AUROC / TPR at 5% FPR\n");
        let _ = write!(md, "| attack | adversarial rows |");
        for d in &self.detectors {
            let _ = write!(md, " {d} |");
        }
        let _ = write!(md, "\n|---|---|");
        for _ in &self.detectors {
            let _ = write!(md, "---|");
        }
        md.push('\n');
        for attack in &self.attacks {
            let seen = if attack.seen { "seen" } else { "unseen" };
            let _ = write!(md, "| {} ({seen}) | {} |", attack.name, attack.fooled);
            let best = self
                .detectors
                .iter()
                .filter_map(|d| self.result(d, &attack.name).map(|r| r.auroc))
                .fold(f64::NEG_INFINITY, f64::max);
            for d in &self.detectors {
                match self.result(d, &attack.name) {
                    Some(r) if r.auroc == best => {
                        let _ = write!(md, " **{:.3}** / {:.3} |", r.auroc, r.tpr_at_5_fpr);
                    }
                    Some(r) => {
                        let _ = write!(md, " {:.3} / {:.3} |", r.auroc, r.tpr_at_5_fpr);
                    }
                    None => md.push_str(" - |"),
                }
            }
            md.push('\n');
        }
        let _ = writeln!(md, "\nBold: the best AUROC of the row.\n\n## Attacks\n");
        let _ = writeln!(md, "| attack | attacked (correct clean) | fooled | success | seconds |\n|---|---|---|---|---|");
        for a in &self.attacks {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} | {:.0} |",
                a.name, a.attempted, a.fooled, a.success_rate, a.seconds
            );
        }
        if !self.cross_attack.is_empty() {
            let _ = writeln!(md, "\n## Cross-attack AUROC (fitted on one family, tested on each attack)\n");
            let mut fits: Vec<(String, String)> = Vec::new();
            for c in &self.cross_attack {
                let key = (c.fitted_on.clone(), c.detector.clone());
                if !fits.contains(&key) {
                    fits.push(key);
                }
            }
            let _ = write!(md, "| fitted on | detector |");
            for a in &self.attacks {
                let _ = write!(md, " {} |", a.name);
            }
            let _ = write!(md, "\n|---|---|");
            for _ in &self.attacks {
                md.push_str("---|");
            }
            md.push('\n');
            for (fitted_on, detector) in &fits {
                let _ = write!(md, "| {fitted_on} | {detector} |");
                for a in &self.attacks {
                    match self
                        .cross_attack
                        .iter()
                        .find(|c| &c.fitted_on == fitted_on && &c.detector == detector && c.attack == a.name)
                    {
                        Some(c) => {
                            let _ = write!(md, " {:.3} |", c.auroc);
                        }
                        None => md.push_str(" - |"),
                    }
                }
                md.push('\n');
            }
        }
        let _ = writeln!(md, "\n`roc.png`: ROC curves of every detector on {}.", self.roc_attack);
        md
    }

    /// Writes `report.json`, `report.md` and `roc.png` (drawn by `draw_roc` into the path it
    /// is given) into `out`, replacing an old report only once the new one is complete.
    pub fn write(&self, out: &Path, draw_roc: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        crate::atomic::write_dir_atomic(out, |tmp| {
            let json = serde_json::to_vec_pretty(self).expect("report serialises");
            std::fs::write(tmp.join("report.json"), json).map_err(|e| crate::Error::io(tmp, e))?;
            std::fs::write(tmp.join("report.md"), self.to_markdown()).map_err(|e| crate::Error::io(tmp, e))?;
            draw_roc(&tmp.join("roc.png"))
        })
    }
}

/// Files of an evaluation report.
pub const REPORT_FILES: [&str; 3] = ["report.json", "report.md", "roc.png"];
