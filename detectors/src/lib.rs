//! Adversarial-input detectors on feature rows (ndarray + linfa, no tch).
//!
//! The detectors arrive with the detector issue; this crate is a leaf: it takes feature rows
//! from any source and knows nothing of the model or the server.
