//! Fitting the path-statistics detector on the shipped model (a small, fast configuration).

use std::process::Command;

use pathguard::detector::PathDetector;
use pathguard::model::Checkpoint;
use tch::Device;

#[test]
fn fit_detector_writes_a_detector_that_loads_and_beats_chance() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("detector.json");
    let run = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["fit-detector", "--device", "cpu", "--limit", "300", "--methods", "fgsm,pgd,pgd-early-stop", "--eps", "0.1"])
        .args(["--pgd-steps", "5", "--model"])
        .arg(crate::default_model_dir())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let checkpoint = Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let detector = PathDetector::load(&out, checkpoint.model_hash()).unwrap();
    let record = detector.record.as_ref().unwrap();
    assert_eq!(record.attacks, vec!["fgsm eps 0.1", "pgd eps 0.1 (5 steps)", "pgd eps 0.1 (5 steps, early stop)"]);
    assert!(record.clean_rows > 100 && record.adversarial_rows > 100, "{record:?}");
    assert!(record.validation.auroc > 0.6, "validation AUROC {}", record.validation.auroc);
    assert!((0.0..=1.0).contains(&detector.threshold()));
    // Two experts: gate logits (full-strength attacks) and path statistics (early-stopped PGD).
    assert_eq!(detector.experts.len(), 2);
    assert_eq!(detector.experts[0].features.len(), 624);
    assert_eq!(detector.experts[0].attacks, vec!["fgsm eps 0.1", "pgd eps 0.1 (5 steps)"]);
    assert_eq!(detector.experts[1].features.len(), 33);
    assert_eq!(detector.experts[1].attacks, vec!["pgd eps 0.1 (5 steps, early stop)"]);

    // Scores of a real forward pass are in [0, 1].
    let test = pathguard::data::fashion_mnist::load(&pathguard::data::fashion_mnist::default_dir(), pathguard::data::Split::Test)
        .unwrap()
        .take(16);
    let out_pass = tch::no_grad(|| checkpoint.model.forward_with_path(&test.images, pathguard::model::GateMode::Eval));
    let scores = detector.score(&out_pass).unwrap();
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));

    // A detector refuses a model it was not fitted on.
    let err = PathDetector::load(&out, &"0".repeat(64)).unwrap_err().to_string();
    assert!(err.contains("fitted on model") && err.contains("fit-detector"), "{err}");
    std::fs::write(&out, b"{ not json").unwrap();
    assert!(PathDetector::load(&out, checkpoint.model_hash()).unwrap_err().to_string().contains("not a valid detector file"));
}
