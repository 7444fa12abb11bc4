//! `pathguard fit-detector` (the path detector, fitted on clean versus attacked training
//! images) and `pathguard evaluate` (it against the baselines on seen and unseen attacks).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use pathguard::attack_set::GateGradient;
use pathguard::attack_spec::{AttackName, AttackParams};
use pathguard::data::Split;
use pathguard::detector::{PathDetector, DETECTOR_FILE};
use pathguard::detector_fit::{fit_detector_parts, FitOptions};
use pathguard::detector_hardening::{harden_detector, HardeningOptions};
use pathguard::evaluation::adaptive::AdaptiveOptions;
use pathguard::device::parse_device;
use pathguard::model::Checkpoint;

use super::data_args::{load_split, DataArgs};

#[derive(Args)]
pub struct FitDetectorArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Checkpoint directory
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    /// Training images to attack (the first N of the training split)
    #[arg(long, default_value_t = 10_000)]
    limit: usize,
    /// Attack methods whose images are the positive rows; METHOD-early-stop (pgd-early-stop)
    /// stops each image at its first success
    #[arg(long, value_delimiter = ',', default_value = "fgsm,pgd,pgd-early-stop")]
    methods: Vec<String>,
    /// Budgets to attack at (L-infinity)
    #[arg(long, value_delimiter = ',', default_value = "0.05,0.1,0.2")]
    eps: Vec<f64>,
    /// PGD steps
    #[arg(long, default_value_t = 40)]
    pgd_steps: usize,
    /// Fraction of the images held out to set and check the threshold
    #[arg(long, default_value_t = 0.2)]
    validation_fraction: f64,
    /// False-positive rate on clean held-out images that sets the threshold
    #[arg(long, default_value_t = 0.05)]
    fpr: f64,
    /// Further clean training images (those after the first --limit), scored but not
    /// attacked, that set the threshold with the held-out ones: a 5% rate set on a few hundred
    /// images does not hold on the next thousand
    #[arg(long, default_value_t = 5_000)]
    calibration_images: usize,
    /// Where the calibration images come from: the training images after the first --limit
    /// (the model has seen them in training, so they look more normal to it than new images
    /// do), or the *last* N images of the test split (a held-out sample of the images it
    /// will meet: report figures on the test images before them only)
    #[arg(long, value_enum, default_value_t = Split::Train)]
    calibration_split: Split,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Count mildly corrupted training images (every corruption of `pathguard corrupt` at
    /// severity 1-2) as clean, in fitting and in setting the threshold
    #[arg(long)]
    benign_corruptions: bool,
    /// Rounds of hardening after the fit: attack the detector with the strongest
    /// detector-aware attack (as adaptive-report's best adaptive) on the fitting images, add
    /// the images that fool the model as positives, refit; each round's SR@5 on the held-out
    /// validation images goes into the detector's record
    #[arg(long, default_value_t = 0)]
    harden_rounds: usize,
    /// L-infinity budgets of the hardening attacks
    #[arg(long, value_delimiter = ',', default_value = "0.1")]
    harden_eps: Vec<f64>,
    /// Steps of each hardening attack (step size eps / 10)
    #[arg(long, default_value_t = 100)]
    harden_steps: usize,
    /// Output file [default: MODEL/detector.json]
    #[arg(long)]
    out: Option<PathBuf>,
}


