//! `pathguard eval`, `info` and `recalibrate`: a checkpoint's accuracy and paths, its
//! metadata, and its BatchNorm statistics.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pathguard::data::Split;
use pathguard::device::{device_name, parse_device};
use pathguard::model::{Checkpoint, Execution};
use pathguard::train::{evaluate, recalibrate_batchnorm, EvalReport};

use super::data_args::{load_split, DataArgs};

#[derive(Args)]
pub struct EvalArgs {
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
pub struct InfoArgs {
    /// Checkpoint directory
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
}


#[derive(Args)]
pub struct RecalibrateArgs {
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


pub fn run_eval(args: EvalArgs) -> Result<()> {
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


pub fn run_info(args: InfoArgs) -> Result<()> {
    println!("libtorch CUDA available: {} ({} device(s))", tch::Cuda::is_available(), tch::Cuda::device_count());
    let checkpoint = Checkpoint::load(&args.model, tch::Device::Cpu)?;
    let meta = &checkpoint.meta;
    println!("model {}", args.model.display());
    println!("  weights sha256  {}", meta.weights_sha256);
    println!("  classes         {}", meta.class_names.join(", "));
    println!("  input           {:?} {} in {:?}, {}", meta.pixel_convention.shape, meta.pixel_convention.dtype, meta.pixel_convention.range, meta.pixel_convention.layout);
    let architecture = &meta.architecture;
    let blocks = architecture.layers.iter().filter(|l| l.residual_from.is_some()).count();
    println!("  conv layers     {} ({blocks} residual blocks)", architecture.layers.len());
    println!("  gated layers    {:?} filters", architecture.gate_sizes());
    if let Some(training) = &meta.training {
        println!("  last training   {}", training.summary());
    }
    Ok(())
}


pub fn run_recalibrate(args: RecalibrateArgs) -> Result<()> {
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
