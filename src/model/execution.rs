//! How an eval-mode forward pass runs: dense (every filter of every layer), gated (only the
//! filters on the inputs' paths, see `gated.rs`), or auto: whichever measured faster for the
//! batch size on this kind of device.

use serde::Serialize;
use tch::{Device, Tensor};

use super::decoupled::{DecoupledCnn, ForwardOutput};
use super::gated::GatedNetwork;
use crate::error::Result;

/// The user's choice, as `--execution` takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    /// Every filter of every layer (the training graph in eval mode).
    Dense,
    /// Only the open filters: one pass per input for small batches (for every batch where
    /// images run on the host with the AVX-512 convolution); for larger ones, the union of
    /// the inputs' open filters in each layer (the gates zero the rest).
    Gated,
    /// Whichever measured faster for the batch size on the CPU; dense on CUDA (see
    /// `Inference::strategy`).
    #[default]
    Auto,
}

/// How one batch actually runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Dense,
    /// One gated pass over the batch, computing the union of its open filters per layer.
    GatedUnion,
    /// One gated pass per input.
    GatedEach,
}

/// A model's inference passes, prepared for the chosen execution.
#[derive(Debug)]
pub struct Inference {
    execution: Execution,
    gated: Option<GatedNetwork>,
    /// Whether one image runs wholly on the host with the AVX-512 convolution (a plain network
    /// on a CPU that has it): then one gated pass per input beats the others at every batch size.
    each_on_host: bool,
}

impl Inference {
    /// Prepares `model` (folds its BatchNorm into copies of the conv weights unless dense).
    pub fn new(model: &DecoupledCnn, execution: Execution) -> Result<Self> {
        let gated = match execution {
            Execution::Dense => None,
            Execution::Gated | Execution::Auto => Some(GatedNetwork::new(model)?),
        };
        let each_on_host = gated.as_ref().is_some_and(GatedNetwork::runs_on_host) && super::host_ops::simd_convolution();
        Ok(Inference { execution, gated, each_on_host })
    }

    pub fn execution(&self) -> Execution {
        self.execution
    }

    /// What runs a batch of `n` on `device`. The choices are measured (`pathguard bench
    /// execution`, BENCHMARKS.md "Gated execution", 2 CPU cores). Where images run wholly on
    /// the host with the AVX-512 convolution, one gated pass per input (spread over the
    /// intra-op threads) is ahead of dense and of the union at every batch size (3.2x dense at
    /// batch 1, 1.3x at 128 on one thread). Otherwise (a residual network, or a CPU without
    /// AVX-512): one gated pass per input is about 2x dense at batch 1 and still ahead at 2,
    /// level with dense at 4 and behind it from 8 on; the union pass is behind at 2-4, level
    /// at 8-32 and 7-10% ahead at 64-128 (almost every filter is open for some input of a
    /// large batch, so the union saves little, but the folded BatchNorm saves an op per
    /// layer). On CUDA every gated layer waits for the host to read its open set, which the
    /// GPU's idle filters cannot repay; auto stays dense there (not measured on a GPU yet).
    pub fn strategy(&self, n: i64, device: Device) -> Strategy {
        // Auto: per input while that beats dense; the union once it beats dense.
        const EACH_UP_TO: i64 = 2;
        const UNION_FROM: i64 = 64;
        // Gated: per input while that beats the union.
        const GATED_EACH_UP_TO: i64 = 4;
        match (self.execution, device) {
            (Execution::Dense, _) => Strategy::Dense,
            (Execution::Gated | Execution::Auto, Device::Cpu) if self.each_on_host => Strategy::GatedEach,
            (Execution::Gated, _) if n <= GATED_EACH_UP_TO => Strategy::GatedEach,
            (Execution::Gated, _) => Strategy::GatedUnion,
            (Execution::Auto, Device::Cpu) if n <= EACH_UP_TO => Strategy::GatedEach,
            (Execution::Auto, Device::Cpu) if n >= UNION_FROM => Strategy::GatedUnion,
            (Execution::Auto, _) => Strategy::Dense,
        }
    }

    /// The eval-mode (hard gates, no gradient) forward pass with the MI-head logits the path
    /// features need: the same values whichever way it runs, up to float rounding.
    pub fn forward(&self, model: &DecoupledCnn, x: &Tensor) -> Result<ForwardOutput> {
        self.forward_with(model, x, self.strategy(x.size()[0], x.device()))
    }

    /// [`Inference::forward`] with the strategy forced (for measuring them side by side).
    pub fn forward_with(&self, model: &DecoupledCnn, x: &Tensor, strategy: Strategy) -> Result<ForwardOutput> {
        model.check_input(x)?;
        let gated = match (&self.gated, strategy) {
            (_, Strategy::Dense) | (None, _) => return Ok(model.forward_for_screening(x)),
            (Some(gated), _) => gated,
        };
        match strategy {
            Strategy::GatedEach => gated.forward_each(x, true),
            _ => gated.forward(x, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use tch::nn;

    /// Auto runs one gated pass per input at every batch size where images run on the host
    /// with the AVX-512 convolution, and keeps the measured thresholds elsewhere.
    #[test]
    fn auto_follows_where_images_run() {
        let vs = nn::VarStore::new(Device::Cpu);
        let plain = DecoupledCnn::new(&vs.root(), &ModelConfig::tiny()).unwrap();
        let auto = Inference::new(&plain, Execution::Auto).unwrap();
        let big_batch = if super::super::host_ops::simd_convolution() { Strategy::GatedEach } else { Strategy::GatedUnion };
        assert_eq!(auto.strategy(1, Device::Cpu), Strategy::GatedEach);
        assert_eq!(auto.strategy(128, Device::Cpu), big_batch);
        assert_eq!(auto.strategy(1, Device::Cuda(0)), Strategy::Dense);
        assert_eq!(Inference::new(&plain, Execution::Dense).unwrap().strategy(1, Device::Cpu), Strategy::Dense);

        let vs = nn::VarStore::new(Device::Cpu);
        let resnet = DecoupledCnn::new(&vs.root(), &ModelConfig::resnet(&[4, 8], 1).unwrap()).unwrap();
        let auto = Inference::new(&resnet, Execution::Auto).unwrap();
        assert_eq!(auto.strategy(8, Device::Cpu), Strategy::Dense);
        assert_eq!(auto.strategy(128, Device::Cpu), Strategy::GatedUnion);
    }
}
