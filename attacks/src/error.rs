/// Why an attack cannot run. One variant per validation rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttackError {
    #[error("eps must be a finite number >= 0, got {0}")]
    Epsilon(f64),
    #[error("steps must be >= 1, got {0}")]
    Steps(usize),
    #[error("step size must be a finite number > 0, got {0}")]
    StepSize(f64),
    #[error("momentum decay must be a finite number >= 0, got {0}")]
    Momentum(f64),
    #[error("confidence (kappa) must be a finite number >= 0, got {0}")]
    Confidence(f64),
    #[error("initial constant c must be a finite number > 0, got {0}")]
    InitialConstant(f64),
    #[error("learning rate must be a finite number > 0, got {0}")]
    LearningRate(f64),
    #[error("overshoot must be a finite number >= 0, got {0}")]
    Overshoot(f64),
    #[error("lambda (the detector's weight) must be a finite number > 0, got {0}")]
    Lambda(f64),
    #[error("the path distance's weight must be a finite number > 0, got {0}")]
    PathWeight(f64),
    #[error("restarts must be >= 1, got {0}")]
    Restarts(usize),
    #[error("{0} does not support targeted attacks")]
    TargetedUnsupported(&'static str),
    #[error("invalid input: {0}")]
    BadInput(String),
    #[error("libtorch: {0}")]
    Torch(String),
    #[error("cancelled: the caller gave up before the attack finished")]
    Cancelled,
}

impl From<tch::TchError> for AttackError {
    fn from(e: tch::TchError) -> Self {
        AttackError::Torch(e.to_string())
    }
}

pub(crate) fn check_eps(eps: f64) -> Result<(), AttackError> {
    if eps.is_finite() && eps >= 0.0 { Ok(()) } else { Err(AttackError::Epsilon(eps)) }
}

pub(crate) fn check_steps(steps: usize) -> Result<(), AttackError> {
    if steps >= 1 { Ok(()) } else { Err(AttackError::Steps(steps)) }
}

pub(crate) fn check_positive(value: f64, error: fn(f64) -> AttackError) -> Result<(), AttackError> {
    if value.is_finite() && value > 0.0 { Ok(()) } else { Err(error(value)) }
}

pub(crate) fn check_non_negative(value: f64, error: fn(f64) -> AttackError) -> Result<(), AttackError> {
    if value.is_finite() && value >= 0.0 { Ok(()) } else { Err(error(value)) }
}
