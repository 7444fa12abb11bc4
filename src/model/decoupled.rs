//! The decoupled CNN. One forward pass returns the logits and the calculation path.

use tch::{nn, Kind, Tensor};

use super::config::ModelConfig;
use super::gate::{gates_from_logits, ControlModule, GateMode};
use crate::error::{Error, Result};

/// One conv layer: conv 3x3 -> BatchNorm -> ReLU -> gate (if any) -> max-pool (if any); or,
/// closing a residual block, conv -> BatchNorm -> gate -> + shortcut -> ReLU -> max-pool.
#[derive(Debug)]
pub(super) struct ConvBlock {
    pub(super) conv: nn::Conv2D,
    pub(super) bn: nn::BatchNorm,
    pub(super) control: Option<ControlModule>,
    pub(super) pool_after: bool,
    pub(super) stride: i64,
    /// The conv layer whose input this layer adds (it closes that residual block).
    pub(super) residual_from: Option<usize>,
    /// Whether a residual block starts here (the forward pass keeps this layer's input).
    pub(super) starts_block: bool,
}

/// ResNet's parameter-free shortcut ("option A"): the block input subsampled to the output's
/// side and zero-padded, half on each side, to the output's channel count.
pub(super) fn shortcut(input: &Tensor, out_channels: i64, out_side: i64) -> Tensor {
    let size = input.size();
    // The block's stride (1 or 2): ceil(side / 2) = out_side for odd sides too.
    let step = (size[2] + out_side - 1) / out_side.max(1);
    let x = if size[2] != out_side { input.slice(2, 0, None, step).slice(3, 0, None, step) } else { input.shallow_clone() };
    let missing = out_channels - size[1];
    if missing == 0 {
        return x;
    }
    x.constant_pad_nd([0, 0, 0, 0, missing / 2, missing - missing / 2].as_slice())
}

/// Which of the outputs that only some callers read a forward pass computes: each costs an
/// op per gated layer, which shows at batch 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heads {
    /// Logits, path, gate logits and penultimate features only.
    None,
    /// Also the mutual-information head logits (the path statistics read them).
    MutualInformation,
    /// Also the pooled pre-gate outputs (the alignment loss and the activation baselines).
    All,
}

/// What one forward pass produces.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Class logits `[N, classes]`.
    pub logits: Tensor,
    /// Gates of each gated layer, `[N, C_l]` each: the calculation path.
    pub gates: Vec<Tensor>,
    /// Global-average-pooled pre-gate output of each gated layer `[N, C_l]` (alignment loss).
    pub pooled_outputs: Vec<Tensor>,
    /// Mutual-information head logits of each gated layer `[N, classes]`.
    pub mi_logits: Vec<Tensor>,
    /// Controlling-module outputs before thresholding, `[N, C_l]` per gated layer: how
    /// firmly each gate is open (> 0) or closed (< 0).
    pub gate_logits: Vec<Tensor>,
    /// Penultimate features: the global-average-pooled output of the last conv layer
    /// `[N, C_last]`, the classifier's input.
    pub penultimate: Tensor,
}

impl ForwardOutput {
    /// The path as one `[N, total_gates]` tensor (concatenated gated layers).
    pub fn path(&self) -> Tensor {
        Tensor::cat(&self.gates, 1)
    }
}

/// The decoupled CNN. Variables live in the `nn::Path` it was built on, named
/// `blocks.{i}.conv.weight`, `blocks.{i}.bn.*`, `blocks.{i}.acm.{fc1,fc2,mi_head}.*`,
/// `classifier.{weight,bias}`.
#[derive(Debug)]
pub struct DecoupledCnn {
    config: ModelConfig,
    /// Per-channel mean and standard deviation the input is standardised with, when the
    /// config says so (`[C]` each).
    pub(super) input_norm: Option<(Tensor, Tensor)>,
    pub(super) blocks: Vec<ConvBlock>,
    pub(super) classifier: nn::Linear,
}

impl DecoupledCnn {
    pub fn new(p: &nn::Path, config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        let blocks_path = p / "blocks";
        let mut c_in = config.in_channels;
        let mut blocks = Vec::with_capacity(config.layers.len());
        for (i, layer) in config.layers.iter().enumerate() {
            let bp = &blocks_path / i;
            let conv_config = nn::ConvConfig { padding: 1, stride: layer.stride, bias: false, ..Default::default() };
            let conv = nn::conv2d(&bp / "conv", c_in, layer.out_channels, 3, conv_config);
            let bn = nn::batch_norm2d(&bp / "bn", layer.out_channels, Default::default());
            let control = layer.gated.then(|| {
                ControlModule::new(
                    &(&bp / "acm"),
                    c_in,
                    layer.out_channels,
                    layer.acm_hidden(c_in, config.acm_reduction),
                    config.num_classes,
                )
            });
            blocks.push(ConvBlock { conv, bn, control, pool_after: layer.pool_after, stride: layer.stride, residual_from: layer.residual_from, starts_block: config.starts_residual_block(i) });
            c_in = layer.out_channels;
        }
        let classifier = nn::linear(p / "classifier", c_in, config.num_classes, Default::default());
        let input_norm = config.normalized_input.then(|| {
            let np = p / "input_norm";
            (np.zeros_no_train("mean", &[config.in_channels]), np.ones_no_train("std", &[config.in_channels]))
        });
        Ok(DecoupledCnn { config: config.clone(), input_norm, blocks, classifier })
    }

