//! `pathguard train` as a long run is used: adversarial training records its settings and
//! per-epoch PGD accuracy, every epoch is saved, and `--resume` continues a stopped run (and
//! refuses one trained with other settings).

use std::path::Path;
use std::process::{Command, Output};

fn train(out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["train", "--preset", "tiny", "--limit", "256", "--test-limit", "100", "--device", "cpu"])
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn config(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap()
}

const ADVERSARIAL: [&str; 10] =
    ["--adversarial", "pgd", "--adv-eps", "0.1", "--adv-steps", "2", "--adv-eval-images", "60", "--adv-eval-steps", "3"];

#[test]
fn adversarial_training_records_its_settings_and_pgd_accuracy_per_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adversarial");
    let run = train(&out, &[&["--epochs", "2", "--adv-eps-warmup-epochs", "1"][..], &ADVERSARIAL].concat());
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("PGD-3 eps 0.1"), "no per-epoch PGD accuracy in:\n{stdout}");
    let record = &config(&out)["training"];
    let adversarial = &record["options"]["adversarial"];
    assert_eq!(adversarial["method"], "pgd");
    assert_eq!(adversarial["eps"], 0.1);
    let epochs = record["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    for epoch in epochs {
        let robust = &epoch["robust"];
        assert_eq!(robust["images"], 60);
        for key in ["clean_accuracy", "pgd_accuracy"] {
            let value = robust[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&value), "{key} = {value}");
        }
        // PGD never helps the model.
        assert!(robust["pgd_accuracy"].as_f64().unwrap() <= robust["clean_accuracy"].as_f64().unwrap() + 1e-9);
    }
    // The eps ramp: the first epoch ends at full eps (warm-up of one epoch), both report it.
    assert!((epochs[0]["adversarial_eps"].as_f64().unwrap() - 0.1).abs() < 1e-9);
}

#[test]
fn resume_continues_a_stopped_run_and_refuses_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // A run stopped after its first epoch: train one epoch of a two-epoch run by training the
    // full run and dropping the last epoch from its record (the weights are a valid state).
    let first = train(&out, &["--epochs", "2", "--resume"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let mut meta = config(&out);
    meta["training"]["epochs"].as_array_mut().unwrap().pop();
    std::fs::write(out.join("config.json"), serde_json::to_vec_pretty(&meta).unwrap()).unwrap();

    let resumed = train(&out, &["--epochs", "2", "--resume"]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resuming after epoch 1"));
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(stdout.contains("epoch  2") && !stdout.contains("epoch  1"), "{stdout}");
    let record = &config(&out)["training"];
    let numbers: Vec<u64> = record["epochs"].as_array().unwrap().iter().map(|e| e["epoch"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 2]);

    // A finished run is left alone.
    let hash = config(&out)["weights_sha256"].clone();
    let again = train(&out, &["--epochs", "2", "--resume"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to do"));
    assert_eq!(config(&out)["weights_sha256"], hash);

    // Other settings are refused, naming the run, and the checkpoint is untouched.
    let other = train(&out, &["--epochs", "2", "--resume", "--lr", "0.01"]);
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(stderr.contains("cannot resume") && stderr.contains("other settings"), "{stderr}");
    assert_eq!(config(&out)["weights_sha256"], hash);
}

#[test]
fn adversarial_settings_out_of_range_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = train(&dir.path().join("bad"), &["--epochs", "1", "--adversarial", "fgsm-rs", "--adv-eps", "1.5"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("adversarial eps must be in (0, 1]"));
    let unknown = train(&dir.path().join("bad"), &["--epochs", "1", "--adversarial", "free"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("fgsm-rs"));
}
