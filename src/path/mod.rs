//! Calculation paths: the eval-mode gates of every gated layer, per-class templates, and the
//! path features detectors are fitted on (converted from tch to ndarray here, so that the
//! `detectors` crate never sees a tensor).

pub mod analysis;
pub mod features;
pub mod plots;
pub mod templates;

pub use features::{path_features, FeatureSpec, FEATURE_KINDS};
pub use templates::{class_templates, off_diagonal_mean_min, template_hamming, PathTemplates};
