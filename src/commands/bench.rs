//! `pathguard bench`: our side of bench/compare.sh, on the first test images (of Fashion-MNIST
//! or `--data`). Prints JSON.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use ndarray::{Array2, ArrayView2, Axis};
use pathguard::atomic::write_dir_atomic;
use pathguard::attack_material::{flat_rows, AttackBlock, AttackMaterial, MaterialOptions, PlannedAttack};
use pathguard::attack_set::{run_attack, GateGradient};
use pathguard::attack_spec::{AttackName, AttackParams};
use pathguard::data::Dataset;
use pathguard::detector::PathDetector;
use pathguard::detector_fit::{fit_experts, fit_templates};
use pathguard::evaluation::{labelled_scores, standard_attacks};
use pathguard::data::Split;
use pathguard::device::parse_device;
use pathguard::model::{Checkpoint, Execution, Inference, Strategy};
use pathguard::screener::Screener;
use pathguard::train::{train, TrainOptions};
use tch::{Device, Kind, Tensor};

use super::data_args::{load_split, DataArgs};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum What {
    /// Eval-mode forward pass (logits, path and the MI-head logits the detector reads)
    Forward,
    /// Dense and gated execution side by side in one process: per batch size (--batches),
    /// the strategies alternate over the same images (--repeats rounds); images/s of each,
    /// and how far the gated outputs are from the dense ones
    Execution,
    /// Forward + path features + detector score (what the server computes per image)
    Screen,
    Fgsm,
    /// PGD-40 with random start
    Pgd,
    /// Fit the path detector on clean vs FGSM / PGD-40 / early-stopped PGD-40 training images
    /// (eps 0.1), score clean and attacked test images (those three plus unseen C&W and
    /// DeepFool on the first 200); writes every image used to --out so a peer detector sees
    /// the same ones
    Detect,
    /// One decoupled-training epoch (noisy gates, all four losses, AdamW) over the first N
    /// training images, from the model's weights
    Train,
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    what: What,
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Test images to run on (the first N after --skip; training images for `train`)
    #[arg(long, default_value_t = 2048)]
    images: usize,
    /// Test images to skip before the N (to split one set of images over several runs)
    #[arg(long, default_value_t = 0)]
    skip: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, default_value_t = 0.1)]
    eps: f64,
    /// Gate gradients of the attacks: hard (the twin's, for a like-for-like comparison) or surrogate
    #[arg(long, default_value = "hard")]
    gates: GateGradient,
    /// The data set (test images; training images for `train` and `detect`) and the device
    #[command(flatten)]
    data: DataArgs,
    /// How `forward` and `screen` run the model
    #[arg(long, value_enum, default_value_t = Execution::Auto)]
    execution: Execution,
    /// Batch sizes `execution` compares
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    batches: Vec<usize>,
    /// Training images for `detect` (the first N)
    #[arg(long, default_value_t = 1000)]
    train_images: usize,
    /// Where `detect` writes the images it used (npy) and its scores
    #[arg(long)]
    out: Option<PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run_bench(args: BenchArgs) -> Result<()> {
    if args.batch == 0 || args.images == 0 || args.repeats == 0 {
        bail!("--batch, --images and --repeats must be at least 1");
    }
    let device = parse_device(&args.data.device)?;
    let meta = Checkpoint::load(&args.model, Device::Cpu)?.meta;
    let all_test = load_split(&args.data, Some(&meta), Split::Test, None)?;
    // `train` runs on the training images (--images of them) and needs one test image only.
    let test_images = if matches!(args.what, What::Train) { 1 } else { args.images };
    if args.skip + test_images > all_test.len() {
        bail!("--skip {} + --images {} exceed the {} test images", args.skip, test_images, all_test.len());
    }
    let test = all_test.slice(args.skip, test_images);
    let n = test.len() as i64;
    let batches = |f: &mut dyn FnMut(&Tensor) -> Result<()>| -> Result<f64> {
        let started = Instant::now();
        for start in (0..n).step_by(args.batch) {
            f(&test.images.narrow(0, start, (args.batch as i64).min(n - start)).to_device(device))?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    };
    let json = match args.what {
        What::Forward => {
            let checkpoint = Checkpoint::load(&args.model, device)?;
            let inference = Inference::new(&checkpoint.model, args.execution)?;
            let rates = (0..args.repeats)
                .map(|_| batches(&mut |x| inference.forward(&checkpoint.model, x).map(|_| ()).map_err(Into::into)))
                .collect::<Result<Vec<_>>>()?;
            serde_json::json!({ "images_per_second": median(rates), "execution": args.execution })
        }
        What::Execution => compare_execution(&args, device, &test)?,
        What::Screen => {
            let screener = Screener::load(&args.model, device)?.with_execution(args.execution)?;
            let rates = (0..args.repeats)
                .map(|_| batches(&mut |x| screener.screen(x).map(|_| ()).map_err(Into::into)))
                .collect::<Result<Vec<_>>>()?;
            serde_json::json!({ "images_per_second": median(rates) })
        }
        What::Train => {
            let train_set = load_split(&args.data, Some(&meta), Split::Train, Some(args.images))?;
            let options = TrainOptions { epochs: 1, batch_size: args.batch, ..TrainOptions::default() };
            let rates = (0..args.repeats)
                .map(|_| {
                    let checkpoint = Checkpoint::load(&args.model, device)?;
                    // The per-epoch test evaluation is not part of the timed figure.
                    let history = train(&checkpoint.vs, &checkpoint.model, &train_set, &test.take(1), &options, 0, |_| Ok(()))?;
                    Ok(history[0].train_images_per_second)
                })
                .collect::<Result<Vec<_>>>()?;
            serde_json::json!({ "images_per_second": median(rates) })
        }
        What::Detect => {
            let Some(out) = &args.out else { bail!("bench detect needs --out DIR for the images it hands to the peer") };
            detect(&args, device, &test, out)?
        }
        What::Fgsm | What::Pgd => {
            let checkpoint = Checkpoint::load(&args.model, device)?;
            let spec = match args.what {
                What::Fgsm => AttackParams::new(AttackName::Fgsm, args.eps),
                _ => AttackParams { steps: Some(40), random_start: true, ..AttackParams::new(AttackName::Pgd, args.eps) },
            }
            .check()?;
            let indices = Tensor::arange(n, (Kind::Int64, Device::Cpu));
            let outcome = run_attack(&checkpoint.model, device, &test, &indices, &spec, args.gates, args.batch, false)?;
            let correct = outcome.clean_predictions.eq_tensor(&outcome.labels);
            let fooled = outcome.predictions.ne_tensor(&outcome.labels).logical_and(&correct);
            serde_json::json!({
                "images_per_second": outcome.stats.images_per_second,
                "success_rate_on_correct": outcome.stats.success_rate_on_correct,
                "correct": correct.sum(Kind::Int64).int64_value(&[]),
                "fooled": fooled.sum(Kind::Int64).int64_value(&[]),
            })
        }
    };
    println!("{json}");
    Ok(())
}

/// Our side of the detection comparison: fits the path detector on the first
/// `--train-images` training images and their attacks, scores the test material, and writes
/// every clean and fooled image it used (train_clean.npy, train_adversarial.npy,
/// test_clean.npy, test_<attack>.npy, flattened rows) plus attacks.json naming the test files.
fn detect(args: &BenchArgs, device: Device, test: &Dataset, out: &Path) -> Result<serde_json::Value> {
    let checkpoint = Checkpoint::load(&args.model, device)?;
    let model = &checkpoint.model;
    let train_set = load_split(&args.data, Some(&checkpoint.meta), Split::Train, Some(args.train_images))?;
    let options = MaterialOptions { gates: args.gates, batch_size: args.batch, show_progress: true, keep_images: true };
    // `evaluate`'s protocol at one eps: FGSM, PGD-40, early-stopped PGD-40 seen; of its unseen
    // attacks the two optimisation ones (C&W, DeepFool), on the first 200 test images.
    let (seen, unseen) = standard_attacks(&[args.eps], 40, 1.5, 200, 0)?;
    let unseen = unseen.into_iter().filter(|p| matches!(p.spec.name(), AttackName::Cw | AttackName::Deepfool));

    let templates = fit_templates(model, device, &train_set, args.batch)?;
    let train_material = AttackMaterial::build(model, device, &train_set, &templates, &seen, &options)?;
    let blocks: Vec<&AttackBlock> = train_material.attacks.iter().collect();
    let train_clean = train_material.clean();
    let detector = PathDetector::new(checkpoint.model_hash(), templates, fit_experts(model, &train_clean, &blocks)?);
    let all: Vec<PlannedAttack> = seen.into_iter().chain(unseen).collect();
    let test_material = AttackMaterial::build(model, device, test, &detector.templates, &all, &options)?;

    let clean_scores = detector.score_representations(&test_material.clean())?;
    let mut results = Vec::new();
    for (i, block) in test_material.attacks.iter().enumerate() {
        let (scores, labels) = labelled_scores(&clean_scores, &detector.score_representations(&block.fooled)?);
        let auroc = detectors::roc_auc(&scores, &labels)?;
        results.push(serde_json::json!({
            "attack": block.name, "file": format!("test_{i}.npy"), "auroc": auroc,
            "clean": clean_scores.len(), "adversarial": block.fooled.len(),
        }));
    }
    let correct_rows = |material: &AttackMaterial, data: &Dataset| -> Result<Array2<f32>> {
        let rows: Vec<i64> = material.correct_rows().into_iter().map(|i| i as i64).collect();
        Ok(flat_rows(&data.images.index_select(0, &Tensor::from_slice(&rows)))?)
    };
    fn kept(b: &AttackBlock) -> ArrayView2<'_, f32> {
        b.images.as_ref().expect("keep_images was set").view()
    }
    let views: Vec<_> = train_material.attacks.iter().map(kept).collect();
    let attacks_json = serde_json::json!({ "train_attacks": train_material.attacks.iter().map(|b| &b.name).collect::<Vec<_>>(), "test": results });
    let files = vec![
        ("train_clean.npy".to_string(), correct_rows(&train_material, &train_set)?),
        ("train_adversarial.npy".to_string(), ndarray::concatenate(Axis(0), &views)?),
        ("test_clean.npy".to_string(), correct_rows(&test_material, test)?),
    ];
    write_dir_atomic(out, |dir| {
        let fail = |name: &str, e: String| pathguard::error::Error::Config(format!("writing {}: {e}", dir.join(name).display()));
        let named_blocks = test_material.attacks.iter().enumerate().map(|(i, b)| (format!("test_{i}.npy"), kept(b)));
        for (name, rows) in files.iter().map(|(n, a)| (n.clone(), a.view())).chain(named_blocks) {
            ndarray_npy::write_npy(dir.join(&name), &rows).map_err(|e| fail(&name, e.to_string()))?;
        }
        std::fs::write(dir.join("attacks.json"), attacks_json.to_string()).map_err(|e| fail("attacks.json", e.to_string()))
    })?;
    Ok(serde_json::json!({ "train_clean": train_clean.len(), "train_adversarial": views.iter().map(|v| v.nrows()).sum::<usize>(), "test": attacks_json["test"] }))
}

