//! `pathguard adaptive-report`: the shipped model and detector against attackers who know the
//! detector (issue 14). Per budget, every detector-aware attack of [`attacks::AdaptivePgd`],
//! extra-class Auto-PGD, and oblivious PGD, APGD-CE and APGD-DLR run on the same test images;
//! "best adaptive" takes, per image, the best of all of them plus targeted restarts on the
//! images none of them evaded. Every verdict is
//! computed afresh on the final images with hard gates and the real detector at its stored
//! threshold; the twin only guides the gradients.

use std::time::Instant;

use attacks::{AdaptiveKind, AdaptivePgd, Apgd, ApgdLoss, Ball, Goal, GuardedClassifier, Iterative, IterativeKind};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::attack_set::{GateGradient, ModelClassifier};
use crate::data::Dataset;
use crate::detector::PathDetector;
use crate::detector_twin::DetectorTwin;
use crate::error::{Error, Result};
use crate::guarded_model::GuardedModel;
use crate::model::{DecoupledCnn, GateMode};
use crate::progress;

/// Settings of one adaptive evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdaptiveOptions {
    pub linf_eps: Vec<f64>,
    /// The L2 budget; 0 runs none.
    pub l2_eps: f64,
    /// Steps of each attack, at step size eps / 10.
    pub steps: usize,
    /// Random restarts of the targeted attacks run on the images no attack evaded.
    pub restarts: usize,
    /// Runner-up classes each of those images is targeted at.
    pub targets: usize,
    /// Weights of the detector's loss in the Lagrangian attack.
    pub lambdas: Vec<f64>,
    /// Weight of the path distance in path matching.
    pub path_weight: f64,
    /// The L-infinity budget of the "unbounded" sanity check (1.0 = any image).
    pub unbounded_eps: f64,
    pub batch_size: usize,
    pub seed: i64,
}

/// One attack at one budget, judged on the real detector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdaptiveResult {
    pub attack: String,
    /// Misclassified and not flagged, of all images: success at the threshold that flags 5%
    /// of clean images.
    pub sr_at_5: f64,
    /// Correct or flagged: 1 - SR@5.
    pub robust_detection_accuracy: f64,
    /// Misclassified, flagged or not (what an attacker who ignores the detector wants).
    pub misclassified: f64,
    /// The detector's AUROC: clean images against the misclassified adversarial ones.
    pub auroc: Option<f64>,
    /// The largest perturbation norm in the budget's norm (checked against the budget).
    pub max_norm: f64,
    /// Largest |twin score - detector score| on the adversarial images.
    pub twin_gap: f64,
    pub seconds: f64,
}

/// All attacks at one budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BudgetResult {
    pub norm: String,
    pub eps: f64,
    pub results: Vec<AdaptiveResult>,
    /// The model without its detector: images classified correctly clean and after every
    /// attack run at this budget (any attack's misclassification counts, flagged or not).
    #[serde(default)]
    pub model_alone_accuracy: f64,
}

impl BudgetResult {
    pub fn best(&self) -> &AdaptiveResult {
        self.results.iter().find(|r| r.attack == BEST).expect("every budget has a best adaptive row")
    }
}

/// The Carlini et al. (2019) checks, each with whether it held.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SanityCheck {
    pub check: String,
    pub holds: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdaptiveReport {
    pub command: String,
    pub model_hash: String,
    pub detector_threshold: f64,
    pub images: usize,
    pub clean_accuracy: f64,
    /// Clean images flagged at the stored threshold.
    pub clean_flag_rate: f64,
    pub options: AdaptiveOptions,
    pub budgets: Vec<BudgetResult>,
    pub unbounded: AdaptiveResult,
    pub sanity: Vec<SanityCheck>,
    pub seconds: f64,
}

pub const BEST: &str = "best adaptive";
pub const OBLIVIOUS: &str = "oblivious pgd";

