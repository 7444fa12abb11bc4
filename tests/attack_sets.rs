//! Attacks against the shipped model and the attack-set files `pathguard attack` writes.

use std::path::{Path, PathBuf};
use std::process::Command;

use pathguard::attack_set::{run_attack, GateGradient, ATTACK_SET_FILES};
use pathguard::attack_spec::{AttackName, AttackParams};
use pathguard::data::fashion_mnist::{self, default_dir};
use pathguard::data::Split;
use pathguard::model::Checkpoint;
use tch::{Device, Kind, Tensor};

fn shipped() -> Checkpoint {
    Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap()
}

fn first_test_images(n: usize) -> (pathguard::data::Dataset, Tensor) {
    let data = fashion_mnist::load(&default_dir(), Split::Test).unwrap().take(n);
    let indices = Tensor::arange(n as i64, (Kind::Int64, Device::Cpu));
    (data, indices)
}

/// The Python of the torch virtualenv (it has numpy): set by `make test`, else the default place.
pub fn python() -> PathBuf {
    std::env::var_os("PATHGUARD_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").expect("HOME is set");
        PathBuf::from(home).join(".cache/pathguard/venv-torch-2.13.0/bin/python")
    })
}

#[test]
fn pgd_and_apgd_are_at_least_as_successful_as_fgsm_on_the_shipped_model() {
    let checkpoint = shipped();
    let (data, indices) = first_test_images(100);
    let run = |params: AttackParams| {
        run_attack(&checkpoint.model, Device::Cpu, &data, &indices, &params.check().unwrap(), GateGradient::Surrogate, 100, false)
            .unwrap()
            .stats
    };
    let eps = 0.05;
    let fgsm = run(AttackParams::new(AttackName::Fgsm, eps));
    let pgd = run(AttackParams { steps: Some(20), random_start: true, ..AttackParams::new(AttackName::Pgd, eps) });
    assert!(pgd.success_rate >= fgsm.success_rate, "pgd {} < fgsm {}", pgd.success_rate, fgsm.success_rate);
    assert!(pgd.max_linf <= eps + 1e-6 && fgsm.max_linf <= eps + 1e-6);
    assert!(fgsm.success_rate > 0.1, "FGSM at eps 0.05 fooled only {}", fgsm.success_rate);
    // Auto-PGD, both losses, at the same budget and steps.
    for method in [AttackName::ApgdCe, AttackName::ApgdDlr] {
        let apgd = run(AttackParams { steps: Some(20), ..AttackParams::new(method, eps) });
        assert!(apgd.success_rate >= fgsm.success_rate, "{method} {} < fgsm {}", apgd.success_rate, fgsm.success_rate);
        assert!(apgd.max_linf <= eps + 1e-6, "{method} left its ball: {}", apgd.max_linf);
    }
}

