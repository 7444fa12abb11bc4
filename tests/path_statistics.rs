//! The detector reads path statistics computed on the host; the detector-aware attacks
//! differentiate the tensor version. Both must give the same numbers on real forward passes.

use pathguard::data::fashion_mnist::{self, default_dir};
use pathguard::data::Split;
use pathguard::detector::PathDetector;
use pathguard::model::{Checkpoint, GateMode};
use pathguard::path::features::{path_feature_tensor, path_features, to_ndarray};
use tch::{Device, Kind, Tensor};

#[test]
fn host_path_statistics_equal_the_differentiable_ones() {
    let dir = crate::default_model_dir();
    let checkpoint = Checkpoint::load(&dir, Device::Cpu).unwrap();
    let detector = PathDetector::load(&dir.join("detector.json"), checkpoint.model_hash()).unwrap();
    let test = fashion_mnist::load(&default_dir(), Split::Test).unwrap().take(200);
    // Real images and noise (paths far from every template, varied predicted classes).
    tch::manual_seed(3);
    let noise = Tensor::rand([50, 1, 28, 28], (Kind::Float, Device::Cpu));
    let images = Tensor::cat(&[test.images, noise], 0);
    let out = tch::no_grad(|| checkpoint.model.forward_with_path(&images, GateMode::Eval));
    let host = path_features(&out, &detector.templates);
    let tensors = to_ndarray(&path_feature_tensor(&out, &detector.templates));
    assert_eq!(host.dim(), tensors.dim());
    let worst = host.iter().zip(&tensors).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "largest difference {worst}");
}
