//! The `pathguard` command line.

use std::path::PathBuf;

mod commands;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use pathguard::data::Split;
use pathguard::attack_set::{run_attack, run_attack_until, write_attack_set, AttackParams, GateGradient, Manifest, ATTACK_SET_FILES};
use pathguard::detector::{PathDetector, DETECTOR_FILE};
use pathguard::detector_fit::{fit_path_detector, FitOptions};
use pathguard::device::{device_name, parse_device};
use pathguard::model::{Checkpoint, Execution};
use pathguard::train::{evaluate, recalibrate_batchnorm, EvalReport};
use commands::data_args::{load_split, DataArgs};

#[derive(Parser)]
#[command(name = "pathguard", version, about = "Screens images for adversarial examples by their calculation paths")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a decoupled CNN on Fashion-MNIST and save it as a checkpoint directory.
    #[command(allow_negative_numbers = true)]
    Train(commands::train::TrainArgs),
    /// Evaluate a checkpoint on the Fashion-MNIST test split.
    Eval(EvalArgs),
    /// Show a checkpoint's metadata and the devices libtorch can use.
    Info(InfoArgs),
    /// Generate an attack set: adversarial images of a Fashion-MNIST slice, as NPY files,
    /// manifest.json and a preview.png contact sheet.
    #[command(allow_negative_numbers = true)]
    Attack(AttackArgs),
    /// Re-estimate BatchNorm statistics of a checkpoint with noise-free gates (train does
    /// this at its end) and save the result.
    Recalibrate(RecalibrateArgs),
    /// Fit the path detector on clean versus FGSM/PGD training images and save detector.json
    /// beside the model.
    FitDetector(FitDetectorArgs),
    /// Fit the clean training distribution of a model's features and save distribution.json
    /// beside it: screening then says how far each image is from the training images.
    FitDistribution(commands::distribution::FitDistributionArgs),
    /// Judge the path-statistics detector against the baselines (max-softmax, Mahalanobis,
    /// LID, raw activations) on seen and unseen attacks; writes report.md, report.json and
    /// roc.png to --out.
    Evaluate(EvaluateArgs),
    /// Attack the model and its detector with attacks that know the detector (selective,
    /// orthogonal, Lagrangian, extra-class and path-matching PGD, best of all per image);
    /// writes report.md, report.json and sr_vs_eps.png to --out.
    AdaptiveReport(commands::adaptive::AdaptiveReportArgs),
    /// Apply one benign corruption (noise, blur, JPEG, brightness, contrast, shifts) to a
    /// Fashion-MNIST slice and write it like an attack set, with the screener's verdicts.
    Corrupt(commands::corrupt::CorruptArgs),
    /// Every corruption at every severity against the model and its detector: accuracy, flag
    /// rate, and whether attacks can be told from benign changes; report.md, report.json and
    /// corruptions.png to --out.
    CorruptionReport(commands::corrupt::CorruptionReportArgs),
    /// Serve pathguard.v1.Screening over gRPC (with health, reflection and Prometheus metrics).
    Serve(commands::service::ServeArgs),
    /// Screen PNG files, directories and NPY arrays through a server (--server) or in process;
    /// one JSON line (or CSV row) per image.
    Screen(commands::service::ScreenArgs),
    /// Load a running server with concurrent clients: throughput, latency percentiles, errors.
    LoadTest(commands::load_test::LoadTestArgs),
    /// Drop filters that are almost never open: a smaller dense model whose gates still work,
    /// with its accuracy, size, FLOPs and measured throughput against the full model.
    Compact(commands::paths::CompactArgs),
    /// Path-level analysis on the test split: class x filter open frequencies, class-specific
    /// versus shared filters, class similarity; PNG, JSON and paths.md.
    Paths(commands::paths::PathsArgs),
    /// Explain predictions by their paths: open filters, distances to class templates, the
    /// filters that separate the prediction from the runner-up, a PNG sheet per image.
    Explain(commands::explain::ExplainArgs),
    /// Throughput (and attack success) of one workload on the first test images, as JSON:
    /// our side of bench/compare.sh.
    Bench(commands::bench::BenchArgs),
}

