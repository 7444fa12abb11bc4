//! Subcommands of the `pathguard` binary that live outside main.rs (the binary's modules, not
//! the library's).

pub mod adaptive;
pub mod bench;
pub mod corrupt;
pub mod data_args;
pub mod distribution;
pub mod explain;
pub mod load_test;
pub mod paths;
pub mod service;
pub mod stage_times;
pub mod train;
