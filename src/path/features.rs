//! Path features: what the path-statistics detector sees of each input.
//!
//! Per gated layer l (in this order, each a block of L columns):
//! 1. `open`: fraction of the layer's gates that are open;
//! 2. `hamming`: fraction of the layer's bits that differ from the binarised template
//!    (frequency > 0.5) of the predicted class;
//! 3. `jaccard`: Jaccard distance between the open set and the binarised template;
//! 4. `nll`: mean per-bit Bernoulli negative log-likelihood of the path under the predicted
//!    class's template (frequencies clamped to [0.01, 0.99]);
//! 5. `mi_agree`: 1 if the layer's mutual-information head (W_l z_l) predicts the same class
//!    as the network, else 0;
//! 6. `mi_prob`: the layer head's softmax probability of the network's predicted class;
//!
//! and one last column, `max_softmax`: the network's top class probability.

use ndarray::Array2;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::templates::PathTemplates;
use crate::model::ForwardOutput;

/// The per-layer feature kinds, in column-block order.
pub const FEATURE_KINDS: [&str; 6] = ["open", "hamming", "jaccard", "nll", "mi_agree", "mi_prob"];

/// Which columns a feature matrix has; stored with a fitted detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub layers: usize,
    pub names: Vec<String>,
}

impl FeatureSpec {
    pub fn for_layers(layers: usize) -> Self {
        let mut names: Vec<String> =
            FEATURE_KINDS.iter().flat_map(|k| (0..layers).map(move |l| format!("{k}[{l}]"))).collect();
        names.push("max_softmax".into());
        FeatureSpec { layers, names }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Features `[N, 6L + 1]` (f64, ndarray) of an eval-mode forward pass, against `templates`.
pub fn path_features(out: &ForwardOutput, templates: &PathTemplates) -> Array2<f64> {
    let device = out.logits.device();
    let probs = out.logits.softmax(1, Kind::Float);
    let predicted = out.logits.argmax(1, false);
    let template = templates.tensor(device).index_select(0, &predicted); // [N, B]
    let template_layers = template.split_with_sizes(templates.layer_sizes.as_slice(), 1);
    let mut blocks: Vec<Vec<Tensor>> = (0..FEATURE_KINDS.len()).map(|_| Vec::new()).collect();
    for ((z, t), mi) in out.gates.iter().zip(&template_layers).zip(&out.mi_logits) {
        let z = z.to_kind(Kind::Float);
        let binary = t.gt(0.5).to_kind(Kind::Float);
        let mean = |x: Tensor| x.mean_dim([1i64].as_slice(), false, Kind::Float);
        let sum = |x: &Tensor| x.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        blocks[0].push(mean(z.shallow_clone()));
        blocks[1].push(mean((&z - &binary).abs()));
        let intersection = sum(&(&z * &binary));
        let union = sum(&(&z + &binary - &z * &binary));
        blocks[2].push((intersection / union.clamp_min(1.0)).neg() + 1.0);
        let p = t.clamp(0.01, 0.99);
        let log_lik = &z * p.log() + (z.neg() + 1.0) * (p.neg() + 1.0).log();
        blocks[3].push(mean(log_lik).neg());
        blocks[4].push(mi.argmax(1, false).eq_tensor(&predicted).to_kind(Kind::Float));
        blocks[5].push(mi.softmax(1, Kind::Float).gather(1, &predicted.unsqueeze(1), false).squeeze_dim(1));
    }
    let mut columns: Vec<Tensor> = blocks.into_iter().flatten().collect();
    columns.push(probs.amax([1i64].as_slice(), false));
    to_ndarray(&Tensor::stack(&columns, 1))
}

/// A 2-D tensor as an f64 ndarray (on the CPU).
pub fn to_ndarray(t: &Tensor) -> Array2<f64> {
    let (rows, cols) = (t.size()[0] as usize, t.size()[1] as usize);
    let values = Vec::<f64>::try_from(t.to_device(tch::Device::Cpu).to_kind(Kind::Double).contiguous().view([-1]))
        .expect("double tensor");
    Array2::from_shape_vec((rows, cols), values).expect("shape matches")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_on_a_hand_made_path() {
        // Two layers of 2 and 3 gates, 2 classes. Class 0 template: layer A [1, 0], layer B [1, 1, 0].
        let templates = PathTemplates {
            layer_sizes: vec![2, 3],
            frequencies: vec![vec![1.0, 0.0, 0.9, 0.8, 0.1], vec![0.0, 1.0, 0.0, 0.0, 1.0]],
        };
        let out = ForwardOutput {
            logits: Tensor::from_slice(&[2.0f32, 0.0]).view([1, 2]),
            gates: vec![
                Tensor::from_slice(&[1.0f32, 1.0]).view([1, 2]),
                Tensor::from_slice(&[1.0f32, 0.0, 0.0]).view([1, 3]),
            ],
            pooled_outputs: vec![],
            mi_logits: vec![
                Tensor::from_slice(&[0.0f32, 1.0]).view([1, 2]),
                Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]),
            ],
        };
        let f = path_features(&out, &templates);
        assert_eq!(f.shape(), &[1, 13]);
        let spec = FeatureSpec::for_layers(2);
        assert_eq!(spec.len(), 13);
        let get = |name: &str| f[[0, spec.names.iter().position(|n| n == name).unwrap()]];
        assert!((get("open[0]") - 1.0).abs() < 1e-6);
        assert!((get("open[1]") - 1.0 / 3.0).abs() < 1e-6);
        assert!((get("hamming[0]") - 0.5).abs() < 1e-6); // [1,1] vs [1,0]
        assert!((get("hamming[1]") - 1.0 / 3.0).abs() < 1e-6); // [1,0,0] vs [1,1,0]
        assert!((get("jaccard[0]") - 0.5).abs() < 1e-6); // |{0}| / |{0,1}|
        assert!((get("jaccard[1]") - 0.5).abs() < 1e-6); // |{0}| / |{0,1}|
        let nll0 = -((0.99f64).ln() + (0.01f64).ln()) / 2.0; // z=[1,1], p=[0.99, 0.01]
        assert!((get("nll[0]") - nll0).abs() < 1e-4);
        assert_eq!(get("mi_agree[0]"), 0.0);
        assert_eq!(get("mi_agree[1]"), 1.0);
        let p = 1.0 / (1.0 + 1f64.exp()); // softmax([0, 1])[0]
        assert!((get("mi_prob[0]") - p).abs() < 1e-6);
        let top = 1.0 / (1.0 + (-2f64).exp());
        assert!((get("max_softmax") - top).abs() < 1e-6);
    }
}
