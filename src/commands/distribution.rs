//! `pathguard fit-distribution`: the clean training distribution beside a model, so that
//! screening says how far each image is from it (see `pathguard::distribution`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pathguard::data::Split;
use pathguard::device::parse_device;
use pathguard::distribution::{TrainingDistribution, DISTRIBUTION_FILE};
use pathguard::model::Checkpoint;

use super::data_args::{load_split, DataArgs};

#[derive(Args)]
pub struct FitDistributionArgs {
    /// Checkpoint directory; distribution.json is written into it
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Training images the class means and covariance come from (the first N of the split)
    #[arg(long, default_value_t = 20_000)]
    limit: usize,
    /// Training images the percentiles are measured on (the last N of the split, apart from
    /// the fitted ones)
    #[arg(long, default_value_t = 5_000)]
    held_out: usize,
}

pub fn run_fit_distribution(args: FitDistributionArgs) -> Result<()> {
    let device = parse_device(&args.data.device)?;
    let checkpoint = Checkpoint::load(&args.model, device)?;
    let train = load_split(&args.data, Some(&checkpoint.meta), Split::Train, None)?;
    let n = train.len();
    if args.limit == 0 || args.held_out == 0 || args.limit + args.held_out > n {
        anyhow::bail!("--limit {} and --held-out {} must both be positive and together at most the {n} training images", args.limit, args.held_out);
    }
    let part = |start: usize, len: usize| train.slice(start, len);
    let started = std::time::Instant::now();
    let distribution = TrainingDistribution::fit(
        &checkpoint.model,
        device,
        checkpoint.model_hash(),
        &part(0, args.limit),
        &part(n - args.held_out, args.held_out),
    )?;
    let out = args.model.join(DISTRIBUTION_FILE);
    distribution.save(&out)?;
    let d = &distribution.held_out_distances;
    eprintln!(
        "wrote {} ({} fitted, {} held out; held-out squared distance median {:.1}, 99th percentile {:.1}) in {:.1} s",
        out.display(),
        args.limit,
        d.len(),
        d[d.len() / 2],
        d[(d.len() * 99 / 100).min(d.len() - 1)],
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
