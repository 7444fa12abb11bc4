//! The attacks' guarantees, on small models whose gradients are known.

use attacks::{
    l2_norms, linf_norms, Attack, AttackError, CarliniWagnerL2, DeepFool, DifferentiableClassifier, Fgsm, Goal,
    Iterative, IterativeKind,
};
use tch::{Device, Kind, Tensor};

/// A linear softmax classifier on flattened 1x8x8 images.
struct Linear {
    w: Tensor, // [K, D]
    b: Tensor, // [K]
}

impl Linear {
    fn new(seed: i64) -> Self {
        tch::manual_seed(seed);
        let opts = (Kind::Float, Device::Cpu);
        Linear { w: Tensor::randn([4, 64], opts), b: Tensor::randn([4], opts) * 0.1 }
    }
}

impl DifferentiableClassifier for Linear {
    fn logits(&self, images: &Tensor) -> Tensor {
        images.flatten(1, -1).matmul(&self.w.transpose(0, 1)) + &self.b
    }
    fn num_classes(&self) -> i64 {
        4
    }
}

fn batch(seed: i64, n: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let x = Tensor::rand([n, 1, 8, 8], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(4, [n], (Kind::Int64, Device::Cpu));
    (x, y)
}

fn all_attacks(eps: f64) -> Vec<(Box<dyn Attack>, f64, bool)> {
    let step = (eps / 4.0).max(1e-3);
    // (attack, bound, is the bound an L2 bound)
    vec![
        (Box::new(Fgsm::new(eps).unwrap()), eps, false),
        (Box::new(Iterative::new(IterativeKind::Bim, eps, 10, step, false, 0).unwrap()), eps, false),
        (Box::new(Iterative::new(IterativeKind::PgdLinf, eps, 10, step, true, 0).unwrap()), eps, false),
        (Box::new(Iterative::new(IterativeKind::PgdL2, eps * 8.0, 10, step * 8.0, true, 0).unwrap()), eps * 8.0, true),
        (Box::new(Iterative::new(IterativeKind::MiFgsm { decay: 1.0 }, eps, 10, step, false, 0).unwrap()), eps, false),
    ]
}

#[test]
fn fgsm_matches_the_closed_form_on_a_linear_softmax_model() {
    let model = Linear::new(1);
    let (x, y) = batch(2, 16);
    let eps = 0.1;
    let adv = Fgsm::new(eps).unwrap().perturb(&model, &x, &y, &Goal::Untargeted).unwrap();
    // d CE / d x = W^T (softmax(Wx + b) - onehot(y))
    let p = model.logits(&x).softmax(1, Kind::Float);
    let grad = (p - y.one_hot(4).to_kind(Kind::Float)).matmul(&model.w).view([16, 1, 8, 8]);
    let expected = (&x + grad.sign() * eps).clamp(0.0, 1.0);
    assert!(adv.allclose(&expected, 1e-6, 1e-6, false));
    // Targeted: descend towards the target.
    let targets = (&y + 1).remainder(4);
    let adv = Fgsm::new(eps).unwrap().perturb(&model, &x, &y, &Goal::Targeted(targets.shallow_clone())).unwrap();
    let p = model.logits(&x).softmax(1, Kind::Float);
    let grad = (p - targets.one_hot(4).to_kind(Kind::Float)).matmul(&model.w).view([16, 1, 8, 8]);
    let expected = (&x - grad.sign() * eps).clamp(0.0, 1.0);
    assert!(adv.allclose(&expected, 1e-6, 1e-6, false));
}

#[test]
fn perturbations_stay_within_budget_and_pixels_in_range() {
    let model = Linear::new(3);
    let (x, y) = batch(4, 32);
    for eps in [0.0, 0.03, 0.1, 0.3] {
        for (attack, bound, is_l2) in all_attacks(eps) {
            let adv = attack.perturb(&model, &x, &y, &Goal::Untargeted).unwrap();
            assert_eq!(adv.size(), x.size());
            let delta = &adv - &x;
            let norm = if is_l2 { l2_norms(&delta) } else { linf_norms(&delta) };
            let worst = norm.max().double_value(&[]);
            assert!(worst <= bound + 1e-6, "{} eps {eps}: norm {worst} > {bound}", attack.name());
            assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0, "{}", attack.name());
        }
    }
}

