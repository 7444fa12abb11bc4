//! Auto-PGD on small models whose gradients are known: a linear softmax classifier, the same
//! with its logits scaled until the softmax saturates (the gradient masking DLR is immune
//! to), and a linear classifier guarded by a linear-logistic detector.

use attacks::{linf_norms, Apgd, ApgdLoss, Attack, AttackError, DifferentiableClassifier, Goal, GuardedClassifier, GuardedForward};
use tch::{Device, Kind, Tensor};

/// libtorch's random generator is global: tests that seed it take turns, so that each one's
/// weights, images and random starts are its own.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A linear classifier on flattened 1x8x8 images, its logits times `scale`.
struct Linear {
    w: Tensor, // [K, D]
    scale: f64,
    classes: i64,
}

impl Linear {
    fn new(seed: i64, classes: i64, scale: f64) -> Self {
        tch::manual_seed(seed);
        Linear { w: Tensor::randn([classes, 64], (Kind::Float, Device::Cpu)), scale, classes }
    }
}

impl DifferentiableClassifier for Linear {
    fn logits(&self, images: &Tensor) -> Tensor {
        images.flatten(1, -1).matmul(&self.w.transpose(0, 1)) * self.scale
    }
    fn num_classes(&self) -> i64 {
        self.classes
    }
}

/// `Linear` guarded by a detector that flags images far along `v`.
struct Guarded {
    classifier: Linear,
    v: Tensor,
}

impl GuardedClassifier for Guarded {
    fn forward(&self, images: &Tensor, _: Option<&Tensor>) -> GuardedForward {
        let detection = (images.flatten(1, -1).matmul(&self.v) - 0.5).softplus();
        GuardedForward { logits: self.classifier.logits(images), detection, path_distance: None }
    }
    fn flagged(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| self.forward(images, None).detection.ge(1.0))
    }
    fn detection_threshold(&self) -> f64 {
        1.0
    }
    fn num_classes(&self) -> i64 {
        self.classifier.classes
    }
}

fn images(seed: i64, n: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::rand([n, 1, 8, 8], (Kind::Float, Device::Cpu))
}

fn fooled(model: &dyn DifferentiableClassifier, adv: &Tensor, labels: &Tensor) -> usize {
    let wrong = tch::no_grad(|| model.logits(adv).argmax(1, false).ne_tensor(labels));
    Vec::<bool>::try_from(wrong).unwrap().iter().filter(|&&w| w).count()
}

fn assert_within(adv: &Tensor, x: &Tensor, eps: f64, what: &str) {
    let largest = linf_norms(&(adv - x)).max().double_value(&[]);
    assert!(largest <= eps + 1e-6, "{what}: norm {largest} > {eps}");
    assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0, "{what}: pixels out of [0, 1]");
}

#[test]
fn apgd_stays_in_its_ball_and_reaches_its_goal() {
    let _serial = serial();
    let model = Linear::new(1, 10, 1.0);
    let x = images(2, 64);
    let y = tch::no_grad(|| model.logits(&x).argmax(1, false));
    let targets = (&y + 1).remainder(10);
    for loss in [ApgdLoss::CrossEntropy, ApgdLoss::Dlr] {
        let eps = 0.05;
        let attack = Apgd::new(loss, eps, 50, 0).unwrap();
        let adv = attack.perturb(&model, &x, &y, &Goal::Untargeted).unwrap();
        assert_within(&adv, &x, eps, attack.name());
        let untargeted = fooled(&model, &adv, &y);
        assert!(untargeted >= 32, "{}: fooled {untargeted}/64", attack.name());
        // A given class is further than any other: a larger ball.
        let eps = 0.2;
        let attack = Apgd::new(loss, eps, 50, 0).unwrap();
        let adv = attack.perturb(&model, &x, &y, &Goal::Targeted(targets.shallow_clone())).unwrap();
        assert_within(&adv, &x, eps, attack.name());
        let on_target = Vec::<bool>::try_from(tch::no_grad(|| model.logits(&adv).argmax(1, false).eq_tensor(&targets))).unwrap();
        let on_target = on_target.iter().filter(|&&t| t).count();
        eprintln!("{}: fooled {untargeted}/64, on target {on_target}/64", attack.name());
        assert!(on_target >= 16, "{} targeted: on target {on_target}/64", attack.name());
    }
}

