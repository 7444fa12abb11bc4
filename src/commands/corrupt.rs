//! `pathguard corrupt` (a corruption set, like an attack set) and `pathguard
//! corruption-report` (every corruption and severity against the model and its detector).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pathguard::corruption_set::write_corruption_set;
use pathguard::corruptions::{find, CORRUPTIONS};
use pathguard::data::Split;
use pathguard::device::parse_device;
use pathguard::evaluation::corruptions::corruption_report;
use pathguard::screener::Screener;

use super::data_args::{load_slice, DataArgs, SliceArgs};

#[derive(Args)]
pub struct CorruptArgs {
    /// gaussian-noise, shot-noise, impulse-noise, gaussian-blur, motion-blur, jpeg,
    /// brightness, contrast, translate, rotate or scale
    #[arg(long)]
    corruption: String,
    /// 1 (barely visible) up to the corruption's last severity (4 or 5)
    #[arg(long, default_value_t = 1)]
    severity: usize,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Checkpoint directory with its detector.json (whose verdicts the manifest records)
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// The images to corrupt
    #[command(flatten)]
    slice: SliceArgs,
    #[arg(long)]
    out: PathBuf,
}

pub fn run_corrupt(args: CorruptArgs) -> Result<()> {
    let corruption = find(&args.corruption)?;
    corruption.level(args.severity)?; // refuse before loading anything
    let device = parse_device(&args.data.device)?;
    let screener = Screener::load(&args.model, device)?;
    let (data, indices) = load_slice(&args.data, &screener.checkpoint.meta, &args.slice)?;
    let m = write_corruption_set(
        &args.out,
        &screener,
        &args.model,
        corruption,
        args.severity,
        args.seed,
        &data,
        &indices,
        args.slice.split.name(),
        args.slice.offset,
    )?;
    println!(
        "{} severity {} ({} {}) on {} images: accuracy {:.4} (clean {:.4}), flagged {:.4} (clean {:.4}), mean change {:.4}",
        m.corruption, m.severity, m.level, m.unit, m.images, m.corrupted.accuracy, m.clean.accuracy, m.corrupted.flag_rate, m.clean.flag_rate, m.mean_change
    );
    println!("wrote {}", args.out.display());
    Ok(())
}

#[derive(Args)]
pub struct CorruptionReportArgs {
    /// Checkpoint directory with its detector.json
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Test images (from --offset of the test split)
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Steps of the PGD attack (eps 0.1) the corruptions are told apart from
    #[arg(long, default_value_t = 40)]
    pgd_steps: usize,
    /// C&W, the slow attack, runs on at most this many of them (0: not at all)
    #[arg(long, default_value_t = 200)]
    slow_limit: usize,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// The detector to judge [default: the model's detector.json]
    #[arg(long)]
    detector: Option<PathBuf>,
    /// Report directory (report.md, report.json, corruptions.png)
    #[arg(long, default_value = "reports/corruptions")]
    out: PathBuf,
}

pub fn run_corruption_report(args: CorruptionReportArgs) -> Result<()> {
    let device = parse_device(&args.data.device)?;
    let mut screener = Screener::load(&args.model, device)?;
    let test = SliceArgs { split: Split::Test, offset: args.offset, limit: args.limit };
    let (data, _) = load_slice(&args.data, &screener.checkpoint.meta, &test)?;
    if let Some(path) = &args.detector {
        screener.detector = pathguard::detector::PathDetector::load(path, screener.checkpoint.model_hash())?;
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let report = corruption_report(&screener, &data, args.pgd_steps, args.slow_limit, args.seed, command)?;
    report.write(&args.out, &data.images.get(0))?;
    print!("{}", report.to_markdown());
    println!("wrote {} ({} corruptions)", args.out.display(), CORRUPTIONS.len());
    Ok(())
}
