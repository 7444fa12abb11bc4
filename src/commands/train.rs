//! `pathguard train`: train a decoupled CNN, saving a checkpoint after every epoch so that a
//! stopped run continues with `--resume`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pathguard::adversarial_training::{AdversarialMethod, AdversarialOptions};
use pathguard::data::Split;
use pathguard::device::{device_name, parse_device};
use pathguard::model::checkpoint::CONFIG_FILE;
use pathguard::model::{Checkpoint, LossWeights, ModelConfig};
use pathguard::train::{train, EpochMetrics, Recipe, TrainOptions, TrainingRecord};

use super::data_args::{load_split, DataArgs};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Output checkpoint directory
    #[arg(long, default_value = "runs/model")]
    out: PathBuf,
    #[arg(long, default_value_t = TrainOptions::default().epochs)]
    epochs: usize,
    /// Use only the first N training images (quick runs)
    #[arg(long)]
    limit: Option<usize>,
    /// Use only the first N test images for the per-epoch evaluation
    #[arg(long)]
    test_limit: Option<usize>,
    /// joint (gates and weights from scratch) or pretrain (plain CNN first, then decouple)
    #[arg(long, default_value = "joint")]
    recipe: Recipe,
    /// Plain-CNN epochs before decoupling (recipe pretrain)
    #[arg(long, default_value_t = TrainOptions::default().pretrain_epochs)]
    pretrain_epochs: usize,
    #[arg(long, default_value_t = TrainOptions::default().batch_size)]
    batch_size: usize,
    /// Peak learning rate (AdamW, one-cycle schedule)
    #[arg(long, default_value_t = TrainOptions::default().learning_rate)]
    lr: f64,
    #[arg(long, default_value_t = TrainOptions::default().weight_decay)]
    weight_decay: f64,
    /// lambda_m, weight of the mutual-information heads
    #[arg(long, default_value_t = TrainOptions::default().loss.mutual_information)]
    lambda_mi: f64,
    /// lambda_k, weight of the KL alignment
    #[arg(long, default_value_t = TrainOptions::default().loss.alignment)]
    lambda_kl: f64,
    /// lambda_s, weight of the sparsity term
    #[arg(long, default_value_t = TrainOptions::default().loss.sparsity)]
    lambda_sparsity: f64,
    /// Target open fraction of the sparsity term (0 = plain L1)
    #[arg(long, default_value_t = TrainOptions::default().loss.target_density)]
    target_density: f64,
    /// Weight of the group-sparsity term (per filter, the root mean square of its gate over the
    /// batch): concentrates filter use so that whole filters fall idle and compaction removes them
    #[arg(long, default_value_t = 0.0)]
    lambda_group: f64,
    /// Last epochs with noise-free hard gates (counted within --epochs)
    #[arg(long, default_value_t = TrainOptions::default().hard_gate_epochs)]
    hard_gate_epochs: usize,
    /// Disable random horizontal flips
    #[arg(long)]
    no_augment: bool,
    /// Random translation of training images by up to this many pixels (0 = off)
    #[arg(long, default_value_t = TrainOptions::default().max_shift)]
    max_shift: i64,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Architecture preset; its input (channels, side) and classes follow the data set
    #[arg(long, visible_alias = "arch", value_enum, default_value_t = Preset::FashionMnist)]
    preset: Preset,
    /// Override the preset's filter counts, one per conv layer (e.g. 32,32,64,64,128,128)
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<i64>>,
    /// Standardise the input inside the network, per channel, by the training images' mean
    /// and standard deviation (kept in the checkpoint; callers still give [0, 1] pixels)
    #[arg(long, conflicts_with = "init")]
    normalize_input: bool,
    /// Start from this checkpoint's weights (and architecture) instead of a fresh network
    #[arg(long, conflicts_with_all = ["preset", "widths"])]
    init: Option<PathBuf>,
    /// Continue the run saved in --out (a checkpoint is saved after every epoch) if there is
    /// one with the same settings; start afresh if --out holds none
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    adversarial: AdversarialArgs,
}

/// The architectures `train` can build.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Preset {
    /// Six 3x3 conv layers 48-48-96-96-192-192 (the shipped Fashion-MNIST network)
    FashionMnist,
    /// The same layout, 8-16 filters wide (quick tests)
    Tiny,
    /// ResNet-8: a 16-filter stem and three stages (16-32-64) of one basic block whose two
    /// inner convs are gated, parameter-free shortcuts (7 convs, 224 gates)
    Resnet8,
    /// ResNet-20 for 32x32 images (the paper's CIFAR family): three blocks per stage (19 convs, 672 gates)
    Resnet20,
    /// A wider ResNet for 64-224 pixel images: stride-2 stem and pool, stages 32-64-128-256 of two blocks
    WideResnet,
}