    /// Sets the input standardisation (a model built with `normalized_input`): per channel,
    /// the mean and standard deviation of the training images.
    pub fn set_input_statistics(&self, mean: &[f32], std: &[f32]) -> Result<()> {
        let Some((m, s)) = &self.input_norm else {
            return Err(Error::Config("this model does not standardise its input (normalized_input is off)".into()));
        };
        let channels = self.config.in_channels as usize;
        if mean.len() != channels || std.len() != channels || std.iter().any(|&v| !(v > 0.0 && v.is_finite())) {
            return Err(Error::Config(format!("input statistics: {channels} means and positive deviations needed, got {mean:?} / {std:?}")));
        }
        tch::no_grad(|| {
            m.shallow_clone().copy_(&Tensor::from_slice(mean).to_device(m.device()));
            s.shallow_clone().copy_(&Tensor::from_slice(std).to_device(s.device()));
        });
        Ok(())
    }

    /// `x` standardised as the model's first layer sees it (unchanged without `input_norm`).
    pub(super) fn standardise(&self, x: &Tensor) -> Tensor {
        match &self.input_norm {
            Some((mean, std)) => {
                let c = self.config.in_channels;
                (x - mean.view([1, c, 1, 1])) / std.view([1, c, 1, 1])
            }
            None => x.shallow_clone(),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Checks that `x` is a float batch `[N, C, H, W]` this model accepts, before tch sees it.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let c = &self.config;
        let expected = [c.in_channels, c.image_size, c.image_size];
        let size = x.size();
        if size.len() != 4 || size[1..] != expected || size[0] < 1 {
            return Err(Error::InvalidInput(format!(
                "input shape {size:?}; the model expects [N >= 1, {}, {}, {}]",
                expected[0], expected[1], expected[2]
            )));
        }
        if x.kind() != Kind::Float {
            return Err(Error::InvalidInput(format!("input dtype {:?}; expected float32", x.kind())));
        }
        Ok(())
    }

    /// Forward pass returning logits and the path. `x` is `[N, C, H, W]` float32 in [0, 1].
    pub fn forward_with_path(&self, x: &Tensor, mode: GateMode) -> ForwardOutput {
        self.forward(x, mode, Heads::All)
    }

    /// The eval-mode pass screening needs: logits, path, gate logits, MI-head logits and
    /// penultimate features, without gradients (`pooled_outputs` stays empty).
    pub fn forward_for_screening(&self, x: &Tensor) -> ForwardOutput {
        tch::no_grad(|| self.forward(x, GateMode::Eval, Heads::MutualInformation))
    }

    /// The forward pass, with the heads `heads` asks for (see [`Heads`]).
    fn forward(&self, x: &Tensor, mode: GateMode, heads: Heads) -> ForwardOutput {
        let train = mode.is_training();
        let mut h = self.standardise(x);
        let mut gates = Vec::new();
        let mut pooled_outputs = Vec::new();
        let mut mi_logits = Vec::new();
        let mut gate_logits = Vec::new();
        // Each layer's input, kept while a residual block that starts there may need it.
        let mut inputs: Vec<Option<Tensor>> = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            inputs.push(block.starts_block.then(|| h.shallow_clone()));
            let normed = h.apply(&block.conv).apply_t(&block.bn, train);
            // A block's last conv takes its ReLU after the sum.
            let out = if block.residual_from.is_some() { normed } else { normed.relu() };
            h = match &block.control {
                Some(control) => {
                    let logits = control.gate_logits(&h);
                    let z = gates_from_logits(&logits, mode);
                    gate_logits.push(logits);
                    if heads == Heads::All {
                        pooled_outputs.push(out.mean_dim([2i64, 3].as_slice(), false, Kind::Float));
                    }
                    if heads != Heads::None {
                        mi_logits.push(control.mi_logits(&z));
                    }
                    let (n, c) = (z.size()[0], z.size()[1]);
                    let gated = out * z.view([n, c, 1, 1]);
                    gates.push(z);
                    gated
                }
                None => out,
            };
            if let Some(from) = block.residual_from {
                let input = inputs[from].take().expect("a block's input is kept until its end");
                let size = h.size();
                h = (h + shortcut(&input, size[1], size[2])).relu();
            }
            if block.pool_after {
                h = h.max_pool2d_default(2);
            }
        }
        let penultimate = h.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let logits = penultimate.apply(&self.classifier);
        ForwardOutput { logits, gates, pooled_outputs, mi_logits, gate_logits, penultimate }
    }

    /// Logits alone (with gradients if `x` needs them), skipping the training heads: what
    /// attacks differentiate.
    pub fn logits(&self, x: &Tensor, mode: GateMode) -> Tensor {
        self.forward(x, mode, Heads::None).logits
    }

    /// Eval-mode forward without gradients: `(logits, path)` with path `[N, total_gates]`.
    pub fn predict(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check_input(x)?;
        let out = tch::no_grad(|| self.forward(x, GateMode::Eval, Heads::None));
        let path = out.path();
        Ok((out.logits, path))
    }
}

impl nn::ModuleT for DecoupledCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mode = if train { GateMode::Train } else { GateMode::Eval };
        self.logits(xs, mode)
    }
}
