//! bench/python/pathguard_ref.py (the architecture in PyTorch) loads our checkpoint by name
//! and computes the same logits and paths as pathguard.

use std::process::Command;

use pathguard::data::fashion_mnist::{self, default_dir, Split};
use pathguard::model::Checkpoint;
use tch::Device;

#[test]
fn pytorch_twin_matches_logits_and_paths_on_256_test_images() {
    let python = crate::attack_sets::python();
    let dir = tempfile::tempdir().unwrap();
    let test = fashion_mnist::load(&default_dir(), Split::Test).unwrap().take(256);
    let values = Vec::<f32>::try_from(test.images.flatten(0, -1)).unwrap();
    let npy = dir.path().join("images.npy");
    ndarray_npy::write_npy(&npy, &ndarray::Array4::from_shape_vec((256, 1, 28, 28), values).unwrap()).unwrap();
    let run = Command::new(&python)
        .arg(crate::repo_root().join("bench/python/pathguard_ref.py"))
        .arg(crate::default_model_dir())
        .arg(&npy)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let theirs_logits: ndarray::Array2<f32> = ndarray_npy::read_npy(dir.path().join("logits.npy")).unwrap();
    let theirs_path: ndarray::Array2<u8> = ndarray_npy::read_npy(dir.path().join("path.npy")).unwrap();

    let checkpoint = Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let (logits, path) = checkpoint.model.predict(&test.images).unwrap();
    let ours_logits = Vec::<f32>::try_from(logits.flatten(0, -1)).unwrap();
    let ours_path = Vec::<u8>::try_from(path.to_kind(tch::Kind::Uint8).flatten(0, -1)).unwrap();
    assert_eq!(theirs_path.shape(), &[256, 624]);
    let max_diff = ours_logits.iter().zip(theirs_logits.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff < 1e-4, "logits differ by up to {max_diff}");
    let differing = ours_path.iter().zip(theirs_path.iter()).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "{differing} path bits differ");
}
