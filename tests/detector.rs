//! Fitting the path-statistics detector on the shipped model (a small, fast configuration).

use std::process::Command;

use pathguard::detector::PathDetector;
use pathguard::model::Checkpoint;
use tch::Device;

/// Fits (in a small, fast configuration) twice: plainly, and with mildly corrupted training
/// images counted as clean (`--benign-corruptions`), which must flag Gaussian noise
/// (severity 2) less often than the plain fit.
#[test]
fn fit_detector_writes_a_detector_that_loads_beats_chance_and_can_learn_benign_corruptions() {
    let dir = tempfile::tempdir().unwrap();
    let fit = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let run = Command::new(env!("CARGO_BIN_EXE_pathguard"))
            .args(["fit-detector", "--device", "cpu", "--limit", "400", "--methods", "fgsm,pgd,pgd-early-stop", "--eps", "0.1"])
            .args(["--pgd-steps", "5", "--calibration-images", "1000", "--model"])
            .arg(crate::default_model_dir())
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        out
    };
    let out = fit("detector.json", &[]);
    let checkpoint = Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let detector = PathDetector::load(&out, checkpoint.model_hash()).unwrap();
    let record = detector.record.as_ref().unwrap();
    assert_eq!(record.attacks, vec!["fgsm eps 0.1", "pgd eps 0.1 (5 steps)", "pgd eps 0.1 (5 steps, early stop)"]);
    assert!(record.clean_rows > 100 && record.adversarial_rows > 100, "{record:?}");
    assert!(record.validation.auroc > 0.6, "validation AUROC {}", record.validation.auroc);
    assert!((0.0..=1.0).contains(&detector.threshold()));
    // The threshold is set on every clean held-out image (80 of 400) and the 1,000 training
    // images after them, right or wrong, so that its 5% holds on unseen clean images.
    assert_eq!(record.threshold_rows, 80 + 1000, "{record:?}");
    assert_eq!(record.calibration, "training images 400-1400");
    // Two experts: gate logits (full-strength attacks) and path statistics (early-stopped PGD).
    assert_eq!(detector.experts.len(), 2);
    assert_eq!(detector.experts[0].features.len(), 624);
    assert_eq!(detector.experts[0].attacks, vec!["fgsm eps 0.1", "pgd eps 0.1 (5 steps)"]);
    assert_eq!(detector.experts[1].features.len(), 33);
    assert_eq!(detector.experts[1].attacks, vec!["pgd eps 0.1 (5 steps, early stop)"]);

    // Scores of a real forward pass are in [0, 1].
    let test = pathguard::data::fashion_mnist::load(&pathguard::data::fashion_mnist::default_dir(), pathguard::data::Split::Test)
        .unwrap()
        .take(16);
    let out_pass = tch::no_grad(|| checkpoint.model.forward_with_path(&test.images, pathguard::model::GateMode::Eval));
    let scores = detector.score(&out_pass).unwrap();
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    // ... and flags about 5% of 2,000 clean test images it never saw (binomial sd 0.5 points).
    let unseen = pathguard::data::fashion_mnist::load(&pathguard::data::fashion_mnist::default_dir(), pathguard::data::Split::Test)
        .unwrap()
        .take(2000);
    let unseen_pass = tch::no_grad(|| checkpoint.model.forward_with_path(&unseen.images, pathguard::model::GateMode::Eval));
    let flagged = detector.score(&unseen_pass).unwrap().iter().filter(|&&s| s >= detector.threshold()).count();
    assert!((60..=140).contains(&flagged), "{flagged} of 2000 clean test images flagged at a 5% threshold");

    // A detector refuses a model it was not fitted on.
    let err = PathDetector::load(&out, &"0".repeat(64)).unwrap_err().to_string();
    assert!(err.contains("fitted on model") && err.contains("fit-detector"), "{err}");

    let plain = detector;
    // Calibrated on held-out test images this time: the last 1,000, not the 200 below.
    let benign_fit = fit("benign.json", &["--benign-corruptions", "--calibration-split", "test"]);
    let benign = PathDetector::load(&benign_fit, checkpoint.model_hash()).unwrap();
    let record = benign.record.as_ref().unwrap();
    assert_eq!(record.calibration, "the last 1000 test images (9000-10000)");
    assert!(record.benign_corruption_rows > 100, "{record:?}");
    assert!(record.clean_rows > record.benign_corruption_rows, "clean rows include the corrupted ones");
    assert_eq!(plain.record.as_ref().unwrap().benign_corruption_rows, 0);
    let test = pathguard::data::fashion_mnist::load(&pathguard::data::fashion_mnist::default_dir(), pathguard::data::Split::Test)
        .unwrap()
        .take(200);
    let noisy = pathguard::corruptions::find("gaussian-noise").unwrap().apply(&test.images, 2, 0).unwrap();
    let noisy_pass = tch::no_grad(|| checkpoint.model.forward_with_path(&noisy, pathguard::model::GateMode::Eval));
    let flag_rate = |d: &PathDetector| d.score(&noisy_pass).unwrap().iter().filter(|&&s| s >= d.threshold()).count();
    let (p, b) = (flag_rate(&plain), flag_rate(&benign));
    assert!(b < p, "noisy images flagged: {b}/200 with benign corruptions in the fit, {p}/200 without");

    // Calibrating on every test image would leave none to measure on: refused, by name.
    let run = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["fit-detector", "--device", "cpu", "--limit", "400", "--calibration-split", "test", "--calibration-images", "10000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("--calibration-images 10000"), "{stderr}");

    std::fs::write(&out, b"{ not json").unwrap();
    assert!(PathDetector::load(&out, checkpoint.model_hash()).unwrap_err().to_string().contains("not a valid detector file"));
}