/// Adversarial training (off unless --adversarial is given).
#[derive(Args)]
struct AdversarialArgs {
    /// Train on inputs crafted against the model at each step: fgsm-rs, n-fgsm, pgd or trades
    #[arg(long)]
    adversarial: Option<AdversarialMethod>,
    /// L-infinity radius of the crafted inputs, in [0, 1] pixels
    #[arg(long, default_value_t = AdversarialOptions::default().eps)]
    adv_eps: f64,
    /// Steps of pgd and trades
    #[arg(long, default_value_t = AdversarialOptions::default().steps)]
    adv_steps: usize,
    /// Step size of pgd and trades, as a fraction of --adv-eps
    #[arg(long, default_value_t = AdversarialOptions::default().step_fraction)]
    adv_step_fraction: f64,
    /// Weight of the TRADES KL term
    #[arg(long, default_value_t = AdversarialOptions::default().beta)]
    trades_beta: f64,
    /// Epochs over which eps grows linearly from 0 to --adv-eps
    #[arg(long, default_value_t = AdversarialOptions::default().eps_warmup_epochs)]
    adv_eps_warmup_epochs: usize,
    /// Test images of the per-epoch PGD accuracy (0 = skip)
    #[arg(long, default_value_t = AdversarialOptions::default().eval_images)]
    adv_eval_images: usize,
    /// Steps of the per-epoch PGD
    #[arg(long, default_value_t = AdversarialOptions::default().eval_steps)]
    adv_eval_steps: usize,
}

impl AdversarialArgs {
    fn options(&self) -> Option<AdversarialOptions> {
        self.adversarial.map(|method| AdversarialOptions {
            method,
            eps: self.adv_eps,
            steps: self.adv_steps,
            step_fraction: self.adv_step_fraction,
            beta: self.trades_beta,
            eps_warmup_epochs: self.adv_eps_warmup_epochs,
            eval_images: self.adv_eval_images,
            eval_steps: self.adv_eval_steps,
        })
    }
}


pub fn run_train(args: TrainArgs) -> Result<()> {
    let device = parse_device(&args.data.device)?;
    let mut config = match args.preset {
        Preset::FashionMnist => ModelConfig::fashion_mnist(),
        Preset::Tiny => ModelConfig::tiny(),
        Preset::Resnet8 => ModelConfig::resnet8(),
        Preset::Resnet20 => ModelConfig::resnet20(),
        Preset::WideResnet => ModelConfig::wide_resnet(),
    };
    if let Some(widths) = &args.widths {
        config = config.with_widths(widths)?;
    }
    let init = args.init.as_ref().map(|dir| Checkpoint::load(dir, device)).transpose()?;
    let options = TrainOptions {
        epochs: args.epochs,
        recipe: args.recipe,
        pretrain_epochs: args.pretrain_epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        weight_decay: args.weight_decay,
        loss: LossWeights {
            mutual_information: args.lambda_mi,
            alignment: args.lambda_kl,
            sparsity: args.lambda_sparsity,
            target_density: args.target_density,
            group_sparsity: args.lambda_group,
        },
        augment: !args.no_augment,
        hard_gate_epochs: args.hard_gate_epochs,
        max_shift: args.max_shift,
        seed: args.seed,
        adversarial: args.adversarial.options(),
    };
    options.validate()?;
    let init_meta = init.as_ref().map(|c| &c.meta);
    let train_set = load_split(&args.data, init_meta, Split::Train, args.limit)?;
    let test_set = load_split(&args.data, init_meta, Split::Test, args.test_limit)?;
    if test_set.class_names != train_set.class_names {
        anyhow::bail!("the test split names other classes than the training split: {:?} vs {:?}", test_set.class_names, train_set.class_names);
    }
    // A new network takes the data's images and classes.
    let [channels, side, _] = train_set.image_shape();
    config.in_channels = channels;
    config.image_size = side;
    config.num_classes = train_set.num_classes() as i64;
    config.validate()?;
    let resumed = match args.resume && args.out.join(CONFIG_FILE).exists() {
        true => Some(resumable(&args.out, device, &options, train_set.len(), test_set.len())?),
        false => None,
    };
    let (mut checkpoint, mut record) = match resumed {
        Some(found) => found,
        None => {
            let (checkpoint, initialized_from) = match init {
                Some(mut loaded) => {
                    let hash = loaded.model_hash().to_string();
                    loaded.meta.training = None;
                    (loaded, Some(hash))
                }
                None => {
                    let names: Vec<&str> = train_set.class_names.iter().map(String::as_str).collect();
                    config.normalized_input = args.normalize_input;
                    let mut fresh = Checkpoint::new(&config, &names, device)?;
                    fresh.meta.resize = args.data.resize.unwrap_or_default();
                    if args.normalize_input {
                        let (mean, std) = channel_statistics(&train_set.images)?;
                        eprintln!("input standardised per channel: mean {mean:.3?}, std {std:.3?}");
                        fresh.model.set_input_statistics(&mean, &std)?;
                    }
                    (fresh, None)
                }
            };
            let record = TrainingRecord {
                options: options.clone(),
                device: device_name(device),
                train_examples: train_set.len(),
                test_examples: test_set.len(),
                initialized_from,
                epochs: Vec::new(),
                batchnorm_recalibrated: None,
            };
            (checkpoint, record)
        }
    };
    let completed = record.epochs.len();
    if completed == options.epochs {
        eprintln!("{} already holds all {completed} epochs; nothing to do", args.out.display());
        return Ok(());
    }
    eprintln!(
        "training on {} ({} train / {} test images, recipe {:?}, {} epochs{}{})",
        device_name(device),
        train_set.len(),
        test_set.len(),
        options.recipe,
        options.epochs,
        match completed {
            0 => String::new(),
            done => format!(", resuming after epoch {done}"),
        },
        match &options.adversarial {
            Some(a) => format!(", adversarial {} at eps {}", a.method.name(), a.eps),
            None => String::new(),
        }
    );
    // The variables and the network are read by training while the metadata is written after
    // each epoch: borrow them apart.
    let Checkpoint { vs, model, meta } = &mut checkpoint;
    train(vs, model, &train_set, &test_set, &options, completed, |m| {
        print_epoch(m);
        record.epochs.push(m.clone());
        meta.training = Some(record.clone());
        Checkpoint::save_parts(vs, meta, &args.out)
    })?;
    eprintln!("saved {} (weights sha256 {})", args.out.display(), checkpoint.model_hash());
    Ok(())
}