#[derive(Args)]
struct EvaluateArgs {
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

#[derive(Args)]
struct RecalibrateArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Checkpoint directory to read
    #[arg(long)]
    model: PathBuf,
    /// Checkpoint directory to write (may be the same)
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: i64,
}

#[derive(Args)]
struct FitDetectorArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Checkpoint directory
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    /// Training images to attack (the first N of the training split)
    #[arg(long, default_value_t = 10_000)]
    limit: usize,
    /// Attack methods whose images are the positive rows; pgd-early-stop is PGD stopped at each
    /// image's first success
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
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Count mildly corrupted training images (every corruption of `pathguard corrupt` at
    /// severity 1-2) as clean, in fitting and in setting the threshold
    #[arg(long)]
    benign_corruptions: bool,
    /// Output file [default: MODEL/detector.json]
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct AttackArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Checkpoint directory
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    /// fgsm, bim, pgd, pgd-l2, mifgsm, cw or deepfool
    #[arg(long)]
    method: String,
    /// Perturbation budget (L-infinity; L2 for pgd-l2; unused by cw and deepfool)
    #[arg(long, default_value_t = 0.1)]
    eps: f64,
    /// Iterations [default: fgsm 1, bim/mifgsm 10, pgd 40, cw 100, deepfool 50]
    #[arg(long)]
    steps: Option<usize>,
    /// Step size [default: 2.5 eps/steps for pgd, eps/steps for bim and mifgsm]
    #[arg(long)]
    step_size: Option<f64>,
    /// Start from a random point in the ball (pgd, pgd-l2, bim, mifgsm)
    #[arg(long)]
    random_start: bool,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Targeted attack towards this class (not deepfool)
    #[arg(long)]
    target_class: Option<i64>,
    /// MI-FGSM momentum decay [default: 1.0]
    #[arg(long)]
    decay: Option<f64>,
    /// C&W confidence kappa [default: 0]
    #[arg(long)]
    confidence: Option<f64>,
    /// C&W initial constant c [default: 1]
    #[arg(long)]
    initial_const: Option<f64>,
    /// C&W Adam learning rate [default: 0.01]
    #[arg(long)]
    cw_lr: Option<f64>,
    /// C&W binary-search steps on c [default: 3]
    #[arg(long)]
    search_steps: Option<usize>,
    /// DeepFool overshoot [default: 0.02]
    #[arg(long)]
    overshoot: Option<f64>,
    /// bim, pgd, pgd-l2, mifgsm: stop each image at its first success (minimal,
    /// low-confidence adversarial examples)
    #[arg(long)]
    early_stop: bool,
    /// The detector the adaptive methods attack and whose verdicts the manifest records
    /// [default: the model's detector.json, when it has one]
    #[arg(long)]
    detector: Option<PathBuf>,
    /// lagrangian-pgd: weight of the detector's loss; path-matching-pgd: weight of the path
    /// distance [default: 1]
    #[arg(long)]
    lambda: Option<f64>,
    /// Adaptive methods: random restarts, keeping per image the best [default: 1]
    #[arg(long)]
    restarts: Option<usize>,
    /// Adaptive methods: the budget's norm, linf or l2 [default: linf]
    #[arg(long)]
    norm: Option<String>,
    /// train or test
    #[arg(long, default_value = "test")]
    split: String,
    /// First image of the split to attack
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Number of images to attack
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Gradient through the hard gates: surrogate (sigmoid, straight-through) or hard (zero)
    #[arg(long, default_value = "surrogate")]
    gates: GateGradient,
    /// Also run the attack with the other gate gradient and record its success rate
    #[arg(long)]
    compare_gates: bool,
    /// Output directory (replaced atomically)
    #[arg(long)]
    out: PathBuf,
}


