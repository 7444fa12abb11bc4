//! The crate's one error type. Every variant names what was wrong and where.

use std::path::PathBuf;

/// Errors of the pathguard library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An IDX file (the MNIST family's format) is malformed.
    #[error("{}: not a valid IDX file: {reason}", path.display())]
    Idx { path: PathBuf, reason: String },
    /// A user image (PNG or NPY) cannot be used as model input.
    #[error("{}: cannot use as model input: {reason}", path.display())]
    Image { path: PathBuf, reason: String },
    /// A data set on disk is inconsistent (counts, shapes, labels).
    #[error("data set {}: {reason}", path.display())]
    Dataset { path: PathBuf, reason: String },
    /// A model checkpoint is missing, truncated or does not match its config.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    /// A model or training configuration breaks a rule.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A tensor given to the model has the wrong shape, type or values.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The requested device cannot be used.
    #[error("device: {0}")]
    Device(String),
    /// The caller gave up (went away, or its deadline passed) before the work finished.
    #[error("cancelled before it finished")]
    Cancelled,
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A detector (from the `detectors` crate) could not be fitted or scored.
    #[error("{what}: {source}")]
    Detector {
        what: String,
        #[source]
        source: detectors::DetectorError,
    },
    /// An attack (from the `attacks` crate) could not be built or run.
    #[error("{what}: {source}")]
    Attack {
        what: String,
        #[source]
        source: attacks::AttackError,
    },
    /// There is nothing to compute on: no images, or no attack that succeeded.
    #[error("{0}")]
    NoData(String),
    /// The server or one of its workers failed while running.
    #[error("serving: {0}")]
    Service(String),
    /// Loading one of a server's models failed.
    #[error("model {name:?}: {source}")]
    Model {
        name: String,
        #[source]
        source: Box<Error>,
    },
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A `detectors` error, saying what was being done.
    pub(crate) fn detector(what: impl Into<String>) -> impl FnOnce(detectors::DetectorError) -> Self {
        let what = what.into();
        move |source| Error::Detector { what, source }
    }

    /// An `attacks` error, saying what was being done.
    pub(crate) fn attack(what: impl Into<String>) -> impl FnOnce(attacks::AttackError) -> Self {
        let what = what.into();
        move |source| Error::Attack { what, source }
    }
}
