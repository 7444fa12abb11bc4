//! Architecture and loss configuration, with named presets.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One 3x3 conv layer (conv -> BatchNorm -> ReLU, then the gate, then optional 2x2 max-pool).
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
}

impl ConvLayer {
    /// Hidden units of this layer's controlling module, for `c_in` input channels.
    pub fn acm_hidden(&self, c_in: i64, reduction: i64) -> i64 {
        self.acm_hidden.unwrap_or((c_in / reduction).max(1))
    }
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
}

impl ModelConfig {
    /// The shipped Fashion-MNIST network: six conv layers 48-48-96-96-192-192, the first
    /// ungated, max-pools after the 2nd and 4th, global average pool, linear classifier.
    /// (1.5x the widths of the 32-...-128 prototype: with about half the gates closed, the
    /// narrower net lacked the capacity for 93%.)
    pub fn fashion_mnist() -> Self {
        let layer = |out_channels, gated, pool_after| ConvLayer { out_channels, gated, pool_after, acm_hidden: None };
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
        }
    }

    /// A small network of the same shape for fast tests.
    pub fn tiny() -> Self {
        Self::fashion_mnist().with_widths(&[8, 8, 8, 8, 16, 16]).expect("valid widths")
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
        for (i, layer) in self.layers.iter().enumerate() {
            if layer.out_channels < 1 {
                return fail(format!("layer {i}: out_channels must be >= 1"));
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

    /// Multiply-accumulates of each ungated conv layer for one input (3x3 kernels, same padding).
    pub fn conv_macs(&self) -> Vec<f64> {
        let mut size = self.image_size as f64;
        let mut c_in = self.in_channels as f64;
        self.layers
            .iter()
            .map(|layer| {
                let c_out = layer.out_channels as f64;
                let macs = size * size * c_in * c_out * 9.0;
                if layer.pool_after {
                    size = (size / 2.0).floor();
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
}

impl LossWeights {
    /// The reference implementation's CIFAR-10 VGG weights.
    pub fn reference() -> Self {
        LossWeights { mutual_information: 0.04, alignment: 1.0, sparsity: 2e-4, target_density: 0.0 }
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("mutual_information", self.mutual_information),
            ("alignment", self.alignment),
            ("sparsity", self.sparsity),
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
    fn bad_loss_weights_are_rejected() {
        let mut w = LossWeights::reference();
        w.target_density = 1.5;
        assert!(w.validate().is_err());
        w.target_density = 0.5;
        w.sparsity = -1.0;
        assert!(w.validate().unwrap_err().to_string().contains("sparsity"));
    }
}