/// `fit-detector --harden-rounds 1` (small and fast): the detector-aware images that fool the
/// model become positives of both experts, and the record holds round 0 (before) and round 1
/// with the attack's SR@5 on the validation images.
#[test]
fn hardening_refits_both_experts_on_detector_aware_attacks_and_records_each_round() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hardened.json");
    let run = Command::new(env!("CARGO_BIN_EXE_pathguard"))
        .args(["fit-detector", "--device", "cpu", "--limit", "60", "--methods", "fgsm,pgd-early-stop", "--eps", "0.1"])
        .args(["--pgd-steps", "5", "--harden-rounds", "1", "--harden-eps", "0.1", "--harden-steps", "5", "--model"])
        .arg(crate::default_model_dir())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("hardening round 1:") && stdout.contains("SR@5"), "{stdout}");
    let checkpoint = Checkpoint::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let detector = PathDetector::load(&out, checkpoint.model_hash()).unwrap();
    let record = detector.record.as_ref().unwrap();
    let adaptive = "adaptive round 1 eps 0.1 (5 steps)";
    assert_eq!(record.attacks, vec!["fgsm eps 0.1", "pgd eps 0.1 (5 steps, early stop)", adaptive]);
    let rounds: Vec<(usize, usize)> = record.hardening.iter().map(|r| (r.round, r.added_rows)).collect();
    assert_eq!(rounds.len(), 2, "{rounds:?}");
    assert_eq!(rounds[0], (0, 0));
    // 48 fitting images, 5 steps of 0.01 on a model that is not robust: most are fooled.
    assert!(rounds[1].0 == 1 && rounds[1].1 > 15, "{rounds:?}");
    for round in &record.hardening {
        assert_eq!(round.budgets.len(), 1);
        let b = &round.budgets[0];
        assert!(b.eps == 0.1 && (0.0..=1.0).contains(&b.sr_at_5) && b.sr_at_5 <= b.misclassified, "{b:?}");
    }
    assert_eq!(detector.experts[0].attacks, vec!["fgsm eps 0.1", adaptive]);
    assert_eq!(detector.experts[1].attacks, vec!["pgd eps 0.1 (5 steps, early stop)", adaptive]);
    assert!(record.adversarial_rows > rounds[1].1, "{record:?}");
}

/// The differentiable twin scores exactly what the shipped detector scores, on clean and on
/// PGD images, and its gradient reaches the input through the gates.
#[test]
fn detector_twin_matches_the_shipped_detector_and_has_a_gradient() {
    use pathguard::attack_set::{run_attack, GateGradient};
    use pathguard::attack_spec::{AttackName, AttackParams};
    use pathguard::data::fashion_mnist::{self, default_dir};
    use pathguard::data::Split;
    use pathguard::detector_twin::DetectorTwin;
    use pathguard::model::GateMode;
    use pathguard::screener::Screener;

    let screener = Screener::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let (model, detector) = (&screener.checkpoint.model, &screener.detector);
    let test = fashion_mnist::load(&default_dir(), Split::Test).unwrap().take(96);
    let indices = tch::Tensor::arange(96, (tch::Kind::Int64, Device::Cpu));
    let params = AttackParams { steps: Some(10), random_start: true, ..AttackParams::new(AttackName::Pgd, 0.1) }.check().unwrap();
    let attacked = run_attack(model, Device::Cpu, &test, &indices, &params, GateGradient::Surrogate, 96, false).unwrap();
    let twin = DetectorTwin::new(detector, Device::Cpu);
    for (what, images) in [("clean", &test.images), ("pgd", &attacked.adversarial)] {
        let real = tch::no_grad(|| detector.score(&model.forward_with_path(images, GateMode::Eval))).unwrap();
        let ours = tch::no_grad(|| twin.scores(&model.forward_with_path(images, GateMode::EvalSurrogate)));
        let ours = Vec::<f64>::try_from(ours).unwrap();
        let worst = real.iter().zip(&ours).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-4, "{what}: twin and detector differ by up to {worst}");
    }
    // The scores differ between clean and attacked images (the parity is not trivially 0 = 0).
    let flagged = |images: &tch::Tensor| {
        let scores = tch::no_grad(|| detector.score(&model.forward_with_path(images, GateMode::Eval))).unwrap();
        scores.iter().filter(|&&s| s >= detector.threshold()).count()
    };
    assert!(flagged(&attacked.adversarial) > flagged(&test.images) + 20);
    // A gradient of the score with respect to the input, finite and not zero.
    let x = attacked.adversarial.narrow(0, 0, 8).detach().set_requires_grad(true);
    let score = twin.scores(&model.forward_with_path(&x, GateMode::EvalSurrogate)).sum(tch::Kind::Double);
    let grad = tch::Tensor::run_backward(&[score], &[&x], false, false).pop().unwrap();
    let norm = grad.abs().sum(tch::Kind::Double).double_value(&[]);
    assert!(norm.is_finite() && norm > 0.0, "gradient L1 norm {norm}");
}

