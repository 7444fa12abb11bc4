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
//! and three last columns from the class scores: `max_softmax`, the network's top class
//! probability; `logit_margin`, top logit minus runner-up logit; `entropy` of the softmax
//! (nats). Over-confident attacks (PGD) and minimal ones that stop at the boundary (C&W,
//! DeepFool) sit at opposite ends of these.
//!
//! A detector may also take the raw path bits (one 0/1 column per gate, layer by layer)
//! after these columns: [`FeatureSpec::path_bits`].

use ndarray::{Array2, ArrayView2, Axis};
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
    /// Names of the path-statistics columns.
    pub names: Vec<String>,
    /// Number of raw path-bit columns after them (0: none).
    #[serde(default)]
    pub path_bits: usize,
    /// Number of gate-logit columns after those (0: none): the controlling modules' outputs
    /// before thresholding, i.e. how firmly each gate of the path is open or closed.
    #[serde(default)]
    pub gate_logits: usize,
}

/// The columns after the per-layer blocks.
pub const OUTPUT_FEATURES: [&str; 3] = ["max_softmax", "logit_margin", "entropy"];

impl FeatureSpec {
    /// Path statistics only.
    pub fn for_layers(layers: usize) -> Self {
        let mut names: Vec<String> =
            FEATURE_KINDS.iter().flat_map(|k| (0..layers).map(move |l| format!("{k}[{l}]"))).collect();
        names.extend(OUTPUT_FEATURES.iter().map(|n| n.to_string()));
        FeatureSpec { layers, names, path_bits: 0, gate_logits: 0 }
    }

    /// Path statistics followed by the `total_gates` path bits.
    pub fn with_path_bits(mut self, total_gates: usize) -> Self {
        self.path_bits = total_gates;
        self
    }

    /// The gate logits alone (no path statistics, no bits).
    pub fn gate_logits_only(layers: usize, total_gates: usize) -> Self {
        FeatureSpec { layers, names: Vec::new(), path_bits: 0, gate_logits: total_gates }
    }

    /// Columns of a feature row.
    pub fn len(&self) -> usize {
        self.names.len() + self.path_bits + self.gate_logits
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Name of column `j` ("open[0]", ..., "bit 17 of layer 2").
    pub fn column_name(&self, j: usize, layer_sizes: &[usize]) -> String {
        if j < self.names.len() {
            return self.names[j].clone();
        }
        let (mut k, kind) = if j < self.names.len() + self.path_bits {
            (j - self.names.len(), "bit")
        } else {
            (j - self.names.len() - self.path_bits, "gate logit")
        };
        for (layer, &size) in layer_sizes.iter().enumerate() {
            if k < size {
                return format!("{kind} {k} of layer {layer}");
            }
            k -= size;
        }
        format!("column {j}")
    }

    /// The gated layer column `j` describes (none for the output columns: softmax, margin,
    /// entropy).
    pub fn column_layer(&self, j: usize, layer_sizes: &[usize]) -> Option<usize> {
        if j < self.names.len() {
            let name = &self.names[j];
            return name.strip_suffix(']').and_then(|n| n.rsplit_once('[')).and_then(|(_, l)| l.parse().ok());
        }
        // A path bit or a gate logit: its index within the concatenated layers.
        let k = j - self.names.len();
        let mut k = if k < self.path_bits { k } else { k - self.path_bits };
        for (layer, &size) in layer_sizes.iter().enumerate() {
            if k < size {
                return Some(layer);
            }
            k -= size;
        }
        None
    }

    /// Feature rows of an eval-mode forward pass.
    pub fn rows(&self, out: &ForwardOutput, templates: &PathTemplates) -> Array2<f64> {
        self.rows_of(&PathViews::of(out, templates))
    }

    /// Feature rows from the views of a forward pass computed once (several specs share them).
    pub fn rows_of(&self, views: &PathViews) -> Array2<f64> {
        self.select(views.statistics.view(), views.path_bits.view(), views.gate_logits.view())
    }

    /// The spec's column blocks, side by side: path statistics (when it names columns), path
    /// bits, gate logits.
    pub fn select<'a>(&self, statistics: ArrayView2<'a, f64>, path_bits: ArrayView2<'a, f64>, gate_logits: ArrayView2<'a, f64>) -> Array2<f64> {
        let mut blocks = Vec::new();
        if !self.names.is_empty() {
            blocks.push(statistics);
        }
        if self.path_bits > 0 {
            blocks.push(path_bits);
        }
        if self.gate_logits > 0 {
            blocks.push(gate_logits);
        }
        ndarray::concatenate(Axis(1), &blocks).expect("rows of one forward pass")
    }