#[derive(Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Checkpoint directory (its detector.json, if present, is evaluated too)
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    /// Test images to evaluate on (the first N of the test split)
    #[arg(long, default_value_t = 2_000)]
    limit: usize,
    /// Training images the detectors are fitted on (the first N of the training split)
    #[arg(long, default_value_t = 2_000)]
    train_limit: usize,
    /// C&W and DeepFool, the slow attacks, run on at most this many of the test images
    #[arg(long, default_value_t = 500)]
    slow_limit: usize,
    /// L-infinity budgets of the seen attacks (FGSM and PGD)
    #[arg(long, value_delimiter = ',', default_value = "0.05,0.1,0.2")]
    eps: Vec<f64>,
    #[arg(long, default_value_t = 40)]
    pgd_steps: usize,
    /// L2 budget of the unseen PGD-L2 attack
    #[arg(long, default_value_t = 1.5)]
    l2_eps: f64,
    /// An attack set made by `pathguard attack --split test` from the first test images, tested
    /// as an unseen attack (repeatable)
    #[arg(long)]
    attack_set: Vec<PathBuf>,
    /// The attack whose ROC curves roc.png shows (a name prefix)
    #[arg(long, default_value = "pgd eps 0.1")]
    roc_attack: String,
    /// Test images (the first N) of the benign-corruption table written to OUT/corruptions
    /// (every corruption and severity, as `pathguard corruption-report`); 0 skips it
    #[arg(long, default_value_t = 1000)]
    corruption_limit: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Report directory (replaced atomically)
    #[arg(long, default_value = "reports/evaluate")]
    out: PathBuf,
}


pub fn run_fit_detector(args: FitDetectorArgs) -> Result<()> {
    let device = parse_device(&args.data.device)?;
    let mut attacks = Vec::new();
    for name in &args.methods {
        // "<method>-early-stop" (pgd-early-stop by default): the method stopping each image at
        // its first success (minimal, low-confidence examples; no random start, so it starts
        // from the clean image).
        let (method, early_stop) = match name.strip_suffix("-early-stop") {
            Some(base) => (base.parse::<AttackName>()?, true),
            None => (name.parse::<AttackName>()?, false),
        };
        for &eps in &args.eps {
            let params = AttackParams {
                steps: (method == AttackName::Pgd).then_some(args.pgd_steps),
                random_start: method == AttackName::Pgd && !early_stop,
                early_stop,
                seed: args.seed,
                ..AttackParams::new(method, eps)
            };
            attacks.push(params.check()?);
        }
    }
    let checkpoint = Checkpoint::load(&args.model, device)?;
    let all_train = load_split(&args.data, Some(&checkpoint.meta), Split::Train, None)?;
    let train = all_train.take(args.limit);
    let options = FitOptions {
        attacks,
        validation_fraction: args.validation_fraction,
        target_fpr: args.fpr,
        batch_size: args.batch_size,
        gates: GateGradient::Surrogate,
        show_progress: true,
        benign_corruptions: args.benign_corruptions,
        seed: args.seed,
    };
    let (calibration, calibration_source) = match args.calibration_split {
        Split::Train => {
            let part = all_train.slice(args.limit, args.calibration_images);
            let source = format!("training images {}-{}", args.limit, args.limit + part.len());
            (part, source)
        }
        Split::Test => {
            let test = load_split(&args.data, Some(&checkpoint.meta), Split::Test, None)?;
            if args.calibration_images >= test.len() {
                bail!(
                    "--calibration-images {} would leave none of the {} test images to measure the detector on",
                    args.calibration_images,
                    test.len()
                );
            }
            let first = test.len() - args.calibration_images;
            eprintln!("calibrating on test images {first}-{}: measure this detector on the test images before them", test.len());
            (test.slice(first, args.calibration_images), format!("the last {} test images ({first}-{})", args.calibration_images, test.len()))
        }
    };
    let fit = fit_detector_parts(&checkpoint.model, checkpoint.model_hash(), device, &all_train, &train, &calibration, &options)?;
    let mut detector = if args.harden_rounds == 0 {
        fit.detector
    } else {
        let hardening = HardeningOptions {
            rounds: args.harden_rounds,
            eps: args.harden_eps.clone(),
            // adaptive-report's attacks as `make robust-report` runs them.
            attack: AdaptiveOptions {
                linf_eps: args.harden_eps.clone(),
                l2_eps: 0.0,
                steps: args.harden_steps,
                restarts: 1,
                targets: 1,
                lambdas: vec![0.1, 1.0, 10.0],
                path_weight: 1.0,
                unbounded_eps: 1.0,
                batch_size: args.batch_size,
                seed: args.seed,
            },
            target_fpr: args.fpr,
        };
        harden_detector(&checkpoint.model, checkpoint.model_hash(), device, fit, &hardening)?
    };
    if let Some(record) = detector.record.as_mut() {
        record.calibration = calibration_source;
    }
    let out = args.out.unwrap_or_else(|| args.model.join(DETECTOR_FILE));
    detector.save(&out)?;
    if let Some(r) = &detector.record {
        let v = &r.validation;
        println!(
            "fitted on {} clean and {} adversarial rows ({}); threshold {:.4} set on {} clean images (calibration: {}); validation: AUROC {:.4}, TPR at 5% FPR {:.4}, accuracy {:.4} ({} clean / {} adversarial rows)",
            r.clean_rows, r.adversarial_rows, r.attacks.join(", "), v.threshold, r.threshold_rows, r.calibration, v.auroc, v.tpr_at_5_fpr, v.detection_accuracy, v.clean, v.adversarial
        );
    }
    for round in detector.record.iter().flat_map(|r| &r.hardening) {
        let budgets: Vec<String> = round
            .budgets
            .iter()
            .map(|b| format!("eps {}: SR@5 {:.3}, model alone {:.3}", b.eps, b.sr_at_5, b.model_alone_accuracy))
            .collect();
        println!(
            "hardening round {}: {} rows added, threshold {:.4}; validation images under the strongest detector-aware attack: {}",
            round.round,
            round.added_rows,
            round.threshold,
            budgets.join("; ")
        );
    }
    println!("wrote {}", out.display());
    Ok(())
}


