//! `pathguard fit-distribution`: the clean training distribution beside a model, so that
//! screening says how far each image is from it (see `pathguard::distribution`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pathguard::data::fashion_mnist::{self, Split};
use pathguard::data::Dataset;
use pathguard::device::parse_device;
use pathguard::distribution::{TrainingDistribution, DISTRIBUTION_FILE};
use pathguard::model::Checkpoint;

#[derive(Args)]
pub struct FitDistributionArgs {
    /// Checkpoint directory; distribution.json is written into it
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    /// Directory with the Fashion-MNIST IDX files [default: $PATHGUARD_DATA or /usr/share/datasets/fashion-mnist]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Training images the class means and covariance come from (the first N of the split)
    #[arg(long, default_value_t = 20_000)]
    limit: usize,
    /// Training images the percentiles are measured on (the last N of the split, apart from
    /// the fitted ones)
    #[arg(long, default_value_t = 5_000)]
    held_out: usize,
    /// auto (GPU if CUDA works), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn run_fit_distribution(args: FitDistributionArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    let dir = args.data.clone().unwrap_or_else(fashion_mnist::default_dir);
    let train = fashion_mnist::load(&dir, Split::Train)?;
    let n = train.len();
    if args.limit == 0 || args.held_out == 0 || args.limit + args.held_out > n {
        anyhow::bail!("--limit {} and --held-out {} must both be positive and together at most the {n} training images", args.limit, args.held_out);
    }
    let part = |start: usize, len: usize| Dataset {
        images: train.images.narrow(0, start as i64, len as i64),
        labels: train.labels.narrow(0, start as i64, len as i64),
    };
    let checkpoint = Checkpoint::load(&args.model, device)?;
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
