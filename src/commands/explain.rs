//! `pathguard explain`: why the model predicted what it did, by the image's path.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pathguard::detector::{PathDetector, DETECTOR_FILE};
use pathguard::device::parse_device;
use pathguard::model::{Checkpoint, GateMode};
use pathguard::path::analysis::{layer_of, separating_bits};
use pathguard::path::features::FEATURE_KINDS;
use pathguard::path::plots::{explanation_sheet, ExplanationSheet};
use serde::Serialize;

use super::data_args::{load_split, DataArgs};
use tch::{Device, Kind, Tensor};

#[derive(Args)]
pub struct ExplainArgs {
    /// PNG files or NPY arrays
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Checkpoint directory (its detector.json, if present, adds the adversarial score)
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    /// Directory for the PNG sheets (one per image)
    #[arg(long, default_value = "reports/explain")]
    out: PathBuf,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
    /// Separating filters to list
    #[arg(long, default_value_t = 8)]
    top: usize,
    /// The training data (class templates are computed on it when the model has no detector)
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Serialize)]
struct LayerExplanation {
    open_filters: Vec<usize>,
    /// Fraction of the layer's filters whose state differs from each class's binarised template.
    distance_to_class: Vec<f64>,
}

#[derive(Serialize)]
struct SeparatingFilter {
    layer: usize,
    filter: usize,
    open: bool,
    frequency_in_predicted: f64,
    frequency_in_runner_up: f64,
}

#[derive(Serialize)]
struct Explanation {
    id: String,
    predicted_class: i64,
    predicted_name: String,
    runner_up: String,
    probabilities: Vec<f32>,
    layers: Vec<LayerExplanation>,
    /// Classes whose templates are closest to the whole path (Hamming fraction).
    closest_classes: Vec<(String, f64)>,
    separating_filters: Vec<SeparatingFilter>,
    /// Conv multiply-accumulates this input's path needs / the ungated network's.
    flops_fraction: f64,
    adversarial_score: Option<f64>,
    flagged: Option<bool>,
    /// Per gated layer (and "output"), the detector's logit contribution (positive = towards
    /// adversarial), largest first.
    detector_layers: Vec<(String, f64)>,
    sheet: String,
}

/// Images and ids: one per PNG, one per NPY array entry.
fn read_inputs(paths: &[PathBuf], spec: &pathguard::data::InputSpec) -> Result<(Tensor, Vec<String>)> {
    let mut batches = Vec::new();
    let mut ids = Vec::new();
    for path in paths {
        let images = pathguard::data::image::read_images(std::slice::from_ref(path), spec)?;
        let n = images.size()[0];
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        for i in 0..n {
            ids.push(if n == 1 { name.clone() } else { format!("{name}#{i}") });
        }
        batches.push(images);
    }
    Ok((Tensor::cat(&batches, 0), ids))
}

pub fn run_explain(args: ExplainArgs) -> Result<()> {
    let device = parse_device(&args.data.device)?;
    let checkpoint = Checkpoint::load(&args.model, device)?;
    let detector_path = args.model.join(DETECTOR_FILE);
    let detector = if detector_path.exists() {
        Some(PathDetector::load(&detector_path, checkpoint.model_hash())?)
    } else {
        None
    };
    let templates = match &detector {
        Some(d) => d.templates.clone(),
        None => {
            eprintln!("no {DETECTOR_FILE}: computing class templates on the training split");
            let train = load_split(&args.data, Some(&checkpoint.meta), pathguard::data::Split::Train, None)?;
            pathguard::detector_fit::fit_templates(&checkpoint.model, device, &train, 500)?
        }
    };
    let (images, ids) = read_inputs(&args.images, &checkpoint.input_spec())?;
    let model = &checkpoint.model;
    let x = images.to_device(device);
    model.check_input(&x)?;
    let out = tch::no_grad(|| model.forward_with_path(&x, GateMode::Eval));
    let probabilities = out.logits.softmax(1, Kind::Float).to_device(Device::Cpu);
    let config = model.config();
    let macs = config.conv_macs();
    let flops = pathguard::train::path_macs(config, &macs, &out.gates).to_device(Device::Cpu) / macs.iter().sum::<f64>();
    let scores = detector.as_ref().map(|d| d.score(&out)).transpose()?;
    let sizes: Vec<usize> = templates.layer_sizes.iter().map(|&s| s as usize).collect();
    let names = &checkpoint.meta.class_names;
    let path = out.path().to_kind(Kind::Uint8).to_device(Device::Cpu);
    let mut explanations = Vec::new();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    for (i, id) in ids.iter().enumerate() {
        let probs = Vec::<f32>::try_from(probabilities.get(i as i64))?;
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let (predicted, runner_up) = (order[0], order[1]);
        let bits = Vec::<u8>::try_from(path.get(i as i64))?;
        let freq = |k: usize| -> Vec<f64> { templates.frequencies[k].iter().map(|&f| f as f64).collect() };
        let mut layers = Vec::new();
        let mut offset = 0;
        for &size in &sizes {
            let z = &bits[offset..offset + size];
            let distance_to_class = (0..names.len())
                .map(|k| {
                    let t = &templates.frequencies[k][offset..offset + size];
                    z.iter().zip(t).filter(|(b, f)| (**b != 0) != (**f > 0.5)).count() as f64 / size as f64
                })
                .collect();
            layers.push(LayerExplanation { open_filters: (0..size).filter(|&f| z[f] != 0).collect(), distance_to_class });
            offset += size;
        }
        let total: usize = sizes.iter().sum();
        let mut closest: Vec<(String, f64)> = (0..names.len())
            .map(|k| {
                let t = &templates.frequencies[k];
                let d = bits.iter().zip(t).filter(|(b, f)| (**b != 0) != (**f > 0.5)).count() as f64 / total as f64;
                (names[k].clone(), d)
            })
            .collect();
        closest.sort_by(|a, b| a.1.total_cmp(&b.1));
        closest.truncate(3);
        let (fp, fr) = (freq(predicted), freq(runner_up));
        let separating_filters = separating_bits(&bits, &fp, &fr, args.top)
            .into_iter()
            .map(|(bit, _)| {
                let (layer, filter) = layer_of(bit, &sizes);
                SeparatingFilter { layer, filter, open: bits[bit] != 0, frequency_in_predicted: fp[bit], frequency_in_runner_up: fr[bit] }
            })
            .collect();
        let detector_layers = match &detector {
            Some(d) => layer_contributions(d, &out, i as i64, &sizes)?,
            None => Vec::new(),
        };
        let sheet = args.out.join(format!("{}.png", id.replace(['/', '#'], "_")));
        let mut per_layer_bits = Vec::new();
        let mut per_layer_template = Vec::new();
        let mut offset = 0;
        for &size in &sizes {
            per_layer_bits.push(bits[offset..offset + size].to_vec());
            per_layer_template.push(fp[offset..offset + size].to_vec());
            offset += size;
        }
        let image = images.get(i as i64);
        let score = scores.as_ref().map(|s| s[i]);
        let title = match score {
            Some(s) => format!("{id}: {} ({:.2}); adversarial score {s:.3}", names[predicted], probs[predicted]),
            None => format!("{id}: {} ({:.2})", names[predicted], probs[predicted]),
        };
        explanation_sheet(&sheet, &ExplanationSheet { title, image: &image, path: per_layer_bits, template: per_layer_template })?;
        explanations.push(Explanation {
            id: id.clone(),
            predicted_class: predicted as i64,
            predicted_name: names[predicted].clone(),
            runner_up: names[runner_up].clone(),
            probabilities: probs,
            layers,
            closest_classes: closest,
            separating_filters,
            flops_fraction: flops.double_value(&[i as i64]),
            adversarial_score: score,
            flagged: score.zip(detector.as_ref()).map(|(s, d)| s >= d.threshold),
            detector_layers,
            sheet: sheet.display().to_string(),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanations)?);
    } else {
        for e in &explanations {
            print_explanation(e, names);
        }
    }
    Ok(())
}