#[test]
fn attacks_on_the_shipped_model_are_reproducible_with_a_seed() {
    let checkpoint = shipped();
    let (data, indices) = first_test_images(16);
    let run = |seed| {
        let spec = AttackParams { steps: Some(3), random_start: true, seed, ..AttackParams::new(AttackName::Pgd, 0.1) }.check().unwrap();
        run_attack(&checkpoint.model, Device::Cpu, &data, &indices, &spec, GateGradient::Hard, 8, false)
            .unwrap()
            .adversarial
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn bad_attack_parameters_name_the_problem() {
    let err = AttackParams::new(AttackName::Pgd, -1.0).check().err().unwrap().to_string();
    assert!(err.contains("eps must be") && err.contains("-1"), "{err}");
    let err = AttackParams { steps: Some(0), ..AttackParams::new(AttackName::Bim, 0.1) }.check().err().unwrap().to_string();
    assert!(err.contains("steps must be >= 1"), "{err}");
    let err = "jsma".parse::<AttackName>().err().unwrap().to_string();
    assert!(err.contains("unknown attack method \"jsma\""), "{err}");
    let checkpoint = shipped();
    let (data, indices) = first_test_images(4);
    let targeted = AttackParams { target_class: Some(12), ..AttackParams::new(AttackName::Fgsm, 0.1) }.check().unwrap();
    let err = run_attack(&checkpoint.model, Device::Cpu, &data, &indices, &targeted, GateGradient::Hard, 4, false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("target class 12"), "{err}");
}

fn attack_cli(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["attack", "--device", "cpu", "--model"])
        .arg(crate::default_model_dir())
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn attack_command_writes_a_set_that_numpy_loads_within_budget() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fgsm-set");
    let run = attack_cli(&out, &["--method", "fgsm", "--eps", "0.1", "--split", "test", "--offset", "10", "--limit", "24"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for file in ATTACK_SET_FILES {
        let len = std::fs::metadata(out.join(file)).unwrap().len();
        assert!(len > 0, "{file} is empty");
    }
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["method"], "fgsm");
    assert_eq!(manifest["parameters"]["eps"], 0.1);
    assert_eq!(manifest["model_hash"].as_str().unwrap(), shipped().model_hash());
    assert_eq!(manifest["stats"]["images"], 24);
    for key in ["success_rate", "mean_linf", "max_linf", "mean_l2", "max_l2", "images_per_second", "seconds"] {
        assert!(manifest["stats"][key].is_number(), "manifest lacks stats.{key}");
    }
    let script = r#"
import sys, numpy as np
d = sys.argv[1]
x = np.load(d + "/images.npy"); c = np.load(d + "/clean.npy")
y = np.load(d + "/labels.npy"); i = np.load(d + "/indices.npy"); p = np.load(d + "/predictions.npy")
assert x.dtype == np.float32 and x.shape == (24, 1, 28, 28), (x.dtype, x.shape)
assert c.shape == x.shape and y.shape == (24,) and p.shape == (24,)
assert list(i) == list(range(10, 34)), i
assert x.min() >= 0 and x.max() <= 1
assert np.abs(x - c).max() <= 0.1 + 1e-6, np.abs(x - c).max()
print("ok", float(np.abs(x - c).max()))
"#;
    let py = Command::new(python()).arg("-c").arg(script).arg(&out).output().expect("python runs");
    assert!(py.status.success(), "numpy check failed: {}", String::from_utf8_lossy(&py.stderr));
    // Running again replaces the set as a whole and leaves no temporary directories behind.
    let again = attack_cli(&out, &["--method", "fgsm", "--eps", "0.05", "--limit", "8"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["stats"]["images"], 8);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn attack_command_refuses_bad_parameters_and_keeps_existing_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kept");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("manifest.json"), b"old").unwrap();
    let run = attack_cli(&out, &["--method", "pgd", "--eps", "-0.1"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("eps must be"));
    let run = attack_cli(&out, &["--method", "fgsm", "--offset", "20000", "--split", "test"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("selects no images"));
    let run = attack_cli(&out, &["--method", "pgd", "--lambda", "1"]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("apply to the adaptive attacks"), "{}", String::from_utf8_lossy(&run.stderr));
    let run = attack_cli(&out, &["--method", "selective-pgd", "--norm", "l3"]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("invalid value 'l3' for '--norm"), "{}", String::from_utf8_lossy(&run.stderr));
    let run = attack_cli(&out, &["--method", "pgd", "--decay", "0.5"]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("decay applies to mifgsm, not to pgd"), "{}", String::from_utf8_lossy(&run.stderr));
    let run = attack_cli(&out, &["--method", "lagrangian-pgd", "--lambda", "-2"]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("lambda"), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), b"old");
}

/// `pathguard attack` with a detector-aware method: the manifest records the detector, its
/// threshold, the evasion rate and per-image scores, and those scores are the real detector's.
#[test]
fn adaptive_attack_command_records_the_detectors_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adaptive-set");
    let args = ["--method", "lagrangian-pgd", "--eps", "0.1", "--steps", "20", "--random-start", "--limit", "16"];
    let run = attack_cli(&out, &args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["parameters"]["lambda"], 1.0);
    assert_eq!(manifest["parameters"]["norm"], "linf");
    let detector = &manifest["detector"];
    let screener = pathguard::screener::Screener::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    assert_eq!(detector["threshold"].as_f64().unwrap(), screener.detector.threshold());
    assert_eq!(detector["detector_sha256"].as_str().unwrap().len(), 64);
    let scores: Vec<f64> = detector["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(scores.len(), 16);
    let images = pathguard::attack_set::read_attack_images(&out).unwrap();
    let rescored = screener.screen(&images).unwrap();
    for (s, r) in scores.iter().zip(&rescored) {
        assert!((s - r.score).abs() < 1e-5, "manifest score {s}, screened {}", r.score);
    }
    let evasion = detector["evasion_rate"].as_f64().unwrap();
    assert!(evasion >= 0.5, "lagrangian PGD at eps 0.1 evaded on {evasion} of 16 images");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("evasion (success and not flagged)"), "{stdout}");
}
