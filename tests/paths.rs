//! The paper's other applications on the shipped model: compaction keeps logits exact where
//! paths use only kept filters; paths and explain write their pictures.

use std::process::Command;

use pathguard::compact::{compact, filter_usage, parameter_count, uses_only_kept};
use pathguard::data::fashion_mnist::{self, default_dir};
use pathguard::data::Split;
use pathguard::model::{Checkpoint, GateMode};
use tch::{Device, Tensor};

#[test]
fn compaction_keeps_logits_of_inputs_whose_paths_use_only_kept_filters() {
    let full = Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let train = fashion_mnist::load(&default_dir(), Split::Train).unwrap().take(2000);
    let usage = filter_usage(&full, Device::Cpu, &train, 500).unwrap();
    // A bar above the default 1%, so that filters really are dropped.
    let compacted = compact(&full, &usage, 0.05, train.len()).unwrap();
    let record = compacted.meta.compacted_from.as_ref().unwrap();
    let before: i64 = full.model.config().layers.iter().map(|l| l.out_channels).sum();
    let after: i64 = compacted.model.config().layers.iter().map(|l| l.out_channels).sum();
    assert!(after < before, "{after} filters kept of {before}");
    assert!(parameter_count(&compacted) < parameter_count(&full));

    let test = fashion_mnist::load(&default_dir(), Split::Test).unwrap().take(1000);
    let out = tch::no_grad(|| full.model.forward_with_path(&test.images, GateMode::Eval));
    let (compact_logits, compact_path) = compacted.model.predict(&test.images).unwrap();
    let gated = full.model.config().gated_layers();
    let only_kept = uses_only_kept(&out.gates, &record.kept, &gated);
    let kept_gates: Vec<Tensor> =
        out.gates.iter().zip(&gated).map(|(z, &layer)| z.index_select(1, &Tensor::from_slice(&record.kept[layer]))).collect();
    let rows = only_kept.nonzero().squeeze_dim(1);
    assert!(rows.size()[0] >= 20, "only {} inputs use kept filters only", rows.size()[0]);
    let diff = (out.logits.index_select(0, &rows) - compact_logits.index_select(0, &rows)).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "logits differ by {diff}");
    // The compact gates are the full gates of the kept filters.
    let kept_path = Tensor::cat(&kept_gates, 1).index_select(0, &rows);
    assert!(kept_path.equal(&compact_path.index_select(0, &rows)));

    // It saves and loads like any checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let mut compacted = compacted;
    compacted.save(dir.path()).unwrap();
    let loaded = Checkpoint::load(dir.path(), Device::Cpu).unwrap();
    assert!(loaded.model.predict(&test.images).unwrap().0.equal(&compact_logits));
}

#[test]
fn paths_and_explain_write_non_empty_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("paths");
    let run = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["paths", "--device", "cpu", "--limit", "500", "--model"])
        .arg(crate::default_model_dir())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for file in ["layer0_class_filter.png", "layer4_class_filter.png", "class_similarity.png", "paths.json", "paths.md"] {
        let len = std::fs::metadata(out.join(file)).unwrap().len();
        assert!(len > 500, "{file}: {len} bytes");
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("paths.json")).unwrap()).unwrap();
    assert_eq!(json["layers"].as_array().unwrap().len(), 5);
    let roles = &json["layers"][4]["roles"];
    let total = roles["class_specific"].as_u64().unwrap() + roles["shared"].as_u64().unwrap() + roles["unused"].as_u64().unwrap();
    assert_eq!(total, 192);

    let attack = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["attack", "--device", "cpu", "--method", "fgsm", "--eps", "0.1", "--limit", "2", "--out"])
        .arg(dir.path().join("fgsm"))
        .output()
        .unwrap();
    assert!(attack.status.success(), "{}", String::from_utf8_lossy(&attack.stderr));
    let sheets = dir.path().join("sheets");
    let explain = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["explain", "--device", "cpu", "--json", "--model"])
        .arg(crate::default_model_dir())
        .arg("--out")
        .arg(&sheets)
        .arg(dir.path().join("fgsm/images.npy"))
        .output()
        .unwrap();
    assert!(explain.status.success(), "{}", String::from_utf8_lossy(&explain.stderr));
    let explanations: serde_json::Value = serde_json::from_slice(&explain.stdout).unwrap();
    let list = explanations.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for e in list {
        assert_eq!(e["layers"].as_array().unwrap().len(), 5);
        assert_eq!(e["separating_filters"].as_array().unwrap().len(), 8);
        let flops = e["flops_fraction"].as_f64().unwrap();
        assert!(flops > 0.0 && flops < 1.0);
        assert!((0.0..=1.0).contains(&e["adversarial_score"].as_f64().unwrap()));
        assert!(!e["detector_layers"].as_array().unwrap().is_empty());
        let sheet = e["sheet"].as_str().unwrap();
        assert!(std::fs::metadata(sheet).unwrap().len() > 500, "{sheet}");
    }
}
