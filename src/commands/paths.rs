//! `pathguard compact`, `pathguard paths` and `pathguard explain`: the paper's other two
//! applications, acceleration and interpretation.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use pathguard::compact::{compact, filter_usage, parameter_count};
use pathguard::data::{fashion_mnist, Split};
use pathguard::device::parse_device;
use pathguard::model::{Checkpoint, GateMode};
use pathguard::train::evaluate;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

#[derive(Args)]
pub struct CompactArgs {
    /// Checkpoint directory to compact
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    /// Output checkpoint directory
    #[arg(long)]
    out: PathBuf,
    /// Drop filters open for fewer than this fraction of training inputs
    #[arg(long, default_value_t = 0.01)]
    min_usage: f64,
    /// Training images the usage is measured on (the first N)
    #[arg(long, default_value_t = 60_000)]
    usage_images: usize,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
}

#[derive(Serialize)]
struct ModelFigures {
    parameters: i64,
    /// Dense conv multiply-accumulates per image (every filter computed).
    dense_conv_macs: f64,
    test_accuracy: f64,
    /// Mean over test images of the conv MACs their paths need.
    mean_path_macs: f64,
    /// Forward pass (logits + path), batch 128, median of 5 runs over 2,048 test images.
    images_per_second: f64,
}

#[derive(Serialize)]
struct CompactionReport {
    command: String,
    parent: String,
    compact: String,
    min_usage: f64,
    usage_images: usize,
    widths_before: Vec<i64>,
    widths_after: Vec<i64>,
    full: ModelFigures,
    compacted: ModelFigures,
    /// Test images whose paths use only kept filters, and the largest logit difference on them.
    exact_inputs: usize,
    max_logit_difference_on_exact_inputs: f64,
}

fn throughput(checkpoint: &Checkpoint, images: &Tensor, device: Device) -> f64 {
    let mut rates = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for start in (0..images.size()[0]).step_by(128) {
            let x = images.narrow(0, start, 128.min(images.size()[0] - start)).to_device(device);
            let _ = checkpoint.model.predict(&x).expect("valid input");
        }
        rates.push(images.size()[0] as f64 / started.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn figures(checkpoint: &Checkpoint, test: &fashion_mnist::Dataset, device: Device, rate: f64) -> Result<ModelFigures> {
    let report = evaluate(&checkpoint.model, test, device, 500, false)?;
    let dense: f64 = checkpoint.model.config().conv_macs().iter().sum();
    Ok(ModelFigures {
        parameters: parameter_count(checkpoint),
        dense_conv_macs: dense,
        test_accuracy: report.accuracy,
        mean_path_macs: report.mean_flops_fraction * dense,
        images_per_second: rate,
    })
}

pub fn run_compact(args: CompactArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    let full = Checkpoint::load(&args.model, device)?;
    let data_dir = fashion_mnist::default_dir();
    let train = fashion_mnist::load(&data_dir, Split::Train)?.take(args.usage_images);
    let test = fashion_mnist::load(&data_dir, Split::Test)?;
    eprintln!("measuring filter usage on {} training images", train.len());
    let usage = filter_usage(&full, device, &train, args.batch_size)?;
    let mut compacted = compact(&full, &usage, args.min_usage, train.len())?;
    compacted.save(&args.out).with_context(|| format!("saving {}", args.out.display()))?;

    // Exactness: on test images whose paths use only kept filters, the logits agree.
    let kept = compacted.meta.compacted_from.as_ref().expect("compaction record").kept.clone();
    let sample = test.take(2048);
    let full_out = tch::no_grad(|| full.model.forward_with_path(&sample.images.to_device(device), GateMode::Eval));
    let compact_logits = compacted.model.predict(&sample.images.to_device(device))?.0;
    let gated: Vec<usize> = full.model.config().gated_layers();
    let mut only_kept = Tensor::ones([sample.len() as i64], (Kind::Bool, device));
    for (z, &layer) in full_out.gates.iter().zip(&gated) {
        let mut dropped = Tensor::ones([z.size()[1]], (Kind::Bool, device));
        let _ = dropped.index_fill_(0, &Tensor::from_slice(&kept[layer]).to_device(device), 0);
        let uses_dropped = z.gt(0.5).logical_and(&dropped.unsqueeze(0)).any_dim(1, false);
        only_kept = only_kept.logical_and(&uses_dropped.logical_not());
    }
    let rows = only_kept.nonzero().squeeze_dim(1);
    let exact_inputs = rows.size()[0] as usize;
    let max_diff = if exact_inputs == 0 {
        0.0
    } else {
        (full_out.logits.index_select(0, &rows) - compact_logits.index_select(0, &rows)).abs().max().double_value(&[])
    };

    // Throughput side by side, alternating runs.
    let images = sample.images.shallow_clone();
    let (mut full_rate, mut compact_rate) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        full_rate.push(throughput(&full, &images, device));
        compact_rate.push(throughput(&compacted, &images, device));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let report = CompactionReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        parent: full.model_hash().to_string(),
        compact: compacted.model_hash().to_string(),
        min_usage: args.min_usage,
        usage_images: train.len(),
        widths_before: full.model.config().layers.iter().map(|l| l.out_channels).collect(),
        widths_after: compacted.model.config().layers.iter().map(|l| l.out_channels).collect(),
        full: figures(&full, &test, device, median(&mut full_rate))?,
        compacted: figures(&compacted, &test, device, median(&mut compact_rate))?,
        exact_inputs,
        max_logit_difference_on_exact_inputs: max_diff,
    };
    let json = serde_json::to_vec_pretty(&report).expect("report serialises");
    pathguard::model::checkpoint::write_atomic(&args.out.join("compaction.json"), &json)?;
    let (f, c) = (&report.full, &report.compacted);
    println!("widths {:?} -> {:?}", report.widths_before, report.widths_after);
    println!("| | full | compact | ratio |\n|---|---|---|---|");
    println!("| parameters | {} | {} | {:.2}x fewer |", f.parameters, c.parameters, f.parameters as f64 / c.parameters as f64);
    println!("| dense conv MACs / image | {:.3e} | {:.3e} | {:.2}x fewer |", f.dense_conv_macs, c.dense_conv_macs, f.dense_conv_macs / c.dense_conv_macs);
    println!("| path conv MACs / image | {:.3e} | {:.3e} | |", f.mean_path_macs, c.mean_path_macs);
    println!("| test accuracy | {:.4} | {:.4} | {:+.2} points |", f.test_accuracy, c.test_accuracy, 100.0 * (c.test_accuracy - f.test_accuracy));
    println!("| CPU images/s (batch 128) | {:.0} | {:.0} | {:.2}x |", f.images_per_second, c.images_per_second, c.images_per_second / f.images_per_second);
    println!(
        "{exact_inputs} of {} test images use only kept filters; their logits differ by at most {max_diff:.2e}",
        sample.len()
    );
    println!("wrote {} (with compaction.json)", args.out.display());
    Ok(())
}
