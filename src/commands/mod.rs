//! The `pathguard` binary's subcommands, each with its flags and its `run` (main.rs only
//! dispatches); shared flags in data_args.rs.

pub mod adaptive;
pub mod attack;
pub mod bench;
pub mod corrupt;
pub mod data_args;
pub mod detector;
pub mod distribution;
pub mod explain;
pub mod load_test;
pub mod model;
pub mod paths;
pub mod service;
pub mod stage_times;
pub mod train;
