//! The shipped default model meets the foundation issue's bar on the real test split.

use pathguard::data::fashion_mnist::{self, default_dir};
use pathguard::data::Split;
use pathguard::model::{Checkpoint, Execution};
use pathguard::train::evaluate;
use tch::{Device, Kind};

#[test]
fn shipped_model_reaches_93_percent_with_sparse_class_dependent_paths() {
    let checkpoint = Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let test = fashion_mnist::load(&default_dir(), Split::Test).unwrap();
    let report = evaluate(&checkpoint.model, &test, Device::Cpu, 500, false, Execution::Auto).unwrap();
    assert_eq!(report.examples, 10_000);
    assert!(report.accuracy >= 0.93, "test accuracy {}", report.accuracy);
    assert!(report.mean_open_fraction <= 0.6, "mean open fraction {}", report.mean_open_fraction);
    // Not stuck closed either: every layer keeps some filters open.
    assert!(report.open_fraction.iter().all(|&f| f > 0.02), "{:?}", report.open_fraction);
    // Paths differ between classes: every pair of class templates differs in some bits.
    assert!(report.template_hamming_min >= 1.0, "min template distance {}", report.template_hamming_min);
    assert!(report.mean_flops_fraction < 1.0);
}

#[test]
fn shipped_model_paths_depend_on_the_input() {
    let checkpoint = Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let test = fashion_mnist::load(&default_dir(), Split::Test).unwrap().take(1000);
    let (_, path) = checkpoint.model.predict(&test.images).unwrap();
    // Fraction of gates that are open for some inputs and closed for others.
    let frequency = path.mean_dim([0i64].as_slice(), false, Kind::Float);
    let varying = frequency.gt(0.0).logical_and(&frequency.lt(1.0)).to_kind(Kind::Float).mean(Kind::Float);
    assert!(varying.double_value(&[]) > 0.2, "only {} of gates vary", varying.double_value(&[]));
}

#[test]
fn shipped_model_records_how_it_was_made() {
    let checkpoint = Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let training = checkpoint.meta.training.as_ref().expect("training record in config.json");
    assert_eq!(training.train_examples, 60_000);
    assert!(!training.epochs.is_empty());
    assert_eq!(checkpoint.meta.class_names, fashion_mnist::CLASS_NAMES);
}

/// models/robust: the adversarially trained model, with a detector fitted to it, loads as a
/// screener and says how it was trained.
#[test]
fn the_robust_models_ship_with_their_detectors_and_training_records() {
    // models/robust-seed1: the same recipe with --seed 1 (README's seed-to-seed comparison).
    for name in ["models/robust", "models/robust-seed1"] {
        check_robust_model(&crate::repo_root().join(name));
    }
}

fn check_robust_model(dir: &std::path::Path) {
    let screener = pathguard::screener::Screener::load(dir, Device::Cpu).unwrap();
    let training = screener.checkpoint.meta.training.as_ref().expect("training record");
    assert_eq!(training.initialized_from.as_deref(), Some(Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap().model_hash()));
    let summary = training.summary();
    assert!(summary.starts_with("adversarial training (n-fgsm at L-inf eps 0.1)"), "{summary}");
    let test = fashion_mnist::load(&default_dir(), Split::Test).unwrap().take(500);
    let report = evaluate(&screener.checkpoint.model, &test, Device::Cpu, 500, false, Execution::Auto).unwrap();
    assert!(report.accuracy > 0.8 && report.mean_open_fraction <= 0.6, "{} / {}", report.accuracy, report.mean_open_fraction);
    assert!(dir.join("training-logs/train.log").is_file());
}