#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Checkpoint directory
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    /// Use only the first N test images
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// How the model runs: dense (every filter), gated (only each input's path) or auto
    #[arg(long, value_enum, default_value_t = Execution::Auto)]
    execution: Execution,
    /// Print the report as JSON on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InfoArgs {
    /// Checkpoint directory
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => commands::train::run_train(args),
        Command::Eval(args) => run_eval(args),
        Command::Info(args) => run_info(args),
        Command::Attack(args) => run_attack_command(args),
        Command::FitDetector(args) => run_fit_detector(args),
        Command::FitDistribution(args) => commands::distribution::run_fit_distribution(args),
        Command::Evaluate(args) => run_evaluate(args),
        Command::AdaptiveReport(args) => commands::adaptive::run_adaptive_report(args),
        Command::Corrupt(args) => commands::corrupt::run_corrupt(args),
        Command::CorruptionReport(args) => commands::corrupt::run_corruption_report(args),
        Command::Recalibrate(args) => run_recalibrate(args),
        Command::Serve(args) => commands::service::run_serve(args),
        Command::LoadTest(args) => commands::load_test::run_load_test(args),
        Command::Compact(args) => commands::paths::run_compact(args),
        Command::Paths(args) => commands::paths::run_paths(args),
        Command::Explain(args) => commands::explain::run_explain(args),
        Command::Bench(args) => commands::bench::run_bench(args),
        Command::Screen(args) => match commands::service::run_screen(args) {
            // --fail-on-flag: a distinct status, so that a pipeline can tell "flagged" from "failed".
            Ok(true) => return std::process::ExitCode::from(2),
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_eval(args: EvalArgs) -> Result<()> {
    let device = parse_device(&args.data.device)?;
    let checkpoint = Checkpoint::load(&args.model, device)?;
    let test_set = load_split(&args.data, Some(&checkpoint.meta), Split::Test, args.limit)?;
    let report = evaluate(&checkpoint.model, &test_set, device, args.batch_size, !args.json, args.execution)?;
    if args.json {
        let json = serde_json::json!({
            "model": args.model,
            "model_hash": checkpoint.model_hash(),
            "device": device_name(device),
            "split": "test",
            "execution": args.execution,
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print_report(&checkpoint, &report);
    }
    Ok(())
}

fn print_report(checkpoint: &Checkpoint, r: &EvalReport) {
    println!("model                 {}", checkpoint.model_hash());
    println!("test accuracy         {:.4} on {} images", r.accuracy, r.examples);
    let open: Vec<String> = r.open_fraction.iter().map(|f| format!("{f:.3}")).collect();
    println!("open gates per layer  [{}]", open.join(", "));
    println!("mean open fraction    {:.3} (over gated layers; {:.3} of all gates)", r.mean_open_fraction, r.overall_open_fraction);
    println!("conv FLOPs per path   {:.3} of the ungated network", r.mean_flops_fraction);
    println!(
        "class templates       Hamming distance mean {:.1}, min {:.0} of {} bits",
        r.template_hamming_mean, r.template_hamming_min, r.path_bits
    );
    println!("throughput            {:.0} images/s", r.images_per_second);
}

fn run_info(args: InfoArgs) -> Result<()> {
    println!("libtorch CUDA available: {} ({} device(s))", tch::Cuda::is_available(), tch::Cuda::device_count());
    let checkpoint = Checkpoint::load(&args.model, tch::Device::Cpu)?;
    let meta = &checkpoint.meta;
    println!("model {}", args.model.display());
    println!("  weights sha256  {}", meta.weights_sha256);
    println!("  classes         {}", meta.class_names.join(", "));
    println!("  input           {:?} {} in {:?}, {}", meta.pixel_convention.shape, meta.pixel_convention.dtype, meta.pixel_convention.range, meta.pixel_convention.layout);
    println!("  gated layers    {:?} filters", meta.architecture.gate_sizes());
    if let Some(training) = &meta.training {
        println!("  last training   {}", training.summary());
    }
    Ok(())
}

fn run_attack_command(args: AttackArgs) -> Result<()> {
    let device = parse_device(&args.data.device)?;
    let split = match args.split.as_str() {
        "train" => Split::Train,
        "test" => Split::Test,
        other => anyhow::bail!("unknown split {other:?}; use train or test"),
    };
    let params = AttackParams {
        steps: args.steps,
        step_size: args.step_size,
        random_start: args.random_start,
        seed: args.seed,
        target_class: args.target_class,
        decay: args.decay,
        confidence: args.confidence,
        initial_const: args.initial_const,
        learning_rate: args.cw_lr,
        search_steps: args.search_steps,
        overshoot: args.overshoot,
        early_stop: args.early_stop,
        lambda: args.lambda,
        restarts: args.restarts,
        norm: args.norm.clone(),
        ..AttackParams::new(&args.method, args.eps)
    };
    params.build()?; // validate before loading anything
    let checkpoint = Checkpoint::load(&args.model, device)?;
    let shipped = args.model.join(DETECTOR_FILE);
    let detector = match &args.detector {
        Some(path) => Some(PathDetector::load(path, checkpoint.model_hash())?),
        None if shipped.exists() => Some(PathDetector::load(&shipped, checkpoint.model_hash())?),
        None if params.is_adaptive() => {
            anyhow::bail!("{} attacks the detector too, and {} has none: give one with --detector", params.method, args.model.display())
        }
        None => None,
    };
    let full = load_split(&args.data, Some(&checkpoint.meta), split, None)?;
    if args.limit == 0 || args.offset >= full.len() {
        anyhow::bail!("--offset {} --limit {} selects no images of the {} split ({} images)", args.offset, args.limit, args.split, full.len());
    }
    let len = args.limit.min(full.len() - args.offset) as i64;
    let data = full.slice(args.offset, len as usize);
    let indices = tch::Tensor::arange_start(args.offset as i64, args.offset as i64 + len, (tch::Kind::Int64, tch::Device::Cpu));
    let outcome = run_attack_until(
        &checkpoint.model,
        detector.as_ref(),
        device,
        &data,
        &indices,
        &params,
        args.gates,
        args.batch_size,
        true,
        &|| false,
    )?;
    let other_gate_gradient = if args.compare_gates {
        let other = match args.gates {
            GateGradient::Hard => GateGradient::Surrogate,
            GateGradient::Surrogate => GateGradient::Hard,
        };
        let o = run_attack(&checkpoint.model, device, &data, &indices, &params, other, args.batch_size, true)?;
        Some((other, o.stats))
    } else {
        None
    };
    let s = &outcome.stats;
    let manifest = Manifest {
        format: "pathguard-attack-set-v1".into(),
        pathguard_version: env!("CARGO_PKG_VERSION").into(),
        method: params.method.clone(),
        parameters: params.resolved(),
        gate_gradient: args.gates,
        other_gate_gradient: other_gate_gradient.clone(),
        model_dir: args.model.clone(),
        model_hash: checkpoint.model_hash().into(),
        split: args.split.clone(),
        offset: args.offset,
        stats: s.clone(),
        detector: outcome.detector.clone(),
        class_names: checkpoint.meta.class_names.clone(),
        pixel_convention: checkpoint.input_spec().stored_as(),
        files: ATTACK_SET_FILES.iter().map(|f| f.to_string()).collect(),
    };
    write_attack_set(&args.out, &outcome, &manifest, &checkpoint.meta.class_names)?;
    println!(
        "{} on {} images: clean accuracy {:.4}, adversarial accuracy {:.4}, success {:.4} ({:.4} of correctly classified), Linf mean {:.4} max {:.4}, L2 mean {:.4}, {:.1} images/s",
        params.method, s.images, s.clean_accuracy, s.adversarial_accuracy, s.success_rate, s.success_rate_on_correct, s.mean_linf, s.max_linf, s.mean_l2, s.images_per_second
    );
    if let Some(d) = &outcome.detector {
        println!(
            "detector (threshold {:.4}): {:.4} of the adversarial images flagged; evasion (success and not flagged) {:.4}",
            d.threshold, d.flagged_rate, d.evasion_rate
        );
    }
    if let Some((mode, o)) = &other_gate_gradient {
        println!("with {mode:?} gate gradients: success {:.4} ({:.4} of correctly classified)", o.success_rate, o.success_rate_on_correct);
    }
    println!("wrote {}", args.out.display());
    Ok(())
}

fn run_fit_detector(args: FitDetectorArgs) -> Result<()> {
    let device = parse_device(&args.data.device)?;
    let mut attacks = Vec::new();
    for method in &args.methods {
        for &eps in &args.eps {
            // "pgd-early-stop": PGD that stops each image at its first success (minimal,
            // low-confidence examples; no random start, so it starts from the clean image).
            let early_stop = method == "pgd-early-stop";
            let base = if early_stop { "pgd" } else { method.as_str() };
            let params = AttackParams {
                steps: (base == "pgd").then_some(args.pgd_steps),
                random_start: method == "pgd",
                early_stop,
                seed: args.seed,
                ..AttackParams::new(base, eps)
            };
            params.build()?;
            attacks.push(params);
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
    let detector = fit_path_detector(&checkpoint.model, checkpoint.model_hash(), device, &all_train, &train, &options)?;
    let out = args.out.unwrap_or_else(|| args.model.join(DETECTOR_FILE));
    detector.save(&out)?;
    if let Some(r) = &detector.record {
        let v = &r.validation;
        println!(
            "fitted on {} clean and {} adversarial rows ({}); validation: AUROC {:.4}, TPR at 5% FPR {:.4}, accuracy {:.4} at threshold {:.4} ({} clean / {} adversarial rows)",
            r.clean_rows, r.adversarial_rows, r.attacks.join(", "), v.auroc, v.tpr_at_5_fpr, v.detection_accuracy, v.threshold, v.clean, v.adversarial
        );
    }
    println!("wrote {}", out.display());
    Ok(())
}

fn run_evaluate(args: EvaluateArgs) -> Result<()> {
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
    let (seen, unseen) = standard_attacks(&args.eps, args.pgd_steps, args.l2_eps, args.slow_limit, args.seed);
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

fn run_recalibrate(args: RecalibrateArgs) -> Result<()> {
    let device = parse_device(&args.data.device)?;
    let mut checkpoint = Checkpoint::load(&args.model, device)?;
    let train_set = load_split(&args.data, Some(&checkpoint.meta), Split::Train, None)?;
    let test_set = load_split(&args.data, Some(&checkpoint.meta), Split::Test, None)?;
    tch::manual_seed(args.seed);
    let before = evaluate(&checkpoint.model, &test_set, device, 500, false, Execution::Auto)?;
    recalibrate_batchnorm(&checkpoint.model, &train_set, device, args.batch_size)?;
    let after = evaluate(&checkpoint.model, &test_set, device, 500, false, Execution::Auto)?;
    println!(
        "test accuracy {:.4} -> {:.4}, mean open fraction {:.3} -> {:.3}",
        before.accuracy, after.accuracy, before.mean_open_fraction, after.mean_open_fraction
    );
    if let Some(training) = checkpoint.meta.training.as_mut() {
        training.batchnorm_recalibrated = Some(after.clone());
    }
    checkpoint.save(&args.out).with_context(|| format!("saving to {}", args.out.display()))?;
    println!("saved {} (weights sha256 {})", args.out.display(), checkpoint.model_hash());
    Ok(())
}
