//! Architecture and loss configuration, with named presets.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One 3x3 conv layer: conv -> BatchNorm -> ReLU, then the gate, then an optional 2x2
/// max-pool. A layer that closes a residual block instead runs conv -> BatchNorm -> gate,
/// adds its block's input (the shortcut), then ReLU: the gate acts on the inner convolution,
/// never on the sum after the skip.
///
/// The config stores the network as this flat list of conv layers because every gate, every
/// FLOP and every variable (`blocks.{i}.*`) belongs to exactly one conv; a residual block is
/// two consecutive layers, the second naming the first in `residual_from` (see [`Block`] for
/// the block view the presets are written in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvLayer {
    pub out_channels: i64,
    /// Whether the layer carries an architecture controlling module.
    pub gated: bool,
    /// Whether a 2x2 max-pool follows the layer.
    pub pool_after: bool,
    /// Hidden units of the layer's controlling module, when not `C_in / acm_reduction`
    /// (a compacted model keeps its parent's, so that its gates compute the same values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acm_hidden: Option<i64>,
    /// Stride of the conv (2 halves the side, as a ResNet stage's first conv does).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub stride: i64,
    /// This layer closes a residual block that starts at conv layer `residual_from`: the
    /// input of that layer is added (subsampled by the block's stride and zero-padded to
    /// the wider channel count, ResNet's parameter-free "option A") before the ReLU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_from: Option<usize>,
}

fn one() -> i64 {
    1
}

fn is_one(v: &i64) -> bool {
    *v == 1
}

impl ConvLayer {
    /// A plain conv layer (stride 1, no shortcut).
    pub fn plain(out_channels: i64, gated: bool, pool_after: bool) -> Self {
        ConvLayer { out_channels, gated, pool_after, acm_hidden: None, stride: 1, residual_from: None }
    }

    /// Hidden units of this layer's controlling module, for `c_in` input channels.
    pub fn acm_hidden(&self, c_in: i64, reduction: i64) -> i64 {
        self.acm_hidden.unwrap_or((c_in / reduction).max(1))
    }
}

/// A building block of a preset: what an architecture is written in. [`ModelConfig::from_blocks`]
/// flattens blocks into conv layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "block", rename_all = "snake_case")]
pub enum Block {
    /// One conv layer.
    Conv { out_channels: i64, gated: bool, stride: i64, pool_after: bool },
    /// A basic residual block: two gated 3x3 convs (the first with `stride`), the block input
    /// added after the second conv's gate.
    Residual { out_channels: i64, stride: i64 },
}

/// The network's shape. Serialised into every checkpoint's `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub in_channels: i64,
    pub image_size: i64,
    pub num_classes: i64,
    pub layers: Vec<ConvLayer>,
    /// FC1 of each controlling module maps C_in -> C_in / reduction (the reference's T = 4).
    pub acm_reduction: i64,
    /// Whether the network standardises its input per channel, `(x - mean) / std`, with
    /// statistics of its training images kept as untrained variables `input_norm.{mean,std}`
    /// (in the weights file, so the model hash covers them): callers, attacks and the service
    /// keep giving [0, 1] pixels.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub normalized_input: bool,
}

impl ModelConfig {
    /// The shipped Fashion-MNIST network: six conv layers 48-48-96-96-192-192, the first
    /// ungated, max-pools after the 2nd and 4th, global average pool, linear classifier.
    /// (1.5x the widths of the 32-...-128 prototype: with about half the gates closed, the
    /// narrower net lacked the capacity for 93%.)
    pub fn fashion_mnist() -> Self {
        let layer = ConvLayer::plain;
        ModelConfig {
            in_channels: 1,
            image_size: 28,
            num_classes: 10,
            layers: vec![
                layer(48, false, false),
                layer(48, true, true),
                layer(96, true, false),
                layer(96, true, true),
                layer(192, true, false),
                layer(192, true, false),
            ],
            acm_reduction: 4,
            normalized_input: false,
        }
    }

    /// A small network of the same shape for fast tests.
    pub fn tiny() -> Self {
        Self::fashion_mnist().with_widths(&[8, 8, 8, 8, 16, 16]).expect("valid widths")
    }

