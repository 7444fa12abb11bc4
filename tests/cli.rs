//! The `pathguard` binary end to end: train a tiny model, evaluate it, and bad input.

use std::process::Command;

fn pathguard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pathguard"))
}

#[test]
fn train_then_eval_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    let run = pathguard()
        .args(["train", "--preset", "tiny", "--limit", "512", "--test-limit", "256", "--epochs", "2", "--lambda-group", "0.1"])
        .args(["--device", "cpu", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    // One line per epoch with every loss term, accuracies and the open fraction per layer.
    for word in ["epoch  1", "epoch  2", "ce ", "mi ", "kl ", "sparsity ", "train acc", "test acc", "open ["] {
        assert!(stdout.contains(word), "missing {word:?} in:\n{stdout}");
    }
    // The group-sparsity weight is part of the training record.
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["training"]["options"]["loss"]["group_sparsity"], 0.1);
    let eval = pathguard()
        .args(["eval", "--device", "cpu", "--limit", "300", "--json", "--model"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let json: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let report = &json["report"];
    assert_eq!(report["examples"], 300);
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    assert_eq!(report["open_fraction"].as_array().unwrap().len(), 5);
    let flops = report["mean_flops_fraction"].as_f64().unwrap();
    assert!(flops > 0.0 && flops <= 1.0);
    assert_eq!(json["model_hash"].as_str().unwrap().len(), 64);
}

#[test]
fn eval_of_the_shipped_model_prints_json() {
    let eval = pathguard()
        .args(["eval", "--device", "cpu", "--limit", "500", "--json", "--model"])
        .arg(crate::default_model_dir())
        .output()
        .unwrap();
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let json: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert!(json["report"]["accuracy"].as_f64().unwrap() > 0.85);
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let missing = pathguard().args(["eval", "--model", "/nonexistent/model"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such model directory"));

    let bad_weight = pathguard()
        .args(["train", "--preset", "tiny", "--limit", "64", "--epochs", "1", "--target-density", "2"])
        .output()
        .unwrap();
    assert!(!bad_weight.status.success());
    assert!(String::from_utf8_lossy(&bad_weight.stderr).contains("target_density"));

    let bad_device = pathguard().args(["eval", "--device", "tpu"]).output().unwrap();
    assert!(String::from_utf8_lossy(&bad_device.stderr).contains("unknown device"));
}
