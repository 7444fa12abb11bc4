//! `pathguard compact`, `pathguard paths` and `pathguard explain`: the paper's other two
//! applications, acceleration and interpretation.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use pathguard::compact::{compact, filter_usage, parameter_count, uses_only_kept};
use pathguard::data::Split;
use pathguard::device::parse_device;
use pathguard::model::{Checkpoint, Execution, GateMode};
use pathguard::train::evaluate;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::data_args::{load_split, DataArgs};

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
    #[command(flatten)]
    data: DataArgs,
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

fn figures(checkpoint: &Checkpoint, test: &pathguard::data::Dataset, device: Device, rate: f64) -> Result<ModelFigures> {
    let report = evaluate(&checkpoint.model, test, device, 500, false, Execution::Auto)?;
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
    let device = parse_device(&args.data.device)?;
    let full = Checkpoint::load(&args.model, device)?;
    let train = load_split(&args.data, Some(&full.meta), Split::Train, Some(args.usage_images))?;
    let test = load_split(&args.data, Some(&full.meta), Split::Test, None)?;
    eprintln!("measuring filter usage on {} training images", train.len());
    let usage = filter_usage(&full, device, &train, args.batch_size)?;
    let mut compacted = compact(&full, &usage, args.min_usage, train.len())?;
    compacted.save(&args.out).with_context(|| format!("saving {}", args.out.display()))?;

    // Exactness: on test images whose paths use only kept filters, the logits agree.
    let kept = compacted.meta.compacted_from.as_ref().expect("compaction record").kept.clone();
    let sample = test.take(2048);
    let full_out = tch::no_grad(|| full.model.forward_with_path(&sample.images.to_device(device), GateMode::Eval));
    let compact_logits = compacted.model.predict(&sample.images.to_device(device))?.0;
    let only_kept = uses_only_kept(&full_out.gates, &kept, &full.model.config().gated_layers());
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

#[derive(Args)]
pub struct PathsArgs {
    /// Checkpoint directory
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    /// Output directory (replaced atomically)
    #[arg(long, default_value = "reports/paths")]
    out: PathBuf,
    /// Test images to analyse (default: all 10,000)
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
}

#[derive(Serialize)]
struct LayerPaths {
    /// Index of the conv layer in the network.
    conv_layer: usize,
    filters: usize,
    /// frequency[class][filter]: open frequency over the class's test images.
    frequency: Vec<Vec<f64>>,
    roles: pathguard::path::analysis::FilterRoles,
}

#[derive(Serialize)]
struct PathsReport {
    command: String,
    model_hash: String,
    images: usize,
    class_names: Vec<String>,
    layers: Vec<LayerPaths>,
    /// Jaccard similarity of the classes' binarised templates (all gated layers).
    class_similarity: Vec<Vec<f64>>,
}

/// Eval-mode paths (0/1 per gate) of `images`, in batches, with a progress bar.
fn paths_of(checkpoint: &Checkpoint, images: &Tensor, device: Device, batch_size: usize) -> Result<Vec<Vec<u8>>> {
    let n = images.size()[0];
    let bar = pathguard::progress::bar(n as u64, "paths");
    let mut paths = Vec::with_capacity(n as usize);
    for start in (0..n).step_by(batch_size.max(1)) {
        let len = (batch_size as i64).min(n - start);
        let (_, path) = checkpoint.model.predict(&images.narrow(0, start, len).to_device(device))?;
        let path = path.to_kind(Kind::Uint8).to_device(Device::Cpu);
        for i in 0..len {
            paths.push(Vec::<u8>::try_from(path.get(i))?);
        }
        bar.inc(len as u64);
    }
    bar.finish_and_clear();
    Ok(paths)
}

pub fn run_paths(args: PathsArgs) -> Result<()> {
    use pathguard::path::analysis::{filter_roles, jaccard_similarity, templates_from_paths};
    let device = parse_device(&args.data.device)?;
    let checkpoint = Checkpoint::load(&args.model, device)?;
    let test = load_split(&args.data, Some(&checkpoint.meta), Split::Test, args.limit)?;
    let paths = paths_of(&checkpoint, &test.images, device, args.batch_size)?;
    let labels: Vec<usize> = Vec::<i64>::try_from(&test.labels)?.iter().map(|&l| l as usize).collect();
    let classes = checkpoint.meta.class_names.len();
    let templates = templates_from_paths(&paths, &labels, classes);
    let config = checkpoint.model.config();
    let sizes: Vec<usize> = config.gate_sizes().iter().map(|&s| s as usize).collect();
    let mut layers = Vec::new();
    let mut offset = 0;
    for (&conv_layer, &size) in config.gated_layers().iter().zip(&sizes) {
        let frequency: Vec<Vec<f64>> = templates.iter().map(|t| t[offset..offset + size].to_vec()).collect();
        layers.push(LayerPaths { conv_layer, filters: size, roles: filter_roles(&frequency), frequency });
        offset += size;
    }
    let report = PathsReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        model_hash: checkpoint.model_hash().to_string(),
        images: paths.len(),
        class_names: checkpoint.meta.class_names.clone(),
        class_similarity: jaccard_similarity(&templates),
        layers,
    };
    let markdown = paths_markdown(&report);
    pathguard::atomic::write_dir_atomic(&args.out, |tmp| {
        let names = &report.class_names;
        for (l, layer) in report.layers.iter().enumerate() {
            pathguard::path::plots::heatmap(
                &tmp.join(format!("layer{l}_class_filter.png")),
                &format!("gated layer {l} (conv {}): open frequency per class (rows) and filter (columns)", layer.conv_layer),
                names,
                None,
                &layer.frequency,
            )?;
        }
        pathguard::path::plots::heatmap(
            &tmp.join("class_similarity.png"),
            "class x class path similarity (Jaccard of binarised templates; black = identical)",
            names,
            Some(names),
            &report.class_similarity,
        )?;
        let json = serde_json::to_vec_pretty(&report).expect("report serialises");
        std::fs::write(tmp.join("paths.json"), json).map_err(|e| pathguard::Error::Io { path: tmp.join("paths.json"), source: e })?;
        std::fs::write(tmp.join("paths.md"), &markdown).map_err(|e| pathguard::Error::Io { path: tmp.join("paths.md"), source: e })
    })?;
    println!("{markdown}");
    println!("wrote {}", args.out.display());
    Ok(())
}

