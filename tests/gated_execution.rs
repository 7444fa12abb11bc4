//! Gated execution (only each input's path computed) gives the dense pass's answers on real
//! test images with the shipped model and detector.

use pathguard::data::fashion_mnist::{self, default_dir};
use pathguard::data::Split;
use pathguard::model::{Checkpoint, Execution, Inference, Strategy};
use pathguard::screener::Screener;
use tch::Device;

#[test]
fn gated_execution_gives_the_dense_answers_on_real_test_images() {
    let checkpoint = Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let model = &checkpoint.model;
    let test = fashion_mnist::load(&default_dir(), Split::Test).unwrap().take(300);
    let inference = Inference::new(model, Execution::Gated).unwrap();
    for batch in [1i64, 100] {
        for start in (0..300).step_by(batch as usize) {
            // Batch 1 checks every image on its own path; batch 100 the union pass.
            if batch == 1 && start >= 60 {
                break;
            }
            let x = test.images.narrow(0, start, batch);
            let dense = inference.forward_with(model, &x, Strategy::Dense).unwrap();
            for strategy in [Strategy::GatedUnion, Strategy::GatedEach] {
                let gated = inference.forward_with(model, &x, strategy).unwrap();
                assert_eq!(dense.path(), gated.path(), "{strategy:?} at batch {batch}, images {start}..: paths differ");
                let diff = (&dense.logits - &gated.logits).abs().max().double_value(&[]);
                assert!(diff < 1e-4, "{strategy:?} at batch {batch}: logits differ by {diff}");
            }
        }
    }

    // The screener's verdicts do not depend on the execution.
    let dense = Screener::load(&crate::default_model_dir(), Device::Cpu).unwrap().with_execution(Execution::Dense).unwrap();
    let gated = Screener::load(&crate::default_model_dir(), Device::Cpu).unwrap().with_execution(Execution::Gated).unwrap();
    let images = test.images.narrow(0, 0, 64);
    for (d, g) in dense.screen(&images).unwrap().iter().zip(gated.screen(&images).unwrap()) {
        assert_eq!((d.predicted_class, &d.path), (g.predicted_class, &g.path));
        assert!((d.score - g.score).abs() < 1e-5, "scores {} and {}", d.score, g.score);
        assert_eq!(d.score >= dense.detector.threshold(), g.score >= gated.detector.threshold());
    }
}
