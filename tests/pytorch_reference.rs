//! bench/python/pathguard_ref.py (the architecture in PyTorch) loads our checkpoint by name
//! and computes the same logits and paths as pathguard.

use std::process::Command;

use pathguard::data::fashion_mnist::{self, default_dir};
use pathguard::data::Split;
use pathguard::model::gate::GateMode;
use pathguard::model::losses::decoupling_loss;
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
    let labels_npy = dir.path().join("labels.npy");
    let labels = Vec::<i64>::try_from(&test.labels).unwrap();
    ndarray_npy::write_npy(&labels_npy, &ndarray::Array1::from_vec(labels)).unwrap();
    let run = Command::new(&python)
        .arg(crate::repo_root().join("bench/python/pathguard_ref.py"))
        .arg(crate::default_model_dir())
        .arg(&npy)
        .arg(dir.path())
        .arg(&labels_npy)
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

    // The training losses (what the training-speed comparison runs) agree term by term on
    // the same deterministic pass: hard gates, running BatchNorm statistics.
    let theirs_losses: ndarray::Array1<f32> = ndarray_npy::read_npy(dir.path().join("losses.npy")).unwrap();
    let out = tch::no_grad(|| checkpoint.model.forward_with_path(&test.images, GateMode::Eval));
    let weights = checkpoint.meta.training.as_ref().unwrap().options.loss.clone();
    let terms = decoupling_loss(&out, &test.labels, &weights);
    let ours_losses = [&terms.cross_entropy, &terms.mutual_information, &terms.alignment, &terms.sparsity]
        .map(|t| t.double_value(&[]));
    for (name, (ours, theirs)) in ["cross-entropy", "mutual information", "alignment", "sparsity"]
        .iter()
        .zip(ours_losses.iter().zip(theirs_losses.iter()))
    {
        let tolerance = 1e-4 * ours.abs().max(1.0);
        assert!((ours - *theirs as f64).abs() < tolerance, "{name}: ours {ours}, PyTorch {theirs}");
    }
}

/// The twin follows the block list: a ResNet checkpoint (strided convs, gated inner convs,
/// zero-padded shortcuts, input standardised inside) with random BatchNorm statistics and gate
/// biases, so that paths vary.
#[test]
fn pytorch_twin_matches_a_resnet_checkpoint() {
    let python = crate::attack_sets::python();
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(11);
    let config = pathguard::model::ModelConfig { normalized_input: true, ..pathguard::model::ModelConfig::resnet8() };
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    let mut checkpoint = Checkpoint::new(&config, &names, Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (name, mut t) in checkpoint.vs.variables() {
            if name.ends_with("running_mean") || name.ends_with("fc2.bias") {
                let _ = t.copy_(&(tch::Tensor::randn(t.size(), (tch::Kind::Float, Device::Cpu)) * 0.5));
            }
        }
    });
    checkpoint.model.set_input_statistics(&[0.4, 0.5, 0.6], &[0.2, 0.25, 0.3]).unwrap();
    let model_dir = dir.path().join("resnet");
    checkpoint.save(&model_dir).unwrap();
    let images = tch::Tensor::rand([8, 3, 32, 32], (tch::Kind::Float, Device::Cpu));
    let npy = dir.path().join("images.npy");
    let values = Vec::<f32>::try_from(images.flatten(0, -1)).unwrap();
    ndarray_npy::write_npy(&npy, &ndarray::Array4::from_shape_vec((8, 3, 32, 32), values).unwrap()).unwrap();
    let run = Command::new(&python)
        .arg(crate::repo_root().join("bench/python/pathguard_ref.py"))
        .arg(&model_dir)
        .arg(&npy)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let theirs_logits: ndarray::Array2<f32> = ndarray_npy::read_npy(dir.path().join("logits.npy")).unwrap();
    let theirs_path: ndarray::Array2<u8> = ndarray_npy::read_npy(dir.path().join("path.npy")).unwrap();
    let (logits, path) = checkpoint.model.predict(&images).unwrap();
    let ours_logits = Vec::<f32>::try_from(logits.flatten(0, -1)).unwrap();
    let ours_path = Vec::<u8>::try_from(path.to_kind(tch::Kind::Uint8).flatten(0, -1)).unwrap();
    assert_eq!(theirs_path.shape(), &[8, 224]);
    let open = ours_path.iter().map(|&b| b as f64).sum::<f64>() / ours_path.len() as f64;
    assert!(open > 0.1 && open < 0.9, "open fraction {open}");
    let max_diff = ours_logits.iter().zip(theirs_logits.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff < 1e-4, "logits differ by up to {max_diff}");
    let differing = ours_path.iter().zip(theirs_path.iter()).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "{differing} path bits differ");
}