    /// A network written as blocks, for `in_channels` x `image_size` images.
    pub fn from_blocks(in_channels: i64, image_size: i64, num_classes: i64, blocks: &[Block]) -> Result<Self> {
        let mut layers = Vec::new();
        for block in blocks {
            match *block {
                Block::Conv { out_channels, gated, stride, pool_after } => {
                    layers.push(ConvLayer { stride, ..ConvLayer::plain(out_channels, gated, pool_after) })
                }
                Block::Residual { out_channels, stride } => {
                    let from = layers.len();
                    layers.push(ConvLayer { stride, ..ConvLayer::plain(out_channels, true, false) });
                    layers.push(ConvLayer { residual_from: Some(from), ..ConvLayer::plain(out_channels, true, false) });
                }
            }
        }
        let config = ModelConfig { in_channels, image_size, num_classes, layers, acm_reduction: 4, normalized_input: false };
        config.validate()?;
        Ok(config)
    }

    /// A CIFAR-style ResNet (He et al. 2016, section 4.2) with every inner conv gated, as the
    /// reference decouples ResNet-56: an ungated 3x3 stem of `widths[0]` filters, then one
    /// stage per width of `blocks_per_stage` basic blocks, each stage after the first
    /// starting with stride 2; global average pool and a linear classifier.
    pub fn resnet(widths: &[i64], blocks_per_stage: usize) -> Result<Self> {
        let stem = *widths.first().ok_or_else(|| Error::Config("a ResNet needs at least one stage".into()))?;
        let mut blocks = vec![Block::Conv { out_channels: stem, gated: false, stride: 1, pool_after: false }];
        for (stage, &width) in widths.iter().enumerate() {
            for b in 0..blocks_per_stage {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                blocks.push(Block::Residual { out_channels: width, stride });
            }
        }
        Self::from_blocks(3, 32, 10, &blocks)
    }

    /// ResNet-20 for 32x32 RGB (the paper's CIFAR-10 network family): 16-32-64, three basic
    /// blocks per stage, 19 convs of which 18 are gated (672 gates).
    pub fn resnet20() -> Self {
        Self::resnet(&[16, 32, 64], 3).expect("valid preset")
    }

    /// ResNet-8: the same family with one block per stage (fast to train, for small data).
    pub fn resnet8() -> Self {
        Self::resnet(&[16, 32, 64], 1).expect("valid preset")
    }

    /// A wider ResNet for larger images (64 to 224 pixels): a stride-2 stem of 32 filters
    /// followed by a max-pool, then four stages 32-64-128-256 of two basic blocks (ResNet-18's
    /// layout with CIFAR-style parameter-free shortcuts).
    pub fn wide_resnet() -> Self {
        let mut blocks = vec![Block::Conv { out_channels: 32, gated: false, stride: 2, pool_after: true }];
        for (stage, width) in [32, 64, 128, 256].into_iter().enumerate() {
            for b in 0..2 {
                blocks.push(Block::Residual { out_channels: width, stride: if stage > 0 && b == 0 { 2 } else { 1 } });
            }
        }
        Self::from_blocks(3, 224, 10, &blocks).expect("valid preset")
    }