/// One attack of a budget.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Run {
    /// PGD-40 on the classifier alone, blind to the detector.
    Oblivious,
    /// Auto-PGD on the classifier alone (L-infinity): no step size to get wrong.
    Apgd(ApgdLoss),
    /// A detector-aware PGD.
    Adaptive(AdaptiveKind),
    /// Auto-PGD on the extra-class objective (the detector as class K+1; L-infinity).
    GuardedApgd,
}

impl Run {
    /// The attack's row name in the report.
    fn name(self) -> String {
        match self {
            Run::Oblivious => OBLIVIOUS.into(),
            Run::Apgd(ApgdLoss::CrossEntropy) => "apgd-ce (oblivious)".into(),
            Run::Apgd(ApgdLoss::Dlr) => "apgd-dlr (oblivious)".into(),
            Run::GuardedApgd => "extra-class-apgd".into(),
            Run::Adaptive(AdaptiveKind::Lagrangian { lambda }) => format!("lagrangian-pgd λ={lambda}"),
            Run::Adaptive(AdaptiveKind::Selective) => "selective-pgd".into(),
            Run::Adaptive(AdaptiveKind::Orthogonal) => "orthogonal-pgd".into(),
            Run::Adaptive(AdaptiveKind::ExtraClass) => "extra-class-pgd".into(),
            Run::Adaptive(AdaptiveKind::PathMatching { .. }) => "path-matching-pgd".into(),
        }
    }
}

/// The verdicts on a batch of final images.
struct Verdicts {
    scores: Vec<f64>,
    wrong: Vec<bool>,
    twin_gap: f64,
}

impl Verdicts {
    fn evaded(&self, threshold: f64) -> Vec<bool> {
        self.wrong.iter().zip(&self.scores).map(|(&w, &s)| w && s < threshold).collect()
    }
}

/// What the evaluation works on.
pub struct AdaptiveInputs<'a> {
    pub model: &'a DecoupledCnn,
    pub detector: &'a PathDetector,
    pub model_hash: &'a str,
    pub device: Device,
    pub test: &'a Dataset,
    /// Clean images whose paths path matching imitates (training images).
    pub references: &'a Dataset,
}

struct Evaluator<'a> {
    inputs: &'a AdaptiveInputs<'a>,
    guarded: GuardedModel<'a>,
    twin: DetectorTwin,
    options: &'a AdaptiveOptions,
    clean_scores: Vec<f64>,
    clean_wrong: Vec<bool>,
}

