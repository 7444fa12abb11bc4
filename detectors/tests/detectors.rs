use detectors::{
    lid_estimates, roc_auc, Detector, DetectorError, LidParams, LogisticDetector, LogisticDetectorParams,
    MahalanobisDetector, MahalanobisParams, MaxSoftmax,
};
use ndarray::{Array2, Axis};

/// A deterministic pseudo-random stream (no rand dependency needed for tests).
fn noise(seed: u64, n: usize) -> Vec<f64> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// Clean rows around 0, adversarial rows shifted by `shift` on the first feature.
fn two_blobs(n: usize, d: usize, shift: f64) -> (Array2<f64>, Vec<bool>) {
    let mut rows = Array2::from_shape_vec((2 * n, d), noise(3, 2 * n * d)).unwrap();
    for i in n..2 * n {
        rows[[i, 0]] += shift;
    }
    let labels = (0..2 * n).map(|i| i >= n).collect();
    (rows, labels)
}

#[test]
fn fitted_detectors_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LogisticDetector>();
    assert_send_sync::<MahalanobisDetector>();
    assert_send_sync::<MaxSoftmax>();
    assert_send_sync::<Box<dyn Detector>>();
}

#[test]
fn logistic_detector_separates_blobs_and_calibrates_its_threshold() {
    let (rows, labels) = two_blobs(200, 4, 3.0);
    let mut detector = LogisticDetectorParams::new("path").check().unwrap().fit(rows.view(), &labels).unwrap();
    let scores = detector.score(rows.view()).unwrap();
    assert!(scores.iter().all(|&s| (0.0..=1.0).contains(&s)));
    let auc = roc_auc(scores.as_slice().unwrap(), &labels).unwrap();
    assert!(auc > 0.97, "auc {auc}");
    let clean = rows.slice(ndarray::s![..200, ..]);
    detector.calibrate(clean, 0.05).unwrap();
    let flagged = detector.score(clean).unwrap().iter().filter(|&&s| s >= detector.threshold).count();
    assert!(flagged <= 10, "{flagged} of 200 clean rows flagged at 5% FPR");
    // Serialises and comes back identical.
    let json = serde_json::to_string(&detector).unwrap();
    let back: LogisticDetector = serde_json::from_str(&json).unwrap();
    assert_eq!(back, detector);
}

#[test]
fn logistic_parameters_and_data_are_validated() {
    let e = LogisticDetectorParams::new("x").regularisation(-1.0).check().unwrap_err();
    assert_eq!(e, DetectorError::Regularisation(-1.0));
    let e = LogisticDetectorParams::new("x").max_iterations(0).check().unwrap_err();
    assert_eq!(e, DetectorError::MaxIterations(0));
    let params = LogisticDetectorParams::new("x").check().unwrap();
    let (rows, labels) = two_blobs(10, 2, 1.0);
    assert_eq!(params.fit(rows.view(), &labels[..5]).unwrap_err(), DetectorError::LabelCount { rows: 20, labels: 5 });
    assert_eq!(params.fit(rows.view(), &[false; 20]).unwrap_err(), DetectorError::OneClass { clean: 20, adversarial: 0 });
    let mut bad = rows.clone();
    bad[[3, 1]] = f64::NAN;
    assert!(matches!(params.fit(bad.view(), &labels).unwrap_err(), DetectorError::NonFinite { row: 3, col: 1, .. }));
    let detector = params.fit(rows.view(), &labels).unwrap();
    let wide = Array2::<f64>::zeros((2, 3));
    assert_eq!(detector.score(wide.view()).unwrap_err(), DetectorError::FeatureCount { expected: 2, found: 3 });
}

#[test]
fn mahalanobis_scores_far_rows_higher() {
    let n = 300;
    let mut rows = Array2::from_shape_vec((n, 3), noise(7, n * 3)).unwrap();
    let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
    for (i, mut row) in rows.axis_iter_mut(Axis(0)).enumerate() {
        row[0] += if labels[i] == 1 { 5.0 } else { -5.0 };
    }
    let detector = MahalanobisParams::new(2).fit(rows.view(), &labels).unwrap();
    let probe = ndarray::array![[5.0, 0.0, 0.0], [-5.0, 0.1, 0.0], [0.0, 4.0, -4.0]];
    let scores = detector.score(probe.view()).unwrap();
    assert!(scores[2] > 0.9 && scores[0] < 0.5 && scores[1] < 0.5, "{scores}");
    let e = MahalanobisParams::new(3).fit(rows.view(), &labels).unwrap_err();
    assert_eq!(e, DetectorError::EmptyClass { class: 2 });
}

#[test]
fn lid_is_higher_off_a_low_dimensional_manifold() {
    // Reference: points on a line in 5-D; a point on the line has low LID, noise has more.
    let n = 200;
    let t = noise(11, n);
    let mut reference = Array2::<f64>::zeros((n, 5));
    for i in 0..n {
        reference[[i, 0]] = t[i];
        reference[[i, 1]] = 2.0 * t[i];
    }
    let on_line = ndarray::array![[0.1, 0.2, 0.0, 0.0, 0.0]];
    let off = Array2::from_shape_vec((1, 5), noise(12, 5)).unwrap();
    let params = LidParams { k: 20 };
    let low = lid_estimates(on_line.view(), reference.view(), &params).unwrap()[0];
    let high = lid_estimates(off.view(), reference.view(), &params).unwrap()[0];
    assert!(low < high, "on-line LID {low} >= off-line {high}");
    let e = lid_estimates(on_line.view(), reference.view(), &LidParams { k: n }).unwrap_err();
    assert_eq!(e, DetectorError::Neighbours { k: n, reference: n });
}

#[test]
fn max_softmax_is_one_minus_top_probability() {
    let probs = ndarray::array![[0.9, 0.1], [0.5, 0.5]];
    let s = MaxSoftmax.score(probs.view()).unwrap();
    assert!((s[0] - 0.1).abs() < 1e-12 && (s[1] - 0.5).abs() < 1e-12);
}

#[test]
fn logistic_detector_reaches_auc_one_when_separable_and_chance_when_not() {
    let (rows, labels) = two_blobs(200, 4, 10.0);
    let detector = LogisticDetectorParams::new("x").check().unwrap().fit(rows.view(), &labels).unwrap();
    let scores = detector.score(rows.view()).unwrap();
    assert_eq!(roc_auc(scores.as_slice().unwrap(), &labels).unwrap(), 1.0);

    // Identical distributions: fitted on one sample, judged on a fresh one.
    let (rows, labels) = two_blobs(300, 4, 0.0);
    let detector = LogisticDetectorParams::new("x").check().unwrap().fit(rows.view(), &labels).unwrap();
    let fresh = Array2::from_shape_vec((600, 4), noise(99, 2400)).unwrap();
    let scores = detector.score(fresh.view()).unwrap();
    let auc = roc_auc(scores.as_slice().unwrap(), &labels).unwrap();
    assert!((auc - 0.5).abs() < 0.08, "auc {auc} on identical distributions");
}
