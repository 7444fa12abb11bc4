//! The decoupled CNN (Li et al., ECCV 2020): a VGG-style network whose gated conv layers
//! each carry an architecture controlling module that switches filters on or off per input.

pub mod checkpoint;
pub mod config;
pub mod decoupled;
pub mod execution;
pub mod gate;
pub mod gated;
#[cfg(target_arch = "x86_64")]
mod conv_avx512;
mod host_ops;
pub mod losses;

pub use checkpoint::{Checkpoint, ModelMeta};
pub use config::{LossWeights, ModelConfig};
pub use decoupled::{DecoupledCnn, ForwardOutput};
pub use gate::GateMode;
pub use execution::{Execution, Inference, Strategy};
pub use gated::GatedNetwork;