pub fn evaluate_adaptive(inputs: &AdaptiveInputs, options: &AdaptiveOptions, command: String) -> Result<AdaptiveReport> {
    let started = Instant::now();
    let evaluator = Evaluator::new(inputs, options)?;
    let n = inputs.test.len() as f64;
    let threshold = inputs.detector.threshold();
    let clean_accuracy = evaluator.clean_wrong.iter().filter(|&&w| !w).count() as f64 / n;
    let clean_flag_rate = evaluator.clean_scores.iter().filter(|&&s| s >= threshold).count() as f64 / n;
    eprintln!("clean: accuracy {clean_accuracy:.4}, flagged {clean_flag_rate:.4} at threshold {threshold:.4}");
    let mut budgets = Vec::new();
    let plan: Vec<(Ball, f64)> =
        options.linf_eps.iter().map(|&e| (Ball::Linf, e)).chain((options.l2_eps > 0.0).then_some((Ball::L2, options.l2_eps))).collect();
    for (ball, eps) in plan {
        budgets.push(evaluator.budget(ball, eps)?.0);
    }
    let unbounded = evaluator.run_attack(Run::Adaptive(AdaptiveKind::Selective), Ball::Linf, options.unbounded_eps)?.0;
    let sanity = sanity_checks(&budgets, &unbounded, options);
    Ok(AdaptiveReport {
        command,
        model_hash: inputs.model_hash.into(),
        detector_threshold: threshold,
        images: inputs.test.len(),
        clean_accuracy,
        clean_flag_rate,
        options: options.clone(),
        budgets,
        unbounded,
        sanity,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The strongest detector-aware attack on every image of `inputs.test` at one budget: every
/// attack of the report, the best of all per image and targeted restarts. Returns the best
/// image per image (on the CPU) and the budget's judged results (`options.linf_eps` and
/// `l2_eps` are not read). Detector hardening trains on these images and measures its rounds
/// with the results.
pub fn strongest_attack(inputs: &AdaptiveInputs, options: &AdaptiveOptions, ball: Ball, eps: f64) -> Result<(Tensor, BudgetResult)> {
    let (result, images) = Evaluator::new(inputs, options)?.budget(ball, eps)?;
    Ok((images, result))
}

fn norm_name(ball: Ball) -> &'static str {
    match ball {
        Ball::Linf => "linf",
        Ball::L2 => "l2",
    }
}

impl<'a> Evaluator<'a> {
    /// The guarded model and the twin of `inputs.detector`, with the clean verdicts.
    fn new(inputs: &'a AdaptiveInputs<'a>, options: &'a AdaptiveOptions) -> Result<Self> {
        if inputs.test.is_empty() {
            return Err(Error::NoData("no images to attack".into()));
        }
        let guarded = GuardedModel::new(inputs.model, inputs.detector, inputs.device)
            .with_reference_paths(&inputs.references.images.to_device(inputs.device), &inputs.references.labels.to_device(inputs.device))?;
        let mut evaluator =
            Evaluator { inputs, guarded, twin: DetectorTwin::new(inputs.detector, inputs.device), options, clean_scores: Vec::new(), clean_wrong: Vec::new() };
        let clean = evaluator.verdicts(&inputs.test.images)?;
        evaluator.clean_scores = clean.scores;
        evaluator.clean_wrong = clean.wrong;
        Ok(evaluator)
    }

    /// Every attack at one budget, then the best of all per image (returned with the results).
    fn budget(&self, ball: Ball, eps: f64) -> Result<(BudgetResult, Tensor)> {
        let threshold = self.inputs.detector.threshold();
        // The DLR loss reads the third-largest logit (the fourth when targeted): a model of
        // two or three classes goes without it.
        let classes = self.guarded.num_classes();
        let mut runs = vec![Run::Oblivious];
        if ball == Ball::Linf {
            runs.push(Run::Apgd(ApgdLoss::CrossEntropy));
            if classes >= 3 {
                runs.push(Run::Apgd(ApgdLoss::Dlr));
            }
        }
        runs.extend([Run::Adaptive(AdaptiveKind::Selective), Run::Adaptive(AdaptiveKind::Orthogonal)]);
        runs.extend(self.options.lambdas.iter().map(|&lambda| Run::Adaptive(AdaptiveKind::Lagrangian { lambda })));
        runs.push(Run::Adaptive(AdaptiveKind::ExtraClass));
        if ball == Ball::Linf {
            runs.push(Run::GuardedApgd);
        }
        runs.push(Run::Adaptive(AdaptiveKind::PathMatching { weight: self.options.path_weight }));
        // Per image: misclassified by some attack (or already clean), for the model alone.
        let mut wrong_any = self.clean_wrong.clone();
        let mut results = Vec::new();
        // Per image: the evading image with the lowest score so far, else the lowest-scoring
        // misclassified one, else any.
        let mut best: Option<(Tensor, Verdicts)> = None;
        let mut seconds = 0.0;
        for run in runs {
            let (result, images, verdicts) = self.run_attack(run, ball, eps)?;
            seconds += result.seconds;
            wrong_any.iter_mut().zip(&verdicts.wrong).for_each(|(any, &w)| *any |= w);
            results.push(result);
            best = Some(match best {
                None => (images, verdicts),
                Some((held, held_verdicts)) => merge(held, held_verdicts, images, verdicts, threshold),
            });
        }
        let (mut best_images, mut best_verdicts) = best.expect("at least one attack");
        // Targeted restarts on the images that no attack evaded yet.
        let remaining: Vec<i64> =
            best_verdicts.evaded(threshold).iter().enumerate().filter(|(_, &e)| !e).map(|(i, _)| i as i64).collect();
        if !remaining.is_empty() && self.options.targets > 0 {
            let rows = Tensor::from_slice(&remaining);
            let subset = self.inputs.test.images.index_select(0, &rows);
            let labels = self.inputs.test.labels.index_select(0, &rows);
            let runner_ups = self.runner_ups(&subset, &labels)?;
            let mut targeted = vec![Run::Adaptive(AdaptiveKind::Orthogonal), Run::Adaptive(AdaptiveKind::Lagrangian { lambda: 1.0 })];
            if ball == Ball::Linf {
                targeted.push(if classes >= 4 { Run::Apgd(ApgdLoss::Dlr) } else { Run::Apgd(ApgdLoss::CrossEntropy) });
                targeted.push(Run::GuardedApgd);
            }
            for t in 0..self.options.targets.min(runner_ups.size()[1] as usize) {
                let targets = runner_ups.select(1, t as i64).contiguous();
                for &run in &targeted {
                    let started = Instant::now();
                    let images = self.attack_images(run, ball, eps, &subset, &labels, Some(&targets), self.options.restarts)?;
                    seconds += started.elapsed().as_secs_f64();
                    let verdicts = self.verdicts_for(&images, &labels)?;
                    remaining.iter().zip(&verdicts.wrong).for_each(|(&i, &w)| wrong_any[i as usize] |= w);
                    let (held, held_verdicts) = (best_images.index_select(0, &rows), pick(&best_verdicts, &remaining));
                    let (merged, merged_verdicts) = merge(held, held_verdicts, images, verdicts, threshold);
                    best_images = best_images.index_copy(0, &rows, &merged);
                    put(&mut best_verdicts, &remaining, merged_verdicts);
                }
            }
        }
        let mut best_result = self.judge(BEST, &best_images, &best_verdicts, ball)?;
        best_result.seconds = seconds;
        eprintln!("{} eps {eps}: best adaptive SR@5 {:.3}", norm_name(ball), best_result.sr_at_5);
        results.push(best_result);
        let model_alone_accuracy = wrong_any.iter().filter(|&&w| !w).count() as f64 / wrong_any.len() as f64;
        eprintln!("{} eps {eps}: model alone, correct under every attack {model_alone_accuracy:.3}", norm_name(ball));
        Ok((BudgetResult { norm: norm_name(ball).into(), eps, results, model_alone_accuracy }, best_images))
    }

    fn attack(&self, kind: AdaptiveKind, ball: Ball, eps: f64) -> Result<AdaptivePgd> {
        let step_size = (eps / 10.0).max(1e-6);
        Ok(AdaptivePgd::new(kind, eps, self.options.steps, step_size, true, self.options.seed)
            .map_err(attack_error)?
            .with_ball(ball)
            .with_early_stop(true))
    }

    /// One untargeted attack on every test image, judged.
    fn run_attack(&self, run: Run, ball: Ball, eps: f64) -> Result<(AdaptiveResult, Tensor, Verdicts)> {
        let started = Instant::now();
        let images = self.attack_images(run, ball, eps, &self.inputs.test.images, &self.inputs.test.labels, None, 1)?;
        let seconds = started.elapsed().as_secs_f64();
        let verdicts = self.verdicts(&images)?;
        let mut result = self.judge(&run.name(), &images, &verdicts, ball)?;
        result.seconds = seconds;
        eprintln!("{} eps {eps}: {} SR@5 {:.3} ({seconds:.0} s)", norm_name(ball), result.attack, result.sr_at_5);
        Ok((result, images, verdicts))
    }

    /// The images one attack makes of `images` (towards `targets` if given), on the CPU.
    #[allow(clippy::too_many_arguments)]
    fn attack_images(
        &self,
        run: Run,
        ball: Ball,
        eps: f64,
        images: &Tensor,
        labels: &Tensor,
        targets: Option<&Tensor>,
        restarts: usize,
    ) -> Result<Tensor> {
        let classifier = ModelClassifier { model: self.inputs.model, gates: GateGradient::Surrogate, cancelled: &|| false };
        let goal = |t: Option<&Tensor>| match t {
            Some(t) => Goal::Targeted(t.shallow_clone()),
            None => Goal::Untargeted,
        };
        let name = run.name();
        match run {
            Run::Oblivious => {
                // PGD on the classifier alone (surrogate gate gradients).
                let kind = match ball {
                    Ball::Linf => IterativeKind::PgdLinf,
                    Ball::L2 => IterativeKind::PgdL2,
                };
                let steps = 40;
                let attack = Iterative::new(kind, eps, steps, (2.5 * eps / steps as f64).max(1e-6), true, self.options.seed)
                    .map_err(attack_error)?;
                self.batched(images, labels, targets, &name, |x, y, t| {
                    attacks::Attack::perturb(&attack, &classifier, x, y, &goal(t)).map_err(attack_error)
                })
            }
            Run::Apgd(loss) => {
                let attack = self.apgd(loss, eps, restarts)?;
                self.batched(images, labels, targets, &name, |x, y, t| {
                    attacks::Attack::perturb(&attack, &classifier, x, y, &goal(t)).map_err(attack_error)
                })
            }
            Run::GuardedApgd => {
                let attack = self.apgd(ApgdLoss::Dlr, eps, restarts)?;
                self.batched(images, labels, targets, &name, |x, y, t| {
                    attack.perturb_guarded(&self.guarded, x, y, &goal(t)).map_err(attack_error)
                })
            }
            Run::Adaptive(kind) => {
                let attack = self.attack(kind, ball, eps)?.with_restarts(restarts).map_err(attack_error)?;
                self.perturb(&attack, images, labels, targets)
            }
        }
    }

    fn apgd(&self, loss: ApgdLoss, eps: f64, restarts: usize) -> Result<Apgd> {
        Apgd::new(loss, eps, self.options.steps, self.options.seed).and_then(|a| a.with_restarts(restarts)).map_err(attack_error)
    }

    fn perturb(&self, attack: &AdaptivePgd, images: &Tensor, labels: &Tensor, targets: Option<&Tensor>) -> Result<Tensor> {
        self.batched(images, labels, targets, attack.name(), |x, y, t| {
            let goal = match t {
                Some(t) => Goal::Targeted(t.shallow_clone()),
                None => Goal::Untargeted,
            };
            attack.perturb(&self.guarded, x, y, &goal).map_err(attack_error)
        })
    }

    /// Runs `perturb` over batches on the device, with a progress bar; results on the CPU.
    fn batched(
        &self,
        images: &Tensor,
        labels: &Tensor,
        targets: Option<&Tensor>,
        name: &str,
        perturb: impl Fn(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let n = images.size()[0];
        let batch = self.options.batch_size.max(1) as i64;
        let bar = progress::bar(n as u64, name.to_string());
        let mut out = Vec::new();
        for start in (0..n).step_by(batch as usize) {
            let len = batch.min(n - start);
            let on_device = |t: &Tensor| t.narrow(0, start, len).to_device(self.inputs.device);
            let t = targets.map(on_device);
            out.push(perturb(&on_device(images), &on_device(labels), t.as_ref())?.to_device(Device::Cpu));
            bar.inc(len as u64);
        }
        bar.finish_and_clear();
        Ok(Tensor::cat(&out, 0))
    }

    /// The classes ranked after the true one by the clean logits, `[N, K-1]`.
    fn runner_ups(&self, images: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let (logits, _) = self.inputs.model.predict(&images.to_device(self.inputs.device))?;
        let masked = logits.to_device(Device::Cpu).scatter_value(1, &labels.unsqueeze(1), f64::NEG_INFINITY);
        let k = masked.size()[1] - 1;
        Ok(masked.topk(k, 1, true, true).1)
    }

    fn verdicts(&self, images: &Tensor) -> Result<Verdicts> {
        self.verdicts_for(images, &self.inputs.test.labels)
    }

    /// Predictions and detector scores with hard gates, in batches; and the twin's largest
    /// disagreement with the detector.
    fn verdicts_for(&self, images: &Tensor, labels: &Tensor) -> Result<Verdicts> {
        let n = images.size()[0];
        let batch = self.options.batch_size.max(1) as i64;
        let (mut scores, mut wrong, mut twin_gap) = (Vec::new(), Vec::new(), 0f64);
        for start in (0..n).step_by(batch as usize) {
            let len = batch.min(n - start);
            let x = images.narrow(0, start, len).to_device(self.inputs.device);
            let out = tch::no_grad(|| self.inputs.model.forward_with_path(&x, GateMode::Eval));
            let real = self.inputs.detector.score(&out)?;
            let twin = tch::no_grad(|| self.twin.scores(&self.inputs.model.forward_with_path(&x, GateMode::EvalSurrogate)));
            let twin = Vec::<f64>::try_from(twin.to_device(Device::Cpu))?;
            twin_gap = real.iter().zip(&twin).fold(twin_gap, |m, (a, b)| m.max((a - b).abs()));
            let predicted = out.logits.argmax(1, false).to_device(Device::Cpu);
            wrong.extend(Vec::<bool>::try_from(predicted.ne_tensor(&labels.narrow(0, start, len)))?);
            scores.extend(real.iter().copied());
        }
        Ok(Verdicts { scores, wrong, twin_gap })
    }

    fn judge(&self, name: &str, images: &Tensor, verdicts: &Verdicts, ball: Ball) -> Result<AdaptiveResult> {
        let threshold = self.inputs.detector.threshold();
        let n = verdicts.scores.len() as f64;
        let evaded = verdicts.evaded(threshold).iter().filter(|&&e| e).count() as f64;
        let misclassified: Vec<f64> = verdicts.scores.iter().zip(&verdicts.wrong).filter(|(_, &w)| w).map(|(&s, _)| s).collect();
        let auroc = if misclassified.is_empty() {
            None
        } else {
            let (scores, labels) = crate::evaluation::labelled_scores(
                &ndarray::Array1::from_vec(self.clean_scores.clone()),
                &ndarray::Array1::from_vec(misclassified.clone()),
            );
            Some(detectors::roc_auc(&scores, &labels).map_err(Error::detector(format!("AUROC of {name}")))?)
        };
        let delta = images - &self.inputs.test.images;
        let norms = match ball {
            Ball::Linf => attacks::linf_norms(&delta),
            Ball::L2 => attacks::l2_norms(&delta),
        };
        Ok(AdaptiveResult {
            attack: name.into(),
            sr_at_5: evaded / n,
            robust_detection_accuracy: 1.0 - evaded / n,
            misclassified: misclassified.len() as f64 / n,
            auroc,
            max_norm: norms.max().double_value(&[]),
            twin_gap: verdicts.twin_gap,
            seconds: 0.0,
        })
    }
}

fn attack_error(e: attacks::AttackError) -> Error {
    Error::attack("adaptive attack")(e)
}

/// Per image, the better of two candidates: evading beats not evading, then misclassified
/// beats not, then the lower detector score.
fn merge(a: Tensor, av: Verdicts, b: Tensor, bv: Verdicts, threshold: f64) -> (Tensor, Verdicts) {
    let rank = |wrong: bool, score: f64| (!(wrong && score < threshold), !wrong, score);
    let take_b: Vec<bool> = (0..av.scores.len())
        .map(|i| rank(bv.wrong[i], bv.scores[i]).partial_cmp(&rank(av.wrong[i], av.scores[i])) == Some(std::cmp::Ordering::Less))
        .collect();
    let mask = Tensor::from_slice(&take_b).view([-1, 1, 1, 1]);
    let images = b.where_self(&mask, &a);
    let choose = |x: &[f64], y: &[f64]| take_b.iter().enumerate().map(|(i, &t)| if t { y[i] } else { x[i] }).collect::<Vec<_>>();
    let wrong = take_b.iter().enumerate().map(|(i, &t)| if t { bv.wrong[i] } else { av.wrong[i] }).collect();
    (images, Verdicts { scores: choose(&av.scores, &bv.scores), wrong, twin_gap: av.twin_gap.max(bv.twin_gap) })
}

fn pick(v: &Verdicts, rows: &[i64]) -> Verdicts {
    Verdicts {
        scores: rows.iter().map(|&i| v.scores[i as usize]).collect(),
        wrong: rows.iter().map(|&i| v.wrong[i as usize]).collect(),
        twin_gap: v.twin_gap,
    }
}

fn put(v: &mut Verdicts, rows: &[i64], from: Verdicts) {
    for (j, &i) in rows.iter().enumerate() {
        v.scores[i as usize] = from.scores[j];
        v.wrong[i as usize] = from.wrong[j];
    }
    v.twin_gap = v.twin_gap.max(from.twin_gap);
}

/// Carlini et al. (2019), "On Evaluating Adversarial Robustness": success never falls as the
/// budget grows; an unbounded attack succeeds (nearly) always; the budget and the real
/// detector are what every success is measured with.
fn sanity_checks(budgets: &[BudgetResult], unbounded: &AdaptiveResult, options: &AdaptiveOptions) -> Vec<SanityCheck> {
    let linf: Vec<&BudgetResult> = budgets.iter().filter(|b| b.norm == "linf").collect();
    let rates: Vec<String> = linf.iter().map(|b| format!("{:.3} at {}", b.best().sr_at_5, b.eps)).collect();
    let monotone = linf.windows(2).all(|w| w[1].best().sr_at_5 >= w[0].best().sr_at_5);
    let within = budgets.iter().flat_map(|b| b.results.iter().map(move |r| (b, r))).all(|(b, r)| r.max_norm <= b.eps + 1e-4);
    let gap = budgets.iter().flat_map(|b| &b.results).map(|r| r.twin_gap).fold(unbounded.twin_gap, f64::max);
    vec![
        SanityCheck {
            check: "best-adaptive SR@5 never falls as L-inf eps grows".into(),
            holds: monotone,
            detail: rates.join(", "),
        },
        SanityCheck {
            check: format!("an unbounded attack (L-inf eps {}) evades on (nearly) every image", options.unbounded_eps),
            holds: unbounded.sr_at_5 >= 0.95,
            detail: format!("selective PGD SR@5 {:.3}", unbounded.sr_at_5),
        },
        SanityCheck {
            check: "every perturbation lies within its budget".into(),
            holds: within,
            detail: "largest norm per attack in report.json (max_norm)".into(),
        },
        SanityCheck {
            check: "every success is judged by the real detector with hard gates; the twin matches it".into(),
            holds: gap < 1e-3,
            detail: format!("largest |twin - detector| score gap on attacked images: {gap:.2e}"),
        },
    ]
}

/// Files of an adaptive report directory.
pub const ADAPTIVE_REPORT_FILES: [&str; 3] = ["report.md", "report.json", "sr_vs_eps.png"];

impl AdaptiveReport {
    /// The report as Markdown: one table per budget, the summary and the sanity checks.
    pub fn to_markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut md = String::new();
        let _ = writeln!(md, "# Adaptive-attack report\n");
        let _ = writeln!(md, "Command: `{}`  ", self.command);
        let _ = writeln!(md, "Model: `{}`  ", self.model_hash);
        let o = &self.options;
        let _ = writeln!(
            md,
            "{} test images; clean accuracy {:.3}; {:.1}% of them flagged at the stored threshold {:.4} \
             (set for 5% false positives on held-out clean images when the detector was fitted, before any \
             attack). Each attack: {} steps from a random start, each image kept at its first success: the PGD \
             attacks at step size eps/10 (oblivious PGD: 40 steps of 2.5 eps/40), the Auto-PGD ones (Croce & Hein \
             2020; L-infinity only) halving their own step from 2 eps; the apgd rows marked oblivious attack the \
             model alone, extra-class-apgd attacks model and detector. Best adaptive takes per image the best of \
             every row, then adds, on the images none evaded, {} restart(s) of targeted orthogonal and Lagrangian \
             PGD, APGD-DLR and extra-class APGD at each of the {} runner-up classes. Took {:.0} s.\n",
            self.images,
            self.clean_accuracy,
            100.0 * self.clean_flag_rate,
            self.detector_threshold,
            o.steps,
            o.restarts,
            o.targets,
            self.seconds
        );
        let _ = writeln!(
            md,
            "SR@5: misclassified and not flagged, of all test images. Robust detection accuracy: correct or \
             flagged (1 - SR@5). AUROC: the detector on clean images against the misclassified adversarial \
             ones. Every figure is the real detector's verdict on the final images, with hard gates.\n"
        );
        let _ = writeln!(md, "## Summary: SR@5 per budget\n");
        let _ = write!(md, "| attack |");
        for b in &self.budgets {
            let _ = write!(md, " {} {} |", b.norm, b.eps);
        }
        let _ = write!(md, "\n|---|");
        for _ in &self.budgets {
            md.push_str("---|");
        }
        md.push('\n');
        // Rows by attack name: Auto-PGD runs in the L-infinity budgets only.
        let mut names: Vec<&str> = Vec::new();
        for r in self.budgets.iter().flat_map(|b| &b.results) {
            if !names.contains(&r.attack.as_str()) {
                names.push(&r.attack);
            }
        }
        for name in names {
            let _ = write!(md, "| {name} |");
            for b in &self.budgets {
                match b.results.iter().find(|r| r.attack == name) {
                    Some(r) => _ = write!(md, " {:.3} |", r.sr_at_5),
                    None => md.push_str(" - |"),
                }
            }
            md.push('\n');
        }
        let _ = writeln!(
            md,
            "\n## The model alone and with its detector\n\nA user who acts on the prediction alone is right \
             on the images classified correctly clean and after every attack above (any misclassification \
             counts); one who also acts on the flag is right on the correct or flagged ones (best adaptive).\n\n\
             | budget | model alone: accuracy under every attack | model + detector: robust detection accuracy |\n|---|---|---|"
        );
        for b in &self.budgets {
            let _ = writeln!(
                md,
                "| {} {} | {:.3} | {:.3} |",
                b.norm,
                b.eps,
                b.model_alone_accuracy,
                b.best().robust_detection_accuracy
            );
        }
        for b in &self.budgets {
            let _ = writeln!(md, "\n## {} eps {}\n", b.norm, b.eps);
            let _ = writeln!(
                md,
                "| attack | SR@5 | robust detection accuracy | misclassified | AUROC | max norm | seconds |\n|---|---|---|---|---|---|---|"
            );
            for r in &b.results {
                let auroc = r.auroc.map(|a| format!("{a:.3}")).unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    md,
                    "| {} | {:.3} | {:.3} | {:.3} | {auroc} | {:.4} | {:.0} |",
                    r.attack, r.sr_at_5, r.robust_detection_accuracy, r.misclassified, r.max_norm, r.seconds
                );
            }
        }
        let _ = writeln!(md, "\n## Sanity checks (Carlini et al. 2019)\n\n| check | holds | detail |\n|---|---|---|");
        for c in &self.sanity {
            let _ = writeln!(md, "| {} | {} | {} |", c.check, if c.holds { "yes" } else { "**no**" }, c.detail);
        }
        let _ = writeln!(
            md,
            "\nTramèr (2022): a detector robust at eps implies a classifier robust at eps/2, so robust detection \
             at eps should not exceed what the best robust classifiers reach at eps/2 (issue 15 measures \
             adversarial training on this model).\n\n\
             `sr_vs_eps.png`: SR@5 against L-inf eps for every attack."
        );
        md
    }

    /// Writes report.md, report.json and sr_vs_eps.png into `out` (replaced only when complete).
    pub fn write(&self, out: &std::path::Path) -> Result<()> {
        crate::atomic::write_dir_atomic(out, |tmp| {
            let json = serde_json::to_vec_pretty(self).expect("report serialises");
            crate::model::checkpoint::write_atomic(&tmp.join("report.json"), &json)?;
            crate::model::checkpoint::write_atomic(&tmp.join("report.md"), self.to_markdown().as_bytes())?;
            crate::evaluation::sr_plot::draw_sr_vs_eps(&tmp.join("sr_vs_eps.png"), self)
        })
    }
}