fn paths_markdown(report: &PathsReport) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(md, "# Calculation paths of model `{}`\n", &report.model_hash[..12]);
    let _ = writeln!(md, "Command: `{}`. {} test images.\n", report.command, report.images);
    let _ = writeln!(md, "A filter is *open for* a class when its gate is open for at least half of that class's images.\n");
    let _ = writeln!(md, "| gated layer | filters | class-specific | shared | open for no class |\n|---|---|---|---|---|");
    for (l, layer) in report.layers.iter().enumerate() {
        let r = &layer.roles;
        let _ = writeln!(md, "| {l} (conv {}) | {} | {} | {} | {} |", layer.conv_layer, layer.filters, r.class_specific, r.shared, r.unused);
    }
    let names = &report.class_names;
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for i in 0..names.len() {
        for j in i + 1..names.len() {
            pairs.push((report.class_similarity[i][j], i, j));
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let _ = writeln!(md, "\nMost similar paths (Jaccard of binarised templates):");
    for (s, i, j) in pairs.iter().take(3) {
        let _ = writeln!(md, "- {} / {}: {s:.3}", names[*i], names[*j]);
    }
    let _ = writeln!(md, "\nLeast similar:");
    for (s, i, j) in pairs.iter().rev().take(3) {
        let _ = writeln!(md, "- {} / {}: {s:.3}", names[*i], names[*j]);
    }
    let _ = writeln!(md, "\nClass-specific filters of the last gated layer, per class:");
    if let Some(last) = report.layers.last() {
        for (k, filters) in last.roles.specific_by_class.iter().enumerate() {
            let _ = writeln!(md, "- {}: {} {:?}", names[k], filters.len(), filters);
        }
    }
    let _ = writeln!(md, "\nPictures: `layerL_class_filter.png` (open frequency, black = always open), `class_similarity.png`.");
    md
}
