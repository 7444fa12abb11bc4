//! `pathguard adaptive-report` on a small slice: the files, and the best of all attacks being
//! at least as good as each of them (oblivious PGD and Auto-PGD included) on every budget.

use std::process::Command;

#[test]
fn adaptive_report_takes_the_best_attack_per_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adaptive");
    let run = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["adaptive-report", "--device", "cpu", "--model"])
        .arg(crate::default_model_dir())
        .args(["--limit", "24", "--reference-images", "300", "--steps", "8", "--eps", "0.02,0.1", "--l2-eps", "1.0"])
        .args(["--lambdas", "1", "--restarts", "1", "--targets", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for file in pathguard::evaluation::adaptive::ADAPTIVE_REPORT_FILES {
        assert!(std::fs::metadata(out.join(file)).unwrap().len() > 0, "{file} is empty");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let budgets = report["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 3, "two L-inf budgets and one L2");
    for b in budgets {
        let results = b["results"].as_array().unwrap();
        let sr = |r: &serde_json::Value| r["sr_at_5"].as_f64().unwrap();
        let best = results.iter().find(|r| r["attack"] == "best adaptive").expect("a best row");
        // Auto-PGD runs in the L-infinity ball only.
        let names: Vec<&str> = results.iter().map(|r| r["attack"].as_str().unwrap()).collect();
        let apgd = ["apgd-ce (oblivious)", "apgd-dlr (oblivious)", "extra-class-apgd"];
        let linf = b["norm"] == "linf";
        assert!(apgd.iter().all(|a| names.contains(a) == linf), "{} eps {}: {names:?}", b["norm"], b["eps"]);
        // Every row counts, the oblivious ones too.
        for r in results {
            assert!(sr(best) >= sr(r), "{} eps {}: best {} < {} {}", b["norm"], b["eps"], sr(best), r["attack"], sr(r));
            let eps = b["eps"].as_f64().unwrap();
            assert!(r["max_norm"].as_f64().unwrap() <= eps + 1e-4, "{} exceeds its budget", r["attack"]);
            assert!((r["robust_detection_accuracy"].as_f64().unwrap() + sr(r) - 1.0).abs() < 1e-9);
        }
        // The model alone is right at most where some attack failed to misclassify: never more
        // often than 1 - the misclassification rate of any single attack.
        let alone = b["model_alone_accuracy"].as_f64().unwrap();
        for r in results {
            assert!(alone <= 1.0 - r["misclassified"].as_f64().unwrap() + 1e-9, "{} eps {}: alone {alone} vs {}", b["norm"], b["eps"], r["attack"]);
        }
    }
    let sanity = report["sanity"].as_array().unwrap();
    assert_eq!(sanity.len(), 4);
    let twin = sanity.iter().find(|c| c["check"].as_str().unwrap().contains("twin")).unwrap();
    assert_eq!(twin["holds"], true, "{twin}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Sanity checks") && md.contains("best adaptive") && md.contains("model alone"), "{md}");
}
