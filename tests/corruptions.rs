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
    let images = pathguard::data::image::read_npy_batch(&out.join("images.npy")).unwrap();
    let clean = pathguard::data::image::read_npy_batch(&out.join("clean.npy")).unwrap();
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

#[test]
fn fit_distribution_then_the_verdict_says_which_expert_fired_and_how_far_out_the_image_is() {
    use pathguard::data::fashion_mnist::{default_dir, load};
    use pathguard::data::Split;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for file in ["config.json", "model.safetensors", "detector.json"] {
        std::fs::copy(crate::default_model_dir().join(file), model.join(file)).unwrap();
    }
    // Without distribution.json: no distances, but the experts' scores.
    let test = load(&default_dir(), Split::Test).unwrap().take(200);
    let without = Screener::load(&model, Device::Cpu).unwrap().screen(&test.images.narrow(0, 0, 4)).unwrap();
    assert!(without.iter().all(|s| s.distribution.is_none() && s.expert_scores.len() == 2));

    let fit = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["fit-distribution", "--device", "cpu", "--limit", "3000", "--held-out", "1000", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(fit.status.success(), "{}", String::from_utf8_lossy(&fit.stderr));
    let screener = Screener::load(&model, Device::Cpu).unwrap();
    let threshold = screener.detector.threshold();
    let clean = screener.screen(&test.images).unwrap();
    // Brightness +0.3 on every pixel: the background lifts, far from any training image.
    let bright = pathguard::corruptions::find("brightness").unwrap().apply(&test.images, 5, 0).unwrap();
    let bright = screener.screen(&bright).unwrap();
    let mean_percentile =
        |v: &[pathguard::screener::Screened]| v.iter().map(|s| s.distribution.unwrap().percentile).sum::<f64>() / v.len() as f64;
    for s in clean.iter().chain(&bright) {
        // The score is the noisy-OR of the experts' scores; an expert that fires alone flags.
        let keep: f64 = s.expert_scores.iter().map(|e| 1.0 - e).product();
        assert!((s.score - (1.0 - keep)).abs() < 1e-12, "{} vs {:?}", s.score, s.expert_scores);
        if s.expert_scores.iter().any(|&e| e >= threshold) {
            assert!(s.score >= threshold);
        }
        let d = s.distribution.unwrap();
        assert!((0.0..=1.0).contains(&d.percentile) && d.distance >= 0.0, "{d:?}");
    }
    // Clean test images sit inside the training distribution, the brightened ones outside it.
    let (clean_p, bright_p) = (mean_percentile(&clean), mean_percentile(&bright));
    assert!((0.2..0.8).contains(&clean_p), "clean test images: mean percentile {clean_p}");
    assert!(bright_p > 0.9, "brightness +0.3: mean percentile {bright_p} (clean {clean_p})");
    // The file belongs to its model: another model's distribution is refused by name.
    let json = std::fs::read_to_string(model.join("distribution.json")).unwrap();
    let hash = screener.checkpoint.model_hash().to_string();
    std::fs::write(model.join("distribution.json"), json.replace(&hash, "0000")).unwrap();
    let refused = Screener::load(&model, Device::Cpu).unwrap_err().to_string();
    assert!(refused.contains("distribution.json") && refused.contains("fit-distribution"), "{refused}");
}
