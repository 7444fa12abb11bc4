/// Why a detector cannot be fitted or used. One variant per rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DetectorError {
    #[error("no rows to fit or score")]
    Empty,
    #[error("{rows} rows but {labels} labels")]
    LabelCount { rows: usize, labels: usize },
    #[error("fitting needs both clean and adversarial rows; got {clean} clean and {adversarial} adversarial")]
    OneClass { clean: usize, adversarial: usize },
    #[error("rows have {found} features; the detector was fitted on {expected}")]
    FeatureCount { expected: usize, found: usize },
    #[error("value {value} at row {row}, column {col} is not finite")]
    NonFinite { row: usize, col: usize, value: f64 },
    #[error("regularisation must be a finite number >= 0, got {0}")]
    Regularisation(f64),
    #[error("max iterations must be >= 1, got {0}")]
    MaxIterations(u64),
    #[error("target false-positive rate must be in (0, 1), got {0}")]
    FalsePositiveRate(f64),
    #[error("k must be >= 1 and smaller than the reference set ({reference} rows), got {k}")]
    Neighbours { k: usize, reference: usize },
    #[error("class {class} has no rows to estimate its mean from")]
    EmptyClass { class: usize },
    #[error("label {label} at row {row} is not below the class count {classes}")]
    ClassLabel { row: usize, label: usize, classes: usize },
    #[error("fitting failed: {0}")]
    Fit(String),
}