    /// The rows as a float32 tensor, from the path statistics of `out` computed once by
    /// [`path_feature_tensor`] (needed only when the spec has named columns), so that several
    /// specs share them; differentiable where `out` is (the detector's twin uses it).
    pub fn tensor_rows(&self, statistics: Option<&Tensor>, out: &ForwardOutput) -> Tensor {
        let mut blocks = Vec::new();
        if !self.names.is_empty() {
            blocks.push(statistics.expect("path statistics for a spec with named columns").shallow_clone());
        }
        if self.path_bits > 0 {
            blocks.push(out.path().to_kind(Kind::Float));
        }
        if self.gate_logits > 0 {
            blocks.push(Tensor::cat(&out.gate_logits, 1).to_kind(Kind::Float));
        }
        Tensor::cat(&blocks, 1)
    }
}

/// What the detector's experts read of an eval-mode forward pass, on the host.
#[derive(Debug, Clone)]
pub struct PathViews {
    /// `[N, 6L + 3]`, see [`path_features`].
    pub statistics: Array2<f64>,
    /// `[N, total_gates]`, 0/1.
    pub path_bits: Array2<f64>,
    /// `[N, total_gates]`.
    pub gate_logits: Array2<f64>,
}

impl PathViews {
    pub fn of(out: &ForwardOutput, templates: &PathTemplates) -> Self {
        let path_bits = to_ndarray(&out.path());
        let gate_logits = if out.gate_logits.is_empty() {
            Array2::zeros((path_bits.nrows(), 0))
        } else {
            to_ndarray(&Tensor::cat(&out.gate_logits, 1))
        };
        PathViews { statistics: statistics_of(out, &path_bits, templates), path_bits, gate_logits }
    }
}

/// Path statistics `[N, 6L + 3]` (f64, ndarray) of an eval-mode forward pass, against `templates`.
pub fn path_features(out: &ForwardOutput, templates: &PathTemplates) -> Array2<f64> {
    statistics_of(out, &to_ndarray(&out.path()), templates)
}

/// The values of [`path_feature_tensor`] computed on the host in f64 from the pass's logits,
/// path and MI-head logits: the same features without the ~30 libtorch calls per layer the
/// tensor version makes, which cost more than the forward pass itself at batch 1. The
/// detector's twin keeps the tensor version for its gradients; a test keeps the two equal.
fn statistics_of(out: &ForwardOutput, path: &Array2<f64>, templates: &PathTemplates) -> Array2<f64> {
    let logits = to_ndarray(&out.logits);
    let mi: Vec<Array2<f64>> = out.mi_logits.iter().map(to_ndarray).collect();
    let sizes: Vec<usize> = templates.layer_sizes.iter().map(|&s| s as usize).collect();
    let layers = sizes.len();
    let (n, classes) = logits.dim();
    let mut rows = Array2::<f64>::zeros((n, FEATURE_KINDS.len() * layers + OUTPUT_FEATURES.len()));
    for i in 0..n {
        let scores = logits.row(i);
        let predicted = argmax(scores.iter().copied());
        let probs = softmax(scores.iter().copied());
        let template = &templates.frequencies[predicted];
        let mut start = 0;
        for (l, &size) in sizes.iter().enumerate() {
            let (mut open, mut differ, mut inter, mut union, mut nll) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for k in start..start + size {
                let z = path[[i, k]];
                let t = template[k] as f64;
                let b = if t > 0.5 { 1.0 } else { 0.0 };
                let p = t.clamp(0.01, 0.99);
                open += z;
                differ += z * (1.0 - b) + (1.0 - z) * b;
                inter += z * b;
                union += z + b - z * b;
                nll -= z * p.ln() + (1.0 - z) * (1.0 - p).ln();
            }
            let size_f = size.max(1) as f64;
            let head = mi.get(l).map(|m| m.row(i).to_vec()).unwrap_or_else(|| vec![0.0; classes]);
            let values = [
                open / size_f,
                differ / size_f,
                1.0 - inter / union.max(1.0),
                nll / size_f,
                if argmax(head.iter().copied()) == predicted { 1.0 } else { 0.0 },
                softmax(head.iter().copied())[predicted],
            ];
            for (kind, v) in values.into_iter().enumerate() {
                rows[[i, kind * layers + l]] = v;
            }
            start += size;
        }
        let base = FEATURE_KINDS.len() * layers;
        let mut sorted: Vec<f64> = scores.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        rows[[i, base]] = probs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        rows[[i, base + 1]] = sorted[0] - sorted[sorted.len().min(2) - 1];
        rows[[i, base + 2]] = -probs.iter().filter(|&&p| p > 0.0).map(|&p| p * p.ln()).sum::<f64>();
    }
    rows
}