#[test]
fn iterative_attacks_fool_a_linear_model_more_than_fgsm() {
    let model = Linear::new(5);
    let (x, _) = batch(6, 256);
    let y = model.logits(&x).argmax(1, false);
    let fooled = |adv: &Tensor| model.logits(adv).argmax(1, false).ne_tensor(&y).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    let eps = 0.02;
    let fgsm = fooled(&Fgsm::new(eps).unwrap().perturb(&model, &x, &y, &Goal::Untargeted).unwrap());
    let pgd = Iterative::new(IterativeKind::PgdLinf, eps, 20, eps / 4.0, true, 1).unwrap();
    let pgd = fooled(&pgd.perturb(&model, &x, &y, &Goal::Untargeted).unwrap());
    assert!(pgd >= fgsm, "pgd {pgd} < fgsm {fgsm}");
    assert!(pgd > 0.0);
}

#[test]
fn random_start_is_reproducible_with_a_seed() {
    let model = Linear::new(7);
    let (x, y) = batch(8, 8);
    let run = |seed| {
        Iterative::new(IterativeKind::PgdLinf, 0.1, 3, 0.02, true, seed)
            .unwrap()
            .perturb(&model, &x, &y, &Goal::Untargeted)
            .unwrap()
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

#[test]
fn cw_and_deepfool_find_small_adversarial_examples() {
    let model = Linear::new(9);
    let (x, _) = batch(10, 32);
    // Keep pixels away from the box so the linear boundary is reachable.
    let x = x * 0.5 + 0.25;
    let y = model.logits(&x).argmax(1, false);
    let deepfool = DeepFool::new(50, 0.02).unwrap().perturb(&model, &x, &y, &Goal::Untargeted).unwrap();
    let df_rate = model.logits(&deepfool).argmax(1, false).ne_tensor(&y).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!(df_rate > 0.9, "deepfool fooled {df_rate}");
    let cw = CarliniWagnerL2::new(100, 4, 0.05, 0.0, 1.0).unwrap().perturb(&model, &x, &y, &Goal::Untargeted).unwrap();
    let fooled = model.logits(&cw).argmax(1, false).ne_tensor(&y);
    let cw_rate = fooled.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!(cw_rate > 0.9, "cw fooled {cw_rate}");
    // On a linear model DeepFool's step is the exact minimal L2 perturbation (plus overshoot);
    // C&W should land in the same range, not far beyond it.
    let df_l2 = l2_norms(&(&deepfool - &x)).mean(Kind::Float).double_value(&[]);
    let cw_l2 = l2_norms(&(&cw - &x)).mean(Kind::Float).double_value(&[]);
    assert!(cw_l2 < df_l2 * 2.0, "cw mean L2 {cw_l2} vs deepfool {df_l2}");
    assert!(cw.min().double_value(&[]) >= 0.0 && cw.max().double_value(&[]) <= 1.0);
}

#[test]
fn bad_parameters_are_errors_not_panics() {
    assert_eq!(Fgsm::new(-0.1).unwrap_err(), AttackError::Epsilon(-0.1));
    assert!(matches!(Fgsm::new(f64::NAN).unwrap_err(), AttackError::Epsilon(_)));
    assert_eq!(Iterative::new(IterativeKind::PgdLinf, 0.1, 0, 0.01, true, 0).unwrap_err(), AttackError::Steps(0));
    assert_eq!(Iterative::new(IterativeKind::Bim, 0.1, 5, 0.0, false, 0).unwrap_err(), AttackError::StepSize(0.0));
    assert_eq!(
        Iterative::new(IterativeKind::MiFgsm { decay: -1.0 }, 0.1, 5, 0.01, false, 0).unwrap_err(),
        AttackError::Momentum(-1.0)
    );
    assert_eq!(CarliniWagnerL2::new(10, 1, 0.01, -1.0, 1.0).unwrap_err(), AttackError::Confidence(-1.0));
    assert_eq!(CarliniWagnerL2::new(10, 1, 0.01, 0.0, 0.0).unwrap_err(), AttackError::InitialConstant(0.0));
    assert_eq!(CarliniWagnerL2::new(10, 1, -0.01, 0.0, 1.0).unwrap_err(), AttackError::LearningRate(-0.01));
    assert_eq!(DeepFool::new(10, -0.5).unwrap_err(), AttackError::Overshoot(-0.5));

    let model = Linear::new(1);
    let (x, y) = batch(1, 4);
    let fgsm = Fgsm::new(0.1).unwrap();
    let err = fgsm.perturb(&model, &(&x * 3.0), &y, &Goal::Untargeted).unwrap_err();
    assert!(matches!(err, AttackError::BadInput(ref m) if m.contains("expected [0, 1]")), "{err}");
    let err = fgsm.perturb(&model, &x, &(&y + 10), &Goal::Untargeted).unwrap_err();
    assert!(matches!(err, AttackError::BadInput(ref m) if m.contains("labels span")), "{err}");
    let err = fgsm.perturb(&model, &x, &y.narrow(0, 0, 2), &Goal::Untargeted).unwrap_err();
    assert!(matches!(err, AttackError::BadInput(ref m) if m.contains("labels have shape")), "{err}");
    let err = DeepFool::new(5, 0.02).unwrap().perturb(&model, &x, &y, &Goal::Targeted(y.shallow_clone())).unwrap_err();
    assert_eq!(err, AttackError::TargetedUnsupported("deepfool"));
}

#[test]
fn early_stop_keeps_each_image_at_its_first_success() {
    let model = Linear::new(7);
    let (x, _) = batch(8, 64);
    // Label every image with its predicted class, so that all start correctly classified.
    let y = model.logits(&x).argmax(1, false);
    let (eps, steps, step) = (0.5, 20, 0.01);
    let full = Iterative::new(IterativeKind::Bim, eps, steps, step, false, 0).unwrap();
    let early = full.clone().with_early_stop(true);
    let adv_full = full.perturb(&model, &x, &y, &Goal::Untargeted).unwrap();
    let adv_early = early.perturb(&model, &x, &y, &Goal::Untargeted).unwrap();
    let fooled_full = model.logits(&adv_full).argmax(1, false).ne_tensor(&y);
    let fooled_early = model.logits(&adv_early).argmax(1, false).ne_tensor(&y);
    // Without a random start, BIM's path is deterministic: early stop visits the same
    // iterates and stops at the first that fools, so it fools the same images...
    assert!(fooled_full.equal(&fooled_early));
    let fooled = Vec::<bool>::try_from(fooled_early).unwrap();
    assert!(fooled.iter().filter(|&&f| f).count() > 10, "the attack should fool a fair share");
    // ...with perturbations no larger, and strictly smaller for some.
    let (n_full, n_early) = (linf_norms(&(&adv_full - &x)), linf_norms(&(&adv_early - &x)));
    let (n_full, n_early) = (Vec::<f32>::try_from(n_full).unwrap(), Vec::<f32>::try_from(n_early).unwrap());
    for i in 0..fooled.len() {
        if fooled[i] {
            assert!(n_early[i] <= n_full[i] + 1e-6, "image {i}: {} > {}", n_early[i], n_full[i]);
        }
    }
    assert!(n_early.iter().zip(&n_full).any(|(e, f)| e + 1e-4 < *f));
    // Early-stopped examples sit just past the decision boundary: less confident ones.
    let margin = |adv: &Tensor| {
        let p = model.logits(adv).softmax(1, Kind::Float);
        Vec::<f32>::try_from(p.amax([1i64].as_slice(), false)).unwrap()
    };
    let (conf_full, conf_early) = (margin(&adv_full), margin(&adv_early));
    let mean = |v: &[f32]| v.iter().zip(&fooled).filter(|(_, &f)| f).map(|(c, _)| *c as f64).sum::<f64>();
    assert!(mean(&conf_early) < mean(&conf_full), "early-stopped examples are less confident");
}
