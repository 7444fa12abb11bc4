//! The `pathguard` command line.

mod commands;

use clap::{Parser, Subcommand};
use commands::{attack, detector, model};

#[derive(Parser)]
#[command(name = "pathguard", version, about = "Screens images for adversarial examples by their calculation paths")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a decoupled CNN on a data set (Fashion-MNIST unless --data says otherwise) and save
    /// it as a checkpoint directory.
    #[command(allow_negative_numbers = true)]
    Train(commands::train::TrainArgs),
    /// Evaluate a checkpoint on the test split of its data set.
    Eval(model::EvalArgs),
    /// Show a checkpoint's metadata and the devices libtorch can use.
    Info(model::InfoArgs),
    /// Generate an attack set: adversarial images of a data slice, as NPY files,
    /// manifest.json and a preview.png contact sheet.
    #[command(allow_negative_numbers = true)]
    Attack(attack::AttackArgs),
    /// Re-estimate BatchNorm statistics of a checkpoint with noise-free gates (train does
    /// this at its end) and save the result.
    Recalibrate(model::RecalibrateArgs),
    /// Fit the path detector on clean versus FGSM/PGD training images and save detector.json
    /// beside the model.
    FitDetector(detector::FitDetectorArgs),
    /// Fit the clean training distribution of a model's features and save distribution.json
    /// beside it: screening then says how far each image is from the training images.
    FitDistribution(commands::distribution::FitDistributionArgs),
    /// Judge the path-statistics detector against the baselines (max-softmax, Mahalanobis,
    /// LID, raw activations) on seen and unseen attacks; writes report.md, report.json and
    /// roc.png to --out.
    Evaluate(detector::EvaluateArgs),
    /// Attack the model and its detector with attacks that know the detector (selective,
    /// orthogonal, Lagrangian, extra-class and path-matching PGD, best of all per image);
    /// writes report.md, report.json and sr_vs_eps.png to --out.
    AdaptiveReport(commands::adaptive::AdaptiveReportArgs),
    /// Apply one benign corruption (noise, blur, JPEG, brightness, contrast, shifts) to a
    /// data slice and write it like an attack set, with the screener's verdicts.
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => commands::train::run_train(args),
        Command::Eval(args) => model::run_eval(args),
        Command::Info(args) => model::run_info(args),
        Command::Attack(args) => attack::run_attack_command(args),
        Command::FitDetector(args) => detector::run_fit_detector(args),
        Command::FitDistribution(args) => commands::distribution::run_fit_distribution(args),
        Command::Evaluate(args) => detector::run_evaluate(args),
        Command::AdaptiveReport(args) => commands::adaptive::run_adaptive_report(args),
        Command::Corrupt(args) => commands::corrupt::run_corrupt(args),
        Command::CorruptionReport(args) => commands::corrupt::run_corruption_report(args),
        Command::Recalibrate(args) => model::run_recalibrate(args),
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

