//! pathguard screens images for adversarial examples by their *calculation paths*.
//!
//! Data flows one way: image bytes -> tensor -> decoupled CNN (logits + path) -> path
//! features -> detector score -> response. Attacks (the `attacks` crate) feed the same model
//! from the side.
//!
//! - [`data`]: IDX(.gz) reader, Fashion-MNIST, PNG and NPY user images. Pixel convention:
//!   float32 in [0, 1], NCHW (`[N, 1, 28, 28]`).
//! - [`model`]: the decoupled CNN of Li et al. (ECCV 2020): configuration, the architecture
//!   controlling module (gates), the network whose forward pass returns logits and path, the
//!   three decoupling losses, and safetensors checkpoints with a JSON config.
//! - [`train`]: the training loop (joint or pretrain-then-decouple, clean or adversarial via
//!   [`adversarial_training`]) and evaluation (accuracy,
//!   open-gate fractions, conv FLOPs a path needs, distances between class templates).
//! - [`path`]: per-class path templates and distances.
//! - [`attack_spec`]: which attack with which parameters (the user's settings, checked into
//!   one [`attack_spec::Attack`] variant with exactly its own parameters).
//! - [`attack_set`]: attacks from the `attacks` crate run against the model over a data
//!   slice, written as NPY files, a JSON manifest and a PNG contact sheet ([`preview`]).
//! - [`representations`]: every view detectors take of a batch (path features, path bits,
//!   gate logits, probabilities, penultimate features, pooled activations), one forward pass.
//! - [`detector`], [`detector_fit`]: the path-statistics detector, its fitting on clean versus
//!   attacked training images ([`attack_material`]) and `detector.json`.
//! - [`evaluation`]: `pathguard evaluate`, our detector against the baselines, seen and unseen
//!   attacks, report.md / report.json / roc.png.
//! - [`screener`]: screening in process (model + detector -> prediction, score, path summary).
//! - [`service`]: the gRPC server (`pathguard.v1.Screening`, health, reflection, metrics) and
//!   the `pathguard screen` client.
//! - [`device`]: `auto | cpu | cuda[:N]`.

pub mod adversarial_training;
pub mod atomic;
pub mod attack_material;
pub mod attack_set;
pub mod attack_spec;
pub mod compact;
pub mod corruption_set;
pub mod corruptions;
pub mod data;
pub mod detector;
pub mod detector_fit;
pub mod detector_hardening;
pub mod detector_twin;
pub mod device;
pub mod distribution;
pub mod error;
pub mod evaluation;
pub mod guarded_model;
pub mod model;
pub mod path;
pub mod preview;
pub mod progress;
pub mod representations;
pub mod screener;
pub mod service;

pub mod train;

pub use error::{Error, Result};