#[test]
fn dlr_sees_through_a_saturated_softmax_that_masks_cross_entropy() {
    let _serial = serial();
    // Logits x 1e4: float32 softmax is exactly one-hot on every image, so the cross-entropy
    // gradient is exactly zero and sign steps go nowhere; DLR does not depend on the scale.
    let plain = Linear::new(3, 10, 1.0);
    let saturated = Linear { w: plain.w.shallow_clone(), scale: 1e4, classes: 10 };
    let x = images(4, 64);
    let y = tch::no_grad(|| plain.logits(&x).argmax(1, false));
    let eps = 0.05;
    let run = |loss, model: &Linear| fooled(model, &Apgd::new(loss, eps, 50, 0).unwrap().perturb(model, &x, &y, &Goal::Untargeted).unwrap(), &y);
    let dlr_plain = run(ApgdLoss::Dlr, &plain);
    let dlr_saturated = run(ApgdLoss::Dlr, &saturated);
    let ce_saturated = run(ApgdLoss::CrossEntropy, &saturated);
    eprintln!("DLR plain {dlr_plain}, DLR saturated {dlr_saturated}, CE saturated {ce_saturated} of 64");
    assert!(dlr_saturated >= 32, "DLR on saturated logits fooled {dlr_saturated}/64");
    assert_eq!(dlr_saturated, dlr_plain, "DLR should not see the scale");
    assert!(ce_saturated < dlr_saturated, "CE on saturated logits fooled {ce_saturated}, DLR {dlr_saturated}");
}

#[test]
fn restarts_only_add_successes_and_a_seed_reproduces_a_run() {
    let _serial = serial();
    let model = Linear::new(5, 10, 1.0);
    let x = images(6, 64);
    let y = tch::no_grad(|| model.logits(&x).argmax(1, false));
    let once = Apgd::new(ApgdLoss::Dlr, 0.02, 10, 1).unwrap();
    let wrong = |adv: &Tensor| Vec::<bool>::try_from(tch::no_grad(|| model.logits(adv).argmax(1, false).ne_tensor(&y))).unwrap();
    let first = once.perturb(&model, &x, &y, &Goal::Untargeted).unwrap();
    assert_eq!(first, once.perturb(&model, &x, &y, &Goal::Untargeted).unwrap());
    let thrice = once.clone().with_restarts(3).unwrap().perturb(&model, &x, &y, &Goal::Untargeted).unwrap();
    let (a, b) = (wrong(&first), wrong(&thrice));
    assert!(a.iter().zip(&b).all(|(&one, &all)| !one || all), "a success was lost by restarting");
}

#[test]
fn guarded_apgd_evades_the_detector_too() {
    let _serial = serial();
    tch::manual_seed(7);
    let model = Guarded { classifier: Linear::new(7, 10, 1.0), v: Tensor::randn([64], (Kind::Float, Device::Cpu)) * 0.3 };
    let x = images(8, 32) * 0.5;
    let y = tch::no_grad(|| model.forward(&x, None).logits.argmax(1, false));
    let eps = 0.3;
    let adv = Apgd::new(ApgdLoss::Dlr, eps, 30, 0).unwrap().perturb_guarded(&model, &x, &y, &Goal::Untargeted).unwrap();
    assert_within(&adv, &x, eps, "guarded apgd");
    let out = tch::no_grad(|| model.forward(&adv, None));
    let evaded = out.logits.argmax(1, false).ne_tensor(&y).logical_and(&model.flagged(&adv).logical_not());
    let evaded = Vec::<bool>::try_from(evaded).unwrap().iter().filter(|&&e| e).count();
    eprintln!("evaded {evaded}/32");
    assert!(evaded >= 16, "evaded on {evaded}/32");
}

#[test]
fn apgd_parameters_are_checked() {
    let _serial = serial();
    assert_eq!(Apgd::new(ApgdLoss::Dlr, -0.1, 10, 0).unwrap_err(), AttackError::Epsilon(-0.1));
    assert_eq!(Apgd::new(ApgdLoss::Dlr, 0.1, 0, 0).unwrap_err(), AttackError::Steps(0));
    assert_eq!(Apgd::new(ApgdLoss::Dlr, 0.1, 10, 0).unwrap().with_restarts(0).unwrap_err(), AttackError::Restarts(0));
    // DLR reads the third-largest logit: two classes are refused by name.
    let model = Linear::new(9, 2, 1.0);
    let x = images(10, 4);
    let y = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
    let err = Apgd::new(ApgdLoss::Dlr, 0.1, 10, 0).unwrap().perturb(&model, &x, &y, &Goal::Untargeted).unwrap_err();
    assert!(matches!(err, AttackError::BadInput(ref m) if m.contains("3 classes")), "{err}");
}