    /// The same layout with other filter counts, one per conv layer.
    pub fn with_widths(mut self, widths: &[i64]) -> Result<Self> {
        if widths.len() != self.layers.len() {
            return Err(Error::Config(format!(
                "{} widths given for {} conv layers",
                widths.len(),
                self.layers.len()
            )));
        }
        for (layer, &w) in self.layers.iter_mut().zip(widths) {
            layer.out_channels = w;
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks every rule; one message per broken rule.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        if self.in_channels < 1 {
            return fail(format!("in_channels must be >= 1, got {}", self.in_channels));
        }
        if self.num_classes < 2 {
            return fail(format!("num_classes must be >= 2, got {}", self.num_classes));
        }
        if self.layers.is_empty() {
            return fail("at least one conv layer is needed".into());
        }
        if self.acm_reduction < 1 {
            return fail(format!("acm_reduction must be >= 1, got {}", self.acm_reduction));
        }
        if self.layers[0].gated {
            return fail("the first conv layer cannot be gated (its input is the raw image)".into());
        }
        let mut size = self.image_size;
        let mut c_in = self.in_channels;
        // Input channels of each layer, for the shortcuts.
        let mut inputs = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            inputs.push(c_in);
            if layer.out_channels < 1 {
                return fail(format!("layer {i}: out_channels must be >= 1"));
            }
            if !(1..=2).contains(&layer.stride) {
                return fail(format!("layer {i}: stride must be 1 or 2, got {}", layer.stride));
            }
            if let Some(from) = layer.residual_from {
                if from >= i {
                    return fail(format!("layer {i}: residual_from {from} must name an earlier layer"));
                }
                if self.layers[from..i].iter().any(|l| l.pool_after || l.residual_from.is_some()) {
                    return fail(format!(
                        "layer {i}: the residual block from layer {from} may not contain a pool or another block's end"
                    ));
                }
                if self.layers[from + 1..=i].iter().any(|l| l.stride != 1) {
                    return fail(format!("layer {i}: only the first conv of a residual block (layer {from}) may have a stride"));
                }
                if layer.out_channels < inputs[from] {
                    return fail(format!(
                        "layer {i}: a residual block cannot narrow {} channels to {} (the shortcut zero-pads, never drops)",
                        inputs[from], layer.out_channels
                    ));
                }
            }
            if layer.acm_hidden.is_some_and(|h| h < 1) {
                return fail(format!("layer {i}: acm_hidden must be >= 1"));
            }
            if layer.gated && layer.acm_hidden.is_none() && c_in / self.acm_reduction < 1 {
                return fail(format!(
                    "layer {i}: {c_in} input channels / acm_reduction {} leaves no hidden units",
                    self.acm_reduction
                ));
            }
            size = (size + layer.stride - 1) / layer.stride;
            if layer.pool_after {
                size /= 2;
            }
            c_in = layer.out_channels;
        }
        if size < 1 {
            return fail(format!("image_size {} is too small for the pools", self.image_size));
        }
        Ok(())
    }

    /// Indices (into `layers`) of the gated layers, in order.
    pub fn gated_layers(&self) -> Vec<usize> {
        (0..self.layers.len()).filter(|&i| self.layers[i].gated).collect()
    }

    /// Gate count of each gated layer.
    pub fn gate_sizes(&self) -> Vec<i64> {
        self.layers.iter().filter(|l| l.gated).map(|l| l.out_channels).collect()
    }

    /// Whether conv layer `i`'s output keeps every channel whatever the gates say: it ends a
    /// residual block (the sum carries the shortcut's channels) or is ungated.
    pub fn output_always_full(&self, i: usize) -> bool {
        !self.layers[i].gated || self.layers[i].residual_from.is_some()
    }

    /// Whether a residual block starts at conv layer `i` (its input is that block's shortcut).
    pub fn starts_residual_block(&self, i: usize) -> bool {
        self.layers.iter().any(|l| l.residual_from == Some(i))
    }

    /// Whether conv layer `i`'s output is some residual block's input (its shortcut).
    pub fn feeds_a_shortcut(&self, i: usize) -> bool {
        self.starts_residual_block(i + 1)
    }

    /// Multiply-accumulates of each ungated conv layer for one input (3x3 kernels, same padding).
    pub fn conv_macs(&self) -> Vec<f64> {
        let mut size = self.image_size;
        let mut c_in = self.in_channels as f64;
        self.layers
            .iter()
            .map(|layer| {
                let c_out = layer.out_channels as f64;
                size = (size + layer.stride - 1) / layer.stride;
                let side = size as f64;
                let macs = side * side * c_in * c_out * 9.0;
                if layer.pool_after {
                    size /= 2;
                }
                c_in = c_out;
                macs
            })
            .collect()
    }
}

