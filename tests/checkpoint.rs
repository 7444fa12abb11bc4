use pathguard::data::CLASS_NAMES;
use pathguard::model::checkpoint::{CONFIG_FILE, WEIGHTS_FILE};
use pathguard::model::{Checkpoint, ModelConfig};
use tch::{Device, Kind, Tensor};

fn saved_tiny_model() -> (tempfile::TempDir, Checkpoint) {
    tch::manual_seed(7);
    let dir = tempfile::tempdir().unwrap();
    let mut checkpoint = Checkpoint::new(&ModelConfig::tiny(), &CLASS_NAMES, Device::Cpu).unwrap();
    // Give the gates strong input dependence so paths are not trivially all-open: large
    // random weights in both layers of every controlling module and no bias towards open,
    // so that gate signs change with the input (the RNG is shared with concurrent tests, so
    // this must hold for any draw, not for one seed).
    tch::no_grad(|| {
        for (name, mut var) in checkpoint.vs.variables() {
            if name.contains("acm.fc1.weight") || name.contains("acm.fc2.weight") {
                var.copy_(&(var.randn_like() * 3.0));
            } else if name.contains("acm.fc2.bias") {
                var.copy_(&var.zeros_like());
            }
        }
    });
    checkpoint.save(dir.path()).unwrap();
    (dir, checkpoint)
}

fn error_of(dir: &std::path::Path) -> String {
    Checkpoint::load(dir, Device::Cpu).unwrap_err().to_string()
}

#[test]
fn round_trip_gives_identical_logits_and_paths() {
    let (dir, original) = saved_tiny_model();
    let loaded = Checkpoint::load(dir.path(), Device::Cpu).unwrap();
    assert_eq!(loaded.model_hash(), original.model_hash());
    assert_eq!(loaded.model_hash().len(), 64);
    // Images from black to bright, so the controlling modules see very different inputs.
    let brightness = Tensor::linspace(0.0, 1.0, 32, (Kind::Float, Device::Cpu)).view([32, 1, 1, 1]);
    let x = Tensor::rand([32, 1, 28, 28], (Kind::Float, Device::Cpu)) * brightness;
    let (logits_a, path_a) = original.model.predict(&x).unwrap();
    let (logits_b, path_b) = loaded.model.predict(&x).unwrap();
    assert_eq!(logits_a, logits_b);
    assert_eq!(path_a, path_b);
    // Random weights need not give input-dependent gates for every draw, so the round trip is
    // repeated on the trained shipped model and real images, whose paths do vary: there the
    // path comparison is known to mean something.
    let shipped = Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let copy_dir = tempfile::tempdir().unwrap();
    let mut copy = Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    copy.save(copy_dir.path()).unwrap();
    let reloaded = Checkpoint::load(copy_dir.path(), Device::Cpu).unwrap();
    assert_eq!(reloaded.model_hash(), shipped.model_hash());
    let images = pathguard::data::fashion_mnist::load(
        &pathguard::data::fashion_mnist::default_dir(),
        pathguard::data::Split::Test,
    )
    .unwrap()
    .take(64)
    .images;
    let (logits_a, path_a) = shipped.model.predict(&images).unwrap();
    let (logits_b, path_b) = reloaded.model.predict(&images).unwrap();
    assert_eq!(logits_a, logits_b);
    assert_eq!(path_a, path_b);
    let per_gate_variation = path_a.std_dim([0i64].as_slice(), true, false);
    assert!(per_gate_variation.gt(0.0).any().int64_value(&[]) == 1);
    // Readable nn::Path names in the file.
    let names: Vec<String> =
        Tensor::read_safetensors(dir.path().join(WEIGHTS_FILE)).unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"blocks.1.acm.fc2.weight".to_string()), "{names:?}");
    assert!(names.contains(&"classifier.weight".to_string()));
    assert!(names.contains(&"blocks.0.bn.running_mean".to_string()));
}

#[test]
fn saving_leaves_no_temp_files_and_overwrites_cleanly() {
    let (dir, mut checkpoint) = saved_tiny_model();
    checkpoint.save(dir.path()).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, vec![CONFIG_FILE.to_string(), WEIGHTS_FILE.to_string()]);
    Checkpoint::load(dir.path(), Device::Cpu).unwrap();
}

#[test]
fn missing_directory_and_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    assert!(error_of(&dir.path().join("nope")).contains("no such model directory"));
    assert!(error_of(dir.path()).contains("config.json: cannot read"));
    let (dir, _) = saved_tiny_model();
    std::fs::remove_file(dir.path().join(WEIGHTS_FILE)).unwrap();
    assert!(error_of(dir.path()).contains("cannot read weights"));
}

#[test]
fn truncated_weights_are_detected() {
    let (dir, _) = saved_tiny_model();
    let path = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = error_of(dir.path());
    assert!(err.contains("does not match config.json") && err.contains("truncated"), "{err}");
}

#[test]
fn corrupted_config_is_reported() {
    let (dir, _) = saved_tiny_model();
    std::fs::write(dir.path().join(CONFIG_FILE), b"{\"format\": \"pathguard-decoupled-cnn\"").unwrap();
    assert!(error_of(dir.path()).contains("not a valid model config"));
}

#[test]
fn architecture_mismatch_names_the_tensor() {
    let (dir, _) = saved_tiny_model();
    let config_path = dir.path().join(CONFIG_FILE);
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    meta["architecture"]["layers"][5]["out_channels"] = 24.into();
    std::fs::write(&config_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let err = error_of(dir.path());
    assert!(err.contains("do not match the architecture") && err.contains("blocks.5.conv.weight"), "{err}");
}

#[test]
fn wrong_input_shape_is_an_error_not_a_panic() {
    let (_dir, checkpoint) = saved_tiny_model();
    let x = Tensor::rand([2, 3, 28, 28], (Kind::Float, Device::Cpu));
    let err = checkpoint.model.predict(&x).unwrap_err().to_string();
    assert!(err.contains("[2, 3, 28, 28]") && err.contains("expects"), "{err}");
    let x = Tensor::zeros([2, 1, 28, 28], (Kind::Uint8, Device::Cpu));
    assert!(checkpoint.model.predict(&x).unwrap_err().to_string().contains("float32"));
}