/// The detector's logit contributions of image `i`, summed per gated layer ("output" for the
/// columns about the class scores), largest first.
fn layer_contributions(d: &PathDetector, out: &pathguard::model::ForwardOutput, i: i64, sizes: &[usize]) -> Result<Vec<(String, f64)>> {
    let mut per_layer = vec![0.0; sizes.len()];
    let mut output = 0.0;
    for expert in &d.experts {
        let rows = expert.features.rows(out, &d.templates);
        let row = rows.row(i as usize).insert_axis(ndarray::Axis(0)).to_owned();
        let contributions = expert.classifier.contributions(row.view()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let statistics = expert.features.names.len();
        for (j, &c) in contributions.row(0).iter().enumerate() {
            if j < statistics {
                let layers = expert.features.layers;
                if j < FEATURE_KINDS.len() * layers {
                    per_layer[j % layers] += c;
                } else {
                    output += c;
                }
            } else {
                let bit = (j - statistics) % sizes.iter().sum::<usize>();
                per_layer[layer_of(bit, sizes).0] += c;
            }
        }
    }
    let mut all: Vec<(String, f64)> = per_layer.into_iter().enumerate().map(|(l, c)| (format!("layer {l}"), c)).collect();
    all.push(("output".into(), output));
    all.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(all)
}

fn print_explanation(e: &Explanation, names: &[String]) {
    println!("{}: {} (p = {:.3}), runner-up {}", e.id, e.predicted_name, e.probabilities[e.predicted_class as usize], e.runner_up);
    if let (Some(s), Some(f)) = (e.adversarial_score, e.flagged) {
        let top: Vec<String> = e.detector_layers.iter().take(3).map(|(l, c)| format!("{l} {c:+.2}")).collect();
        println!("  adversarial score {s:.3}{}; most contributing: {}", if f { " FLAGGED" } else { "" }, top.join(", "));
    }
    println!("  conv FLOPs of this path: {:.1}% of the ungated network", 100.0 * e.flops_fraction);
    for (l, layer) in e.layers.iter().enumerate() {
        let mut best: Vec<(usize, f64)> = layer.distance_to_class.iter().copied().enumerate().collect();
        best.sort_by(|a, b| a.1.total_cmp(&b.1));
        let closest: Vec<String> = best.iter().take(2).map(|(k, d)| format!("{} {d:.2}", names[*k])).collect();
        println!("  layer {l}: {} filters open; closest templates {}", layer.open_filters.len(), closest.join(", "));
    }
    let closest: Vec<String> = e.closest_classes.iter().map(|(n, d)| format!("{n} {d:.3}")).collect();
    println!("  whole path closest to: {}", closest.join(", "));
    println!("  filters separating {} from {}:", e.predicted_name, e.runner_up);
    for f in &e.separating_filters {
        println!(
            "    layer {} filter {:>3} {:<6} (open for {:.0}% of {}, {:.0}% of {})",
            f.layer,
            f.filter,
            if f.open { "open" } else { "closed" },
            100.0 * f.frequency_in_predicted,
            e.predicted_name,
            100.0 * f.frequency_in_runner_up,
            e.runner_up
        );
    }
    println!("  sheet: {}", e.sheet);
}