/// Weights of the decoupling losses (see `losses.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossWeights {
    /// lambda_m: weight of the per-layer mutual-information heads.
    pub mutual_information: f64,
    /// lambda_k: weight of the KL alignment between gates and pooled layer outputs.
    pub alignment: f64,
    /// lambda_s: weight of the sparsity term.
    pub sparsity: f64,
    /// Target open fraction of the sparsity term (0 = plain L1 push towards closing).
    pub target_density: f64,
    /// lambda_g: weight of the group-sparsity term on each filter's use across the batch,
    /// which makes whole filters idle for every input (so compaction can remove them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub group_sparsity: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl LossWeights {
    /// The reference implementation's CIFAR-10 VGG weights.
    pub fn reference() -> Self {
        LossWeights { mutual_information: 0.04, alignment: 1.0, sparsity: 2e-4, target_density: 0.0, group_sparsity: 0.0 }
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("mutual_information", self.mutual_information),
            ("alignment", self.alignment),
            ("sparsity", self.sparsity),
            ("group_sparsity", self.group_sparsity),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!("loss weight {name} must be >= 0, got {v}")));
            }
        }
        if !(0.0..=1.0).contains(&self.target_density) {
            return Err(Error::Config(format!(
                "target_density must be in [0, 1], got {}",
                self.target_density
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        ModelConfig::fashion_mnist().validate().unwrap();
        ModelConfig::tiny().validate().unwrap();
        LossWeights::reference().validate().unwrap();
    }

    #[test]
    fn gated_first_layer_is_rejected() {
        let mut c = ModelConfig::fashion_mnist();
        c.layers[0].gated = true;
        assert!(c.validate().unwrap_err().to_string().contains("first conv layer"));
    }

    #[test]
    fn macs_follow_the_pools() {
        let c = ModelConfig::fashion_mnist();
        let macs = c.conv_macs();
        assert_eq!(macs[0], 28.0 * 28.0 * 1.0 * 48.0 * 9.0);
        assert_eq!(macs[2], 14.0 * 14.0 * 48.0 * 96.0 * 9.0);
        assert_eq!(macs[5], 7.0 * 7.0 * 192.0 * 192.0 * 9.0);
    }

    #[test]
    fn resnet_presets_flatten_blocks_into_gated_convs_with_shortcuts() {
        let c = ModelConfig::resnet20();
        assert_eq!(c.layers.len(), 19);
        assert_eq!(c.gate_sizes().iter().sum::<i64>(), 672);
        // Block 4 (the first of stage 2) starts at conv 7 with stride 2 and ends at conv 8.
        assert_eq!((c.layers[7].stride, c.layers[7].out_channels, c.layers[7].residual_from), (2, 32, None));
        assert_eq!(c.layers[8].residual_from, Some(7));
        assert!(c.output_always_full(8) && !c.output_always_full(7) && c.feeds_a_shortcut(6));
        let macs = c.conv_macs();
        assert_eq!(macs[7], 16.0 * 16.0 * 16.0 * 32.0 * 9.0);
        assert_eq!(macs[18], 8.0 * 8.0 * 64.0 * 64.0 * 9.0);
        // About 41 M MACs, as published for ResNet-20.
        let total: f64 = macs.iter().sum();
        assert!((40e6..42e6).contains(&total), "{total}");
        ModelConfig::resnet8().validate().unwrap();
        ModelConfig::wide_resnet().validate().unwrap();
        // Old configs (no stride, no shortcut) read as plain layers and write back unchanged.
        let json = r#"{"out_channels":8,"gated":true,"pool_after":false}"#;
        let layer: ConvLayer = serde_json::from_str(json).unwrap();
        assert_eq!(layer, ConvLayer::plain(8, true, false));
        assert_eq!(serde_json::to_string(&layer).unwrap(), json);
    }

    #[test]
    fn residual_blocks_that_cannot_add_up_are_rejected() {
        let mut c = ModelConfig::resnet8();
        c.layers[2].out_channels = 8;
        assert!(c.validate().unwrap_err().to_string().contains("cannot narrow 16 channels to 8"));
        let mut c = ModelConfig::resnet8();
        c.layers[4].stride = 2;
        assert!(c.validate().unwrap_err().to_string().contains("only the first conv"));
        let mut c = ModelConfig::resnet8();
        c.layers[2].residual_from = Some(2);
        assert!(c.validate().unwrap_err().to_string().contains("earlier layer"));
    }

    #[test]
    fn bad_loss_weights_are_rejected() {
        let mut w = LossWeights::reference();
        w.target_density = 1.5;
        assert!(w.validate().is_err());
        w.target_density = 0.5;
        w.sparsity = -1.0;
        assert!(w.validate().unwrap_err().to_string().contains("sparsity"));
    }
}
