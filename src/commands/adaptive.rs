//! `pathguard adaptive-report`: the shipped model and detector against attackers who know the
//! detector; see [`pathguard::evaluation::adaptive`].

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pathguard::data::Split;
use pathguard::device::parse_device;
use pathguard::evaluation::adaptive::{evaluate_adaptive, AdaptiveInputs, AdaptiveOptions};
use pathguard::screener::Screener;

use super::data_args::{load_split, DataArgs};

#[derive(Args)]
pub struct AdaptiveReportArgs {
    /// Checkpoint directory with its detector.json
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Test images to attack, from --offset of the test split
    #[arg(long, default_value_t = 1_000)]
    limit: usize,
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Training images whose paths path matching may imitate (the first N of the training split)
    #[arg(long, default_value_t = 1_000)]
    reference_images: usize,
    /// L-infinity budgets
    #[arg(long, value_delimiter = ',', default_value = "0.02,0.05,0.1,0.2")]
    eps: Vec<f64>,
    /// The L2 budget (0: none)
    #[arg(long, default_value_t = 1.5)]
    l2_eps: f64,
    /// Steps of every attack (step size eps / 10)
    #[arg(long, default_value_t = 1_000)]
    steps: usize,
    /// Random restarts of the targeted attacks on the images no attack evaded
    #[arg(long, default_value_t = 2)]
    restarts: usize,
    /// Runner-up classes those images are targeted at
    #[arg(long, default_value_t = 2)]
    targets: usize,
    /// Weights of the detector's loss in the Lagrangian attack
    #[arg(long, value_delimiter = ',', default_value = "0.1,1,10")]
    lambdas: Vec<f64>,
    /// Weight of the path distance in path matching
    #[arg(long, default_value_t = 1.0)]
    path_weight: f64,
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// The detector to judge [default: the model's detector.json]
    #[arg(long)]
    detector: Option<PathBuf>,
    /// Report directory (report.md, report.json, sr_vs_eps.png)
    #[arg(long, default_value = "reports/adaptive")]
    out: PathBuf,
}

pub fn run_adaptive_report(args: AdaptiveReportArgs) -> Result<()> {
    let device = parse_device(&args.data.device)?;
    let mut screener = Screener::load(&args.model, device)?;
    if let Some(path) = &args.detector {
        screener.detector = pathguard::detector::PathDetector::load(path, screener.checkpoint.model_hash())?;
    }
    let meta = &screener.checkpoint.meta;
    let test = load_split(&args.data, Some(meta), Split::Test, None)?;
    if args.limit == 0 || args.offset >= test.len() {
        anyhow::bail!("--offset {} --limit {} selects no test images (there are {})", args.offset, args.limit, test.len());
    }
    let len = args.limit.min(test.len() - args.offset) as i64;
    let test = test.slice(args.offset, len as usize);
    let references = load_split(&args.data, Some(meta), Split::Train, Some(args.reference_images))?;
    let options = AdaptiveOptions {
        linf_eps: args.eps.clone(),
        l2_eps: args.l2_eps,
        steps: args.steps,
        restarts: args.restarts,
        targets: args.targets,
        lambdas: args.lambdas.clone(),
        path_weight: args.path_weight,
        unbounded_eps: 1.0,
        batch_size: args.batch_size,
        seed: args.seed,
    };
    let inputs = AdaptiveInputs {
        model: &screener.checkpoint.model,
        detector: &screener.detector,
        model_hash: screener.checkpoint.model_hash(),
        device,
        test: &test,
        references: &references,
    };
    let command = std::env::args().map(|a| if a.contains(' ') { format!("{a:?}") } else { a }).collect::<Vec<_>>().join(" ");
    let report = evaluate_adaptive(&inputs, &options, command)?;
    report.write(&args.out)?;
    print!("{}", report.to_markdown());
    println!("wrote {}", args.out.display());
    Ok(())
}