/// `bench execution`: the three strategies of [`Inference`] in one process on the same images,
/// alternating round by round so that drifts of the machine's speed hit all of them alike;
/// and, where one image runs on the host (CPU, plain network), the dense pass on the gated
/// pass's host kernels (one pass per input, every filter computed): what skipping filters
/// saves, apart from what the kernels save.
fn compare_execution(args: &BenchArgs, device: Device, test: &Dataset) -> Result<serde_json::Value> {
    use pathguard::model::{ForwardOutput, GatedNetwork};
    let checkpoint = Checkpoint::load(&args.model, device)?;
    let model = &checkpoint.model;
    let inference = Inference::new(model, Execution::Gated)?;
    let host = GatedNetwork::new(model)?;
    let n = test.len() as i64;
    let host_runs = device == Device::Cpu && host.runs_on_host();
    let mut strategies = vec!["dense", "gated_union", "gated_each"];
    if host_runs {
        strategies.push("dense_each_on_host");
    }
    let run = |strategy: &str, batch: usize| -> Result<Vec<ForwardOutput>> {
        (0..n)
            .step_by(batch)
            .map(|start| {
                let x = test.images.narrow(0, start, (batch as i64).min(n - start)).to_device(device);
                Ok(match strategy {
                    "dense" => inference.forward_with(model, &x, Strategy::Dense)?,
                    "gated_union" => inference.forward_with(model, &x, Strategy::GatedUnion)?,
                    "gated_each" => inference.forward_with(model, &x, Strategy::GatedEach)?,
                    _ => host.forward_each_all_filters(&x)?.expect("checked to run on the host"),
                })
            })
            .collect()
    };
    let mut rows = Vec::new();
    for &batch in &args.batches {
        if batch == 0 {
            bail!("--batches must be at least 1");
        }
        let mut seconds = vec![0.0f64; strategies.len()];
        for _ in 0..args.repeats {
            for (k, &strategy) in strategies.iter().enumerate() {
                let started = Instant::now();
                run(strategy, batch)?;
                seconds[k] += started.elapsed().as_secs_f64();
            }
        }
        let rate = |k: usize| (n as usize * args.repeats) as f64 / seconds[k];
        let mut row = serde_json::Map::new();
        row.insert("batch".into(), batch.into());
        for (k, &strategy) in strategies.iter().enumerate() {
            row.insert(strategy.into(), rate(k).into());
        }
        row.insert("union_over_dense".into(), (rate(1) / rate(0)).into());
        row.insert("each_over_dense".into(), (rate(2) / rate(0)).into());
        if host_runs {
            row.insert("each_over_dense_each_on_host".into(), (rate(2) / rate(3)).into());
        }
        let rates: Vec<String> = strategies.iter().enumerate().map(|(k, s)| format!("{s} {:.0}", rate(k))).collect();
        eprintln!("batch {batch}: {} images/s", rates.join(", "));
        rows.push(serde_json::Value::Object(row));
    }
    // Agreement at the largest batch: the union pass is where gates of other inputs matter.
    let batch = args.batches.iter().copied().max().unwrap_or(1);
    let cat = |outs: &[ForwardOutput], pick: &dyn Fn(&ForwardOutput) -> Tensor| Tensor::cat(&outs.iter().map(pick).collect::<Vec<_>>(), 0);
    let dense = run("dense", batch)?;
    let (dense_logits, dense_paths) = (cat(&dense, &|o| o.logits.shallow_clone()), cat(&dense, &|o| o.path()));
    let mut agreement = serde_json::Map::new();
    for &strategy in &strategies[1..] {
        let outs = run(strategy, batch)?;
        let logits = cat(&outs, &|o| o.logits.shallow_clone());
        let paths = cat(&outs, &|o| o.path());
        let differing = paths.ne_tensor(&dense_paths).any_dim(1, false).sum(Kind::Int64).int64_value(&[]);
        agreement.insert(
            strategy.to_string(),
            serde_json::json!({
                "max_abs_logit_difference": (logits - &dense_logits).abs().max().double_value(&[]),
                "inputs_whose_path_differs": differing,
                "inputs": n,
            }),
        );
    }
    Ok(serde_json::json!({ "images": n, "rounds": args.repeats, "rows": rows, "agreement_with_dense": agreement }))
}
