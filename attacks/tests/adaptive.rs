//! Detector-aware attacks on a small guarded classifier whose gradients are known: a linear
//! softmax classifier and a linear-logistic detector.

use attacks::{AdaptiveKind, AdaptivePgd, AttackError, Ball, Goal, GuardedClassifier, GuardedForward};
use tch::{Device, Kind, Tensor};

struct Guarded {
    w: Tensor,          // [K, D]
    v: Tensor,          // [D]: the detector's direction
    references: Tensor, // [K, D]: each class's "path"
}

const THRESHOLD_LOSS: f64 = 1.0;

impl Guarded {
    fn new(seed: i64) -> Self {
        tch::manual_seed(seed);
        let opts = (Kind::Float, Device::Cpu);
        Guarded { w: Tensor::randn([4, 64], opts), v: Tensor::randn([64], opts) * 0.3, references: Tensor::rand([4, 64], opts) }
    }
}

impl GuardedClassifier for Guarded {
    fn forward(&self, images: &Tensor, path_targets: Option<&Tensor>) -> GuardedForward {
        let flat = images.flatten(1, -1);
        let detection = (flat.matmul(&self.v) - 0.5).softplus();
        let path_distance =
            path_targets.map(|t| (&flat - self.references.index_select(0, t)).square().mean_dim([1i64].as_slice(), false, Kind::Float));
        GuardedForward { logits: flat.matmul(&self.w.transpose(0, 1)), detection, path_distance }
    }
    fn flagged(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| self.forward(images, None).detection.ge(THRESHOLD_LOSS))
    }
    fn detection_threshold(&self) -> f64 {
        THRESHOLD_LOSS
    }
    fn num_classes(&self) -> i64 {
        4
    }
}

fn batch(seed: i64, n: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::rand([n, 1, 8, 8], (Kind::Float, Device::Cpu)) * 0.5
}

const KINDS: [AdaptiveKind; 5] = [
    AdaptiveKind::Selective,
    AdaptiveKind::Orthogonal,
    AdaptiveKind::Lagrangian { lambda: 1.0 },
    AdaptiveKind::ExtraClass,
    AdaptiveKind::PathMatching { weight: 1.0 },
];

/// Misclassified (or on target) and not flagged, per image.
fn evaded(model: &Guarded, adv: &Tensor, labels: &Tensor, goal: &Goal) -> Vec<bool> {
    let predicted = model.forward(adv, None).logits.argmax(1, false);
    let reached = match goal {
        Goal::Untargeted => predicted.ne_tensor(labels),
        Goal::Targeted(t) => predicted.eq_tensor(t),
    };
    Vec::<bool>::try_from(reached.logical_and(&model.flagged(adv).logical_not())).unwrap()
}

#[test]
fn every_adaptive_attack_stays_in_its_ball_and_evades_the_toy_detector() {
    let model = Guarded::new(3);
    let x = batch(4, 32);
    let y = tch::no_grad(|| model.forward(&x, None).logits.argmax(1, false));
    let targets = (&y + 1).remainder(4);
    for ball in [Ball::Linf, Ball::L2] {
        let eps = if ball == Ball::Linf { 0.3 } else { 3.0 };
        for kind in KINDS {
            for goal in [Goal::Untargeted, Goal::Targeted(targets.shallow_clone())] {
                let attack = AdaptivePgd::new(kind, eps, 30, eps / 10.0, true, 0).unwrap().with_ball(ball);
                let adv = attack.perturb(&model, &x, &y, &goal).unwrap();
                let delta = &adv - &x;
                let norm = match ball {
                    Ball::Linf => attacks::linf_norms(&delta),
                    Ball::L2 => attacks::l2_norms(&delta),
                };
                let largest = norm.max().double_value(&[]);
                assert!(largest <= eps + 1e-5, "{} {ball:?}: norm {largest} > {eps}", attack.name());
                assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0);
                let got = evaded(&model, &adv, &y, &goal).iter().filter(|&&e| e).count();
                assert!(got >= 16, "{} {ball:?} {goal:?}: evaded on {got}/32", attack.name());
            }
        }
    }
}

#[test]
fn restarts_and_early_stop_only_add_successes() {
    let model = Guarded::new(5);
    let x = batch(6, 64);
    let y = tch::no_grad(|| model.forward(&x, None).logits.argmax(1, false));
    let (eps, steps) = (0.05, 10);
    let count = |attack: &AdaptivePgd| {
        let adv = attack.perturb(&model, &x, &y, &Goal::Untargeted).unwrap();
        evaded(&model, &adv, &y, &Goal::Untargeted)
    };
    let once = AdaptivePgd::new(AdaptiveKind::Orthogonal, eps, steps, eps / 10.0, true, 1).unwrap().with_early_stop(true);
    let thrice = once.clone().with_restarts(3).unwrap();
    let (a, b) = (count(&once), count(&thrice));
    // The first restart is the same run; later ones only work on images without a success.
    assert!(a.iter().zip(&b).all(|(&first, &all)| !first || all), "a success was lost by restarting");
    assert!(b.iter().filter(|&&e| e).count() >= a.iter().filter(|&&e| e).count());
}

#[test]
fn adaptive_parameters_are_checked() {
    let new = |kind, steps| AdaptivePgd::new(kind, 0.1, steps, 0.01, true, 0);
    assert_eq!(new(AdaptiveKind::Lagrangian { lambda: -1.0 }, 5).unwrap_err(), AttackError::Lambda(-1.0));
    assert_eq!(new(AdaptiveKind::PathMatching { weight: 0.0 }, 5).unwrap_err(), AttackError::PathWeight(0.0));
    assert_eq!(new(AdaptiveKind::Selective, 0).unwrap_err(), AttackError::Steps(0));
    assert_eq!(new(AdaptiveKind::Selective, 5).unwrap().with_restarts(0).unwrap_err(), AttackError::Restarts(0));
    // Path matching needs reference paths; a classifier without them is told so.
    struct NoPaths(Guarded);
    impl GuardedClassifier for NoPaths {
        fn forward(&self, images: &Tensor, _: Option<&Tensor>) -> GuardedForward {
            self.0.forward(images, None)
        }
        fn flagged(&self, images: &Tensor) -> Tensor {
            self.0.flagged(images)
        }
        fn detection_threshold(&self) -> f64 {
            THRESHOLD_LOSS
        }
        fn num_classes(&self) -> i64 {
            4
        }
    }
    let model = NoPaths(Guarded::new(1));
    let x = batch(2, 4);
    let y = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
    let err = new(AdaptiveKind::PathMatching { weight: 1.0 }, 5).unwrap().perturb(&model, &x, &y, &Goal::Untargeted).unwrap_err();
    assert!(matches!(err, AttackError::BadInput(ref m) if m.contains("reference paths")), "{err}");
}
