//! The one integration-test binary (libtorch is linked once, not once per test file).

mod adaptive_report;
mod attack_sets;
mod bench;
mod checkpoint;
mod cli;
mod corruptions;
mod data;
mod data_formats;
mod detector;
mod evaluation;
mod gated_execution;
mod fuzz;
mod hostile;
mod http;
mod images;
mod kserve;
mod linking;
mod path_statistics;
mod paths;
mod python_client;
mod resnet;
mod pytorch_reference;
mod service;
mod shipped_model;
mod training_runs;

use std::path::PathBuf;

/// The repository root (tests run from the package root, but be explicit).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped default model.
pub fn default_model_dir() -> PathBuf {
    repo_root().join("models/default")
}
