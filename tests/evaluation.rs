//! The shipped detector's bar, and `pathguard evaluate` end to end on a small slice.

use std::process::Command;

use pathguard::attack_set::{run_attack, GateGradient};
use pathguard::attack_spec::{AttackName, AttackParams};
use pathguard::data::fashion_mnist::{self, default_dir};
use pathguard::data::Split;
use pathguard::detector::{PathDetector, DETECTOR_FILE};
use pathguard::model::{Checkpoint, GateMode};
use tch::{Device, Kind, Tensor};

#[test]
fn shipped_detector_separates_clean_from_pgd_test_images() {
    let checkpoint = Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let detector = PathDetector::load(&crate::default_model_dir().join(DETECTOR_FILE), checkpoint.model_hash()).unwrap();
    let test = fashion_mnist::load(&default_dir(), Split::Test).unwrap().take(300);
    let indices = Tensor::arange(300, (Kind::Int64, Device::Cpu));
    let params = AttackParams { random_start: true, ..AttackParams::new(AttackName::Pgd, 0.1) }.check().unwrap();
    let outcome = run_attack(&checkpoint.model, Device::Cpu, &test, &indices, &params, GateGradient::Surrogate, 150, false).unwrap();
    let score = |images: &Tensor| {
        let out = tch::no_grad(|| checkpoint.model.forward_with_path(images, GateMode::Eval));
        detector.score(&out).unwrap().to_vec()
    };
    let clean = score(&test.images);
    let adversarial = score(&outcome.adversarial);
    let scores: Vec<f64> = clean.iter().chain(&adversarial).copied().collect();
    let labels: Vec<bool> = (0..600).map(|i| i >= 300).collect();
    let auroc = detectors::roc_auc(&scores, &labels).unwrap();
    assert!(auroc >= 0.95, "AUROC {auroc} on 300 clean + 300 PGD(eps 0.1) test images");
    // At the shipped threshold most clean images pass.
    let false_positives = clean.iter().filter(|&&s| s >= detector.threshold).count();
    assert!(false_positives <= 45, "{false_positives} of 300 clean images flagged");
}

#[test]
fn evaluate_writes_the_report_with_every_detector_and_the_cross_attack_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let run = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["evaluate", "--device", "cpu", "--limit", "80", "--train-limit", "160", "--slow-limit", "12"])
        .args(["--eps", "0.1", "--pgd-steps", "5", "--corruption-limit", "30", "--model"])
        .arg(crate::default_model_dir())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // The benign-corruption table beside it: every corruption and severity, and the reasons.
    let corruptions: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("corruptions/report.json")).unwrap()).unwrap();
    let expected: usize = pathguard::corruptions::CORRUPTIONS.iter().map(|c| c.levels.len()).sum();
    assert_eq!(corruptions["rows"].as_array().unwrap().len(), expected);
    assert_eq!(corruptions["images"], 30);
    assert!(corruptions["reasons"].as_array().unwrap().len() >= 4, "{}", corruptions["reasons"]);
    for file in pathguard::evaluation::REPORT_FILES {
        assert!(std::fs::metadata(out.join(file)).unwrap().len() > 200, "{file}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let detectors: Vec<&str> = report["detectors"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    for name in ["path detector (ours)", "shipped detector.json (ours)", "raw activations + logistic", "Mahalanobis", "LID", "max-softmax"] {
        assert!(detectors.contains(&name), "{name} missing from {detectors:?}");
    }
    let attacks: Vec<&str> = report["attacks"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    for prefix in ["fgsm", "pgd eps 0.1 (5 steps)", "pgd eps 0.1 (5 steps, early stop)", "bim", "mifgsm", "pgd-l2", "cw", "deepfool"] {
        assert!(attacks.iter().any(|a| a.starts_with(prefix)), "{prefix} missing from {attacks:?}");
    }
    for result in report["results"].as_array().unwrap() {
        let auroc = result["auroc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc), "{result}");
    }
    let cross = report["cross_attack"].as_array().unwrap();
    assert!(cross.iter().any(|c| c["fitted_on"] == "FGSM only") && cross.iter().any(|c| c["fitted_on"] == "PGD only"));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| attack |") && md.contains("Cross-attack"), "{md}");
}