/// The checkpoint in `out` and its training record, if it was saved by a run with the same
/// settings on the same data; an error naming the mismatch otherwise.
fn resumable(out: &std::path::Path, device: tch::Device, options: &TrainOptions, train_examples: usize, test_examples: usize) -> Result<(Checkpoint, TrainingRecord)> {
    let checkpoint = Checkpoint::load(out, device)?;
    let record = checkpoint.meta.training.clone().with_context(|| format!("{} holds no training record to resume", out.display()))?;
    let saved = serde_json::to_value(&record.options)?;
    let asked = serde_json::to_value(options)?;
    if saved != asked {
        anyhow::bail!(
            "cannot resume {}: it was trained with other settings ({saved}); these are {asked}",
            out.display()
        );
    }
    if (record.train_examples, record.test_examples) != (train_examples, test_examples) {
        anyhow::bail!(
            "cannot resume {}: it was trained on {} train / {} test images, not {train_examples} / {test_examples}",
            out.display(),
            record.train_examples,
            record.test_examples
        );
    }
    Ok((checkpoint, record))
}

fn print_epoch(m: &EpochMetrics) {
    let open: Vec<String> = m.test.open_fraction.iter().map(|f| format!("{f:.2}")).collect();
    let robust = match (&m.robust, m.adversarial_eps) {
        (Some(r), eps) => format!(
            " | trained at eps {:.3}; {} test images: clean {:.4}, PGD-{} eps {} {:.4}",
            eps.unwrap_or(r.eps),
            r.images,
            r.clean_accuracy,
            r.steps,
            r.eps,
            r.pgd_accuracy
        ),
        (None, Some(eps)) => format!(" | trained at eps {eps:.3}"),
        (None, None) => String::new(),
    };
    println!(
        "epoch {:>2} [{}] ce {:.4} mi {:.4} kl {:.4} sparsity {:.2} | train acc {:.4} test acc {:.4} | open [{}] mean {:.3} flops {:.3}{robust} | {:.0} s, {:.0} img/s",
        m.epoch, m.phase, m.cross_entropy, m.mutual_information, m.alignment, m.sparsity,
        m.train_accuracy, m.test.accuracy, open.join(" "), m.test.mean_open_fraction,
        m.test.mean_flops_fraction, m.seconds, m.train_images_per_second
    );
}

/// Per-channel mean and standard deviation of `images` `[N, C, H, W]`.
fn channel_statistics(images: &tch::Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
    let dims = [0i64, 2, 3];
    let mean = images.mean_dim(dims.as_slice(), false, tch::Kind::Float);
    let std = images.std_dim(dims.as_slice(), false, false).clamp_min(1e-3);
    Ok((Vec::<f32>::try_from(mean)?, Vec::<f32>::try_from(std)?))
}