/// Attacks that know the detector evade it far more often than PGD that ignores it, and every
/// success they report holds on the real detector with hard gates.
#[test]
fn detector_aware_attacks_evade_more_than_oblivious_pgd() {
    use attacks::{AdaptiveKind, AdaptivePgd};
    use pathguard::attack_set::{run_attack, GateGradient};
    use pathguard::attack_spec::{AttackName, AttackParams};
    use pathguard::data::fashion_mnist::{self, default_dir};
    use pathguard::data::Split;
    use pathguard::guarded_model::GuardedModel;
    use pathguard::model::GateMode;
    use pathguard::screener::Screener;

    let screener = Screener::load(&crate::default_model_dir(), Device::Cpu).unwrap();
    let (model, detector) = (&screener.checkpoint.model, &screener.detector);
    let n = 64;
    let test = fashion_mnist::load(&default_dir(), Split::Test).unwrap().take(n);
    let (eps, steps) = (0.1, 40);
    // Evaded: misclassified and not flagged, on the real detector with hard gates.
    let evaded = |adversarial: &tch::Tensor| -> usize {
        let out = tch::no_grad(|| model.forward_with_path(adversarial, GateMode::Eval));
        let scores = detector.score(&out).unwrap();
        let wrong = Vec::<bool>::try_from(out.logits.argmax(1, false).ne_tensor(&test.labels)).unwrap();
        let linf = Vec::<f32>::try_from(attacks::linf_norms(&(adversarial - &test.images))).unwrap();
        assert!(linf.iter().all(|&d| d <= eps as f32 + 1e-5), "within the budget");
        wrong.iter().zip(scores.iter()).filter(|(&w, &s)| w && s < detector.threshold()).count()
    };
    let indices = tch::Tensor::arange(n as i64, (tch::Kind::Int64, Device::Cpu));
    let params = AttackParams { steps: Some(steps), random_start: true, ..AttackParams::new(AttackName::Pgd, eps) }.check().unwrap();
    let oblivious = run_attack(model, Device::Cpu, &test, &indices, &params, GateGradient::Surrogate, n, false).unwrap();
    let oblivious = evaded(&oblivious.adversarial);
    let references = fashion_mnist::load(&default_dir(), Split::Train).unwrap().take(500);
    let guarded = GuardedModel::new(model, detector, Device::Cpu).with_reference_paths(&references.images, &references.labels).unwrap();
    let mut report = vec![format!("oblivious pgd: {oblivious}/{n}")];
    let mut best = 0;
    for kind in [
        AdaptiveKind::Selective,
        AdaptiveKind::Orthogonal,
        AdaptiveKind::Lagrangian { lambda: 1.0 },
        AdaptiveKind::ExtraClass,
        AdaptiveKind::PathMatching { weight: 1.0 },
    ] {
        let attack = AdaptivePgd::new(kind, eps, steps as usize, eps / 10.0, true, 0).unwrap();
        let adversarial = attack.perturb(&guarded, &test.images, &test.labels, &attacks::Goal::Untargeted).unwrap();
        let e = evaded(&adversarial);
        report.push(format!("{}: {e}/{n}", attack.name()));
        best = best.max(e);
    }
    eprintln!("evasion at eps {eps}, {steps} steps: {}", report.join(", "));
    assert!(best > oblivious + n / 8, "{}", report.join(", "));
}