pub fn run_evaluate(args: EvaluateArgs) -> Result<()> {
    use pathguard::evaluation::{evaluate, standard_attacks, write_report, EvaluateOptions, EvaluationInputs};
    let device = parse_device(&args.data.device)?;
    let checkpoint = Checkpoint::load(&args.model, device)?;
    let detector_path = args.model.join(DETECTOR_FILE);
    let shipped = if detector_path.exists() {
        Some(PathDetector::load(&detector_path, checkpoint.model_hash())?)
    } else {
        eprintln!("no {} beside the model: evaluating the detectors fitted in this run only", DETECTOR_FILE);
        None
    };
    let all_train = load_split(&args.data, Some(&checkpoint.meta), Split::Train, None)?;
    let templates = match &shipped {
        Some(d) => d.templates.clone(),
        None => pathguard::detector_fit::fit_templates(&checkpoint.model, device, &all_train, args.batch_size)?,
    };
    let (seen, unseen) = standard_attacks(&args.eps, args.pgd_steps, args.l2_eps, args.slow_limit, args.seed)?;
    let options = EvaluateOptions {
        seen,
        unseen,
        attack_sets: args.attack_set.clone(),
        roc_attack: args.roc_attack.clone(),
        batch_size: args.batch_size,
        gates: GateGradient::Surrogate,
        show_progress: true,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    tch::manual_seed(args.seed);
    let inputs = EvaluationInputs {
        model: &checkpoint.model,
        model_hash: checkpoint.model_hash(),
        device,
        templates: &templates,
        shipped,
        train: &all_train.take(args.train_limit),
        test: &load_split(&args.data, Some(&checkpoint.meta), Split::Test, Some(args.limit))?,
    };
    let (report, roc) = evaluate(&inputs, &options)?;
    write_report(&args.out, &report, &roc)?;
    println!("{}", report.to_markdown());
    println!("wrote {}", args.out.display());
    let corruption_images = args.corruption_limit.min(inputs.test.len());
    if corruption_images > 0 && inputs.shipped.is_some() {
        // Benign corruptions against the same detector, with its stored threshold.
        let screener = pathguard::screener::Screener::load(&args.model, device)?;
        let test = inputs.test.take(corruption_images);
        let corruptions = pathguard::evaluation::corruptions::corruption_report(
            &screener,
            &test,
            args.pgd_steps,
            args.slow_limit.min(corruption_images),
            args.seed,
            options.command.clone(),
        )?;
        let out = args.out.join("corruptions");
        corruptions.write(&out, &test.images.get(0))?;
        println!("{}", corruptions.to_markdown());
        println!("wrote {}", out.display());
    }
    Ok(())
}