/// Index of the first largest value (libtorch's argmax on the CPU).
fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

fn softmax(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let values: Vec<f64> = values.collect();
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = values.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// The same as a float32 tensor, differentiable where `out` is: with surrogate gates
/// ([`crate::model::GateMode::EvalSurrogate`]) the values are exactly those of the hard path
/// and gradients flow through the gates, which is what a detector-aware attack needs. The
/// predicted class (which template, which MI probability) carries no gradient.
pub fn path_feature_tensor(out: &ForwardOutput, templates: &PathTemplates) -> Tensor {
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
        // Hamming distance as z(1 - b) + (1 - z)b: equal to |z - b| on 0/1 gates, and with a
        // gradient of 1 - 2b where |.| has none (at z = b), as the expected Hamming distance of
        // soft gates has.
        blocks[1].push(mean(&z * (binary.neg() + 1.0) + (z.neg() + 1.0) * &binary));
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
    let top2 = out.logits.to_kind(Kind::Float).topk(2.min(out.logits.size()[1]), 1, true, true).0;
    columns.push(top2.select(1, 0) - top2.select(1, top2.size()[1] - 1));
    let log_probs = out.logits.log_softmax(1, Kind::Float);
    columns.push((&probs * &log_probs).sum_dim_intlist([1i64].as_slice(), false, Kind::Float).neg());
    Tensor::stack(&columns, 1)
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
            gate_logits: vec![],
            penultimate: Tensor::zeros([1, 1], (Kind::Float, tch::Device::Cpu)),
            mi_logits: vec![
                Tensor::from_slice(&[0.0f32, 1.0]).view([1, 2]),
                Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]),
            ],
        };
        let f = path_features(&out, &templates);
        assert_eq!(f.shape(), &[1, 15]);
        // The host computation and the differentiable tensor one agree.
        let from_tensors = to_ndarray(&path_feature_tensor(&out, &templates));
        assert!(f.iter().zip(&from_tensors).all(|(a, b)| (a - b).abs() < 1e-5), "{f:?} vs {from_tensors:?}");
        let spec = FeatureSpec::for_layers(2);
        assert_eq!(spec.len(), 15);
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
        assert!((get("logit_margin") - 2.0).abs() < 1e-6);
        let entropy = -(top * top.ln() + (1.0 - top) * (1.0 - top).ln());
        assert!((get("entropy") - entropy).abs() < 1e-5);
        let with_bits = spec.clone().with_path_bits(5);
        let rows = with_bits.rows(&out, &templates);
        assert_eq!(rows.shape(), &[1, 20]);
        assert_eq!(rows.row(0).iter().skip(15).copied().collect::<Vec<_>>(), vec![1.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(with_bits.column_name(17, &[2, 3]), "bit 0 of layer 1");
    }
}
