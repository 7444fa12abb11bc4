//! `pathguard bench`, our side of bench/compare.sh: the detection run hands the peer exactly
//! the images it fitted and scored on, and the training run trains.

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let run = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .arg("bench")
        .args(args)
        .arg("--model")
        .arg(crate::default_model_dir())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_slice(&run.stdout).unwrap()
}

fn rows(path: &std::path::Path) -> ndarray::Array2<f32> {
    ndarray_npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn bench_detect_writes_the_images_it_fitted_and_scored() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("images");
    let json = bench(&["detect", "--train-images", "100", "--images", "40", "--out", out.to_str().unwrap()]);

    let train_clean = rows(&out.join("train_clean.npy"));
    let train_adversarial = rows(&out.join("train_adversarial.npy"));
    assert_eq!(train_clean.nrows() as u64, json["train_clean"].as_u64().unwrap());
    assert_eq!(train_adversarial.nrows() as u64, json["train_adversarial"].as_u64().unwrap());
    assert!(train_clean.nrows() > 80 && train_adversarial.nrows() > train_clean.nrows(), "three attacks on ~90 correct images");
    assert_eq!(train_clean.ncols(), 784);
    let test_clean = rows(&out.join("test_clean.npy"));
    let tests = json["test"].as_array().unwrap();
    assert_eq!(tests.len(), 5, "FGSM, PGD, early-stopped PGD, C&W, DeepFool");
    for attack in tests {
        let fooled = rows(&out.join(attack["file"].as_str().unwrap()));
        assert_eq!(fooled.nrows() as u64, attack["adversarial"].as_u64().unwrap(), "{attack}");
        assert_eq!(test_clean.nrows() as u64, attack["clean"].as_u64().unwrap());
        assert!(fooled.iter().all(|v| (0.0..=1.0).contains(v)), "pixels outside [0, 1] in {attack}");
        let auroc = attack["auroc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc), "{attack}");
    }
    // The manifest the peer reads names the same files and attacks.
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("attacks.json")).unwrap()).unwrap();
    assert_eq!(&manifest["test"], &json["test"]);
    assert_eq!(manifest["train_attacks"].as_array().unwrap().len(), 3);
}

#[test]
fn bench_train_runs_an_epoch_and_bench_refuses_images_past_the_test_set() {
    let json = bench(&["train", "--images", "256", "--batch", "64", "--repeats", "1"]);
    assert!(json["images_per_second"].as_f64().unwrap() > 0.0);

    let run = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["bench", "pgd", "--images", "20", "--skip", "9990", "--model"])
        .arg(crate::default_model_dir())
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("--skip 9990 + --images 20 exceed the 10000 test images"), "{stderr}");
}

#[test]
fn bench_execution_runs_dense_and_gated_side_by_side_with_the_same_outputs() {
    let json = bench(&["execution", "--images", "24", "--repeats", "1", "--batches", "1,8"]);
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["batch"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 8]);
    for row in rows {
        // The shipped network is plain: its dense pass on the host kernels is measured too.
        for key in ["dense", "gated_union", "gated_each", "dense_each_on_host"] {
            assert!(row[key].as_f64().unwrap() > 0.0, "{row}");
        }
    }
    let agreement = json["agreement_with_dense"].as_object().unwrap();
    assert_eq!(agreement.len(), 3, "{agreement:?}");
    for (strategy, agreement) in agreement {
        assert_eq!(agreement["inputs"].as_u64(), Some(24), "{strategy}");
        assert_eq!(agreement["inputs_whose_path_differs"].as_u64(), Some(0), "{strategy}");
        assert!(agreement["max_abs_logit_difference"].as_f64().unwrap() < 1e-4, "{strategy}");
    }
    for execution in ["dense", "gated", "auto"] {
        let json = bench(&["forward", "--execution", execution, "--batch", "4", "--images", "16", "--repeats", "1"]);
        assert_eq!(json["execution"].as_str(), Some(execution));
    }
}
