//! `pathguard attack`: an attack set (adversarial images of a data slice as NPY files,
//! manifest.json with the detector's verdicts, preview.png).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pathguard::attack_set::{run_attack, run_attack_until, write_attack_set, GateGradient, Manifest, ATTACK_SET_FILES};
use pathguard::attack_spec::{AttackName, AttackParams, Norm};
use pathguard::detector::{PathDetector, DETECTOR_FILE};
use pathguard::device::parse_device;
use pathguard::model::Checkpoint;

use super::data_args::{load_slice, DataArgs, SliceArgs};

#[derive(Args)]
pub struct AttackArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Checkpoint directory
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    /// The attack; the *-pgd methods other than pgd-l2 attack the detector too
    #[arg(long)]
    method: AttackName,
    /// Perturbation budget (L-infinity; L2 for pgd-l2; unused by cw and deepfool)
    #[arg(long, default_value_t = 0.1)]
    eps: f64,
    /// Iterations [default: fgsm 1, bim/mifgsm 10, pgd 40, apgd and adaptive 100, cw 100, deepfool 50]
    #[arg(long)]
    steps: Option<usize>,
    /// Step size [default: 2.5 eps/steps for pgd, eps/steps for bim and mifgsm]
    #[arg(long)]
    step_size: Option<f64>,
    /// Start from a random point in the ball (pgd, pgd-l2, bim, mifgsm)
    #[arg(long)]
    random_start: bool,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Targeted attack towards this class (not deepfool)
    #[arg(long)]
    target_class: Option<i64>,
    /// MI-FGSM momentum decay [default: 1.0]
    #[arg(long)]
    decay: Option<f64>,
    /// C&W confidence kappa [default: 0]
    #[arg(long)]
    confidence: Option<f64>,
    /// C&W initial constant c [default: 1]
    #[arg(long)]
    initial_const: Option<f64>,
    /// C&W Adam learning rate [default: 0.01]
    #[arg(long)]
    cw_lr: Option<f64>,
    /// C&W binary-search steps on c [default: 3]
    #[arg(long)]
    search_steps: Option<usize>,
    /// DeepFool overshoot [default: 0.02]
    #[arg(long)]
    overshoot: Option<f64>,
    /// bim, pgd, pgd-l2, mifgsm: stop each image at its first success (minimal,
    /// low-confidence adversarial examples)
    #[arg(long)]
    early_stop: bool,
    /// The detector the adaptive methods attack and whose verdicts the manifest records
    /// [default: the model's detector.json, when it has one]
    #[arg(long)]
    detector: Option<PathBuf>,
    /// lagrangian-pgd: weight of the detector's loss; path-matching-pgd: weight of the path
    /// distance [default: 1]
    #[arg(long)]
    lambda: Option<f64>,
    /// Adaptive methods and apgd: random restarts, keeping per image the best [default: 1]
    #[arg(long)]
    restarts: Option<usize>,
    /// Adaptive methods: the budget's norm [default: linf]
    #[arg(long)]
    norm: Option<Norm>,
    /// The images to attack
    #[command(flatten)]
    slice: SliceArgs,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Gradient through the hard gates: surrogate (sigmoid, straight-through) or hard (zero)
    #[arg(long, default_value = "surrogate")]
    gates: GateGradient,
    /// Also run the attack with the other gate gradient and record its success rate
    #[arg(long)]
    compare_gates: bool,
    /// Output directory (replaced atomically)
    #[arg(long)]
    out: PathBuf,
}



pub fn run_attack_command(args: AttackArgs) -> Result<()> {
    let device = parse_device(&args.data.device)?;
    let spec = AttackParams {
        steps: args.steps,
        step_size: args.step_size,
        random_start: args.random_start,
        seed: args.seed,
        target_class: args.target_class,
        decay: args.decay,
        confidence: args.confidence,
        initial_const: args.initial_const,
        learning_rate: args.cw_lr,
        search_steps: args.search_steps,
        overshoot: args.overshoot,
        early_stop: args.early_stop,
        lambda: args.lambda,
        restarts: args.restarts,
        norm: args.norm,
        ..AttackParams::new(args.method, args.eps)
    }
    .check()?; // before loading anything
    let checkpoint = Checkpoint::load(&args.model, device)?;
    let shipped = args.model.join(DETECTOR_FILE);
    let detector = match &args.detector {
        Some(path) => Some(PathDetector::load(path, checkpoint.model_hash())?),
        None if shipped.exists() => Some(PathDetector::load(&shipped, checkpoint.model_hash())?),
        None if spec.is_adaptive() => {
            anyhow::bail!("{} attacks the detector too, and {} has none: give one with --detector", spec.name(), args.model.display())
        }
        None => None,
    };
    let (data, indices) = load_slice(&args.data, &checkpoint.meta, &args.slice)?;
    let outcome = run_attack_until(
        &checkpoint.model,
        detector.as_ref(),
        device,
        &data,
        &indices,
        &spec,
        args.gates,
        args.batch_size,
        true,
        &|| false,
    )?;
    let other_gate_gradient = if args.compare_gates {
        let other = match args.gates {
            GateGradient::Hard => GateGradient::Surrogate,
            GateGradient::Surrogate => GateGradient::Hard,
        };
        let o = run_attack(&checkpoint.model, device, &data, &indices, &spec, other, args.batch_size, true)?;
        Some((other, o.stats))
    } else {
        None
    };
    let s = &outcome.stats;
    let manifest = Manifest {
        format: "pathguard-attack-set-v1".into(),
        pathguard_version: env!("CARGO_PKG_VERSION").into(),
        method: spec.name().as_str().into(),
        parameters: spec,
        gate_gradient: args.gates,
        other_gate_gradient: other_gate_gradient.clone(),
        model_dir: args.model.clone(),
        model_hash: checkpoint.model_hash().into(),
        split: args.slice.split.name().into(),
        offset: args.slice.offset,
        stats: s.clone(),
        detector: outcome.detector.clone(),
        class_names: checkpoint.meta.class_names.clone(),
        pixel_convention: checkpoint.input_spec().stored_as(),
        files: ATTACK_SET_FILES.iter().map(|f| f.to_string()).collect(),
    };
    write_attack_set(&args.out, &outcome, &manifest, &checkpoint.meta.class_names)?;
    println!(
        "{} on {} images: clean accuracy {:.4}, adversarial accuracy {:.4}, success {:.4} ({:.4} of correctly classified), Linf mean {:.4} max {:.4}, L2 mean {:.4}, {:.1} images/s",
        spec.name(), s.images, s.clean_accuracy, s.adversarial_accuracy, s.success_rate, s.success_rate_on_correct, s.mean_linf, s.max_linf, s.mean_l2, s.images_per_second
    );
    if let Some(d) = &outcome.detector {
        println!(
            "detector (threshold {:.4}): {:.4} of the adversarial images flagged; evasion (success and not flagged) {:.4}",
            d.threshold, d.flagged_rate, d.evasion_rate
        );
    }
    if let Some((mode, o)) = &other_gate_gradient {
        println!("with {mode:?} gate gradients: success {:.4} ({:.4} of correctly classified)", o.success_rate, o.success_rate_on_correct);
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
