//! `pathguard corrupt` and `pathguard corruption-report` on the shipped model.

use std::path::Path;
use std::process::Command;

use pathguard::corruption_set::CORRUPTION_SET_FILES;
use pathguard::screener::Screener;
use tch::Device;

fn pathguard(args: &[&str], out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(args)
        .args(["--device", "cpu", "--model"])
        .arg(crate::default_model_dir())
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn corrupt_writes_a_set_whose_verdicts_are_the_screeners() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("jpeg");
    let run = pathguard(&["corrupt", "--corruption", "jpeg", "--severity", "3", "--offset", "5", "--limit", "20"], &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for file in CORRUPTION_SET_FILES {
        assert!(std::fs::metadata(out.join(file)).unwrap().len() > 0, "{file} is empty");
    }
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["corruption"], "jpeg");
    assert_eq!(manifest["level"], 50.0);
    assert_eq!(manifest["images"], 20);
    let screener = Screener::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let images = pathguard::data::image::read_npy(&out.join("images.npy")).unwrap();
    let clean = pathguard::data::image::read_npy(&out.join("clean.npy")).unwrap();
    // JPEG at quality 50 changes pixels, but not beyond recognition.
    let change = (&images - &clean).abs().mean(tch::Kind::Float).double_value(&[]);
    assert!(change > 0.002 && change < 0.1, "mean change {change}");
    let screened = screener.screen(&images).unwrap();
    let scores: Vec<f64> = manifest["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (s, r) in scores.iter().zip(&screened) {
        assert!((s - r.score).abs() < 1e-6, "manifest {s}, screened {}", r.score);
    }
    let script = r#"
import sys, numpy as np
d = sys.argv[1]
x = np.load(d + "/images.npy"); i = np.load(d + "/indices.npy")
assert x.dtype == np.float32 and x.shape == (20, 1, 28, 28), (x.dtype, x.shape)
assert list(i) == list(range(5, 25)), i
"#;
    let py = Command::new(crate::attack_sets::python()).arg("-c").arg(script).arg(&out).output().unwrap();
    assert!(py.status.success(), "numpy check failed: {}", String::from_utf8_lossy(&py.stderr));
}

#[test]
fn corrupt_refuses_unknown_corruptions_and_severities_and_keeps_existing_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kept");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("manifest.json"), b"old").unwrap();
    let run = pathguard(&["corrupt", "--corruption", "fog"], &out);
    assert!(String::from_utf8_lossy(&run.stderr).contains("unknown corruption \"fog\""));
    let run = pathguard(&["corrupt", "--corruption", "rotate", "--severity", "6"], &out);
    assert!(String::from_utf8_lossy(&run.stderr).contains("severities 1 to 5"));
    assert!(!run.status.success());
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), b"old");
}

#[test]
fn corruption_report_covers_every_corruption_and_severity() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let run = pathguard(&["corruption-report", "--limit", "40", "--slow-limit", "0", "--pgd-steps", "5"], &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for file in pathguard::evaluation::corruptions::CORRUPTION_REPORT_FILES {
        assert!(std::fs::metadata(out.join(file)).unwrap().len() > 0, "{file} is empty");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let expected: usize = pathguard::corruptions::CORRUPTIONS.iter().map(|c| c.levels.len()).sum();
    assert_eq!(rows.len(), expected);
    for r in rows {
        let rate = r["verdicts"]["flag_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rate));
    }
    assert!(!report["separation"].as_array().unwrap().is_empty());
}
