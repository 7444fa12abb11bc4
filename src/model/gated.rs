//! Gated execution: the inference pass that computes, per input, only the filters on its
//! path. A gated layer's gates come from its controlling module on the layer *input*, so they
//! are known before the conv runs: the conv then uses only the weight rows of the open filters
//! and the weight columns of the previous layer's open filters (the closed ones are exactly
//! zero). Same logits and path as the dense pass, up to float rounding.
//!
//! At batch 1 the convolutions are small and libtorch's per-op cost (about 10 us) would eat
//! the FLOPs saved, so everything that is not a convolution on an image (the controlling
//! modules, choosing the open filters, gathering their weights) runs here in Rust on a few
//! hundred numbers; libtorch runs only GAP, conv, ReLU and pooling.

use tch::{Device, Kind, Tensor};

use super::decoupled::{DecoupledCnn, ForwardOutput};
use crate::error::Result;

/// BatchNorm epsilon of the model's layers (`nn::BatchNormConfig::default()`).
const BATCH_NORM_EPS: f64 = 1e-5;

/// One 3x3 conv layer with its eval-mode BatchNorm folded in: `conv(x, weight) + bias`.
#[derive(Debug)]
struct FoldedLayer {
    /// `[out][in][3][3]`, row-major, for gathering the filters a path needs.
    weight: Vec<f32>,
    bias: Vec<f32>,
    in_channels: usize,
    out_channels: usize,
    /// The same weights as tensors, for a layer that computes every filter of every input.
    weight_tensor: Tensor,
    bias_tensor: Tensor,
    control: Option<Control>,
    pool_after: bool,
    stride: i64,
    /// The conv layer whose input this layer adds before its ReLU (it closes that block).
    residual_from: Option<usize>,
    /// Whether a residual block starts here (its input is kept at full width).
    starts_block: bool,
}

/// A controlling module: `gate logits = FC2(ReLU(FC1(GAP(x))))`, and the MI head.
#[derive(Debug)]
struct Control {
    /// `[hidden][in]`
    fc1: Vec<f32>,
    fc1_bias: Vec<f32>,
    /// `[out][hidden]`
    fc2: Vec<f32>,
    fc2_bias: Vec<f32>,
    hidden: usize,
    /// `[classes][out]`
    mi_head: Vec<f32>,
}

/// The eval-mode network prepared for gated execution (its own copies of the folded weights).
#[derive(Debug)]
pub struct GatedNetwork {
    /// The input standardisation `(mean, std)`, `[1, C, 1, 1]` each, if the model has one.
    input_norm: Option<(Tensor, Tensor)>,
    layers: Vec<FoldedLayer>,
    /// `[classes][C_last]`
    classifier_weight: Vec<f32>,
    classifier_bias: Vec<f32>,
}

/// The values of `t` in row-major order. Activations on the CPU are copied straight out:
/// each libtorch call costs microseconds, which add up at batch 1.
fn floats(t: &Tensor) -> Result<Vec<f32>> {
    if t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() {
        let numel = t.numel();
        let mut values = vec![0.0f32; numel];
        t.f_copy_data(&mut values, numel)?;
        return Ok(values);
    }
    Ok(Vec::<f32>::try_from(t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1]))?)
}

fn required<'a>(t: &'a Option<Tensor>, what: &str) -> &'a Tensor {
    t.as_ref().unwrap_or_else(|| panic!("the decoupled CNN always has {what}"))
}

impl GatedNetwork {
    pub fn new(model: &DecoupledCnn) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let mut layers = Vec::with_capacity(model.blocks.len());
        for block in &model.blocks {
            let bn = &block.bn;
            let scale = required(&bn.ws, "BatchNorm weights") / (&bn.running_var + BATCH_NORM_EPS).sqrt();
            let bias_tensor = required(&bn.bs, "BatchNorm biases") - &bn.running_mean * &scale;
            let size = block.conv.ws.size();
            let weight_tensor = (&block.conv.ws * scale.view([size[0], 1, 1, 1])).contiguous();
            let control = match &block.control {
                Some(c) => Some(Control {
                    fc1: floats(&c.fc1.ws)?,
                    fc1_bias: floats(required(&c.fc1.bs, "FC1 biases"))?,
                    fc2: floats(&c.fc2.ws)?,
                    fc2_bias: floats(required(&c.fc2.bs, "FC2 biases"))?,
                    hidden: c.fc1.ws.size()[0] as usize,
                    mi_head: floats(&c.mi_head.ws)?,
                }),
                None => None,
            };
            layers.push(FoldedLayer {
                weight: floats(&weight_tensor)?,
                bias: floats(&bias_tensor)?,
                out_channels: size[0] as usize,
                in_channels: size[1] as usize,
                weight_tensor,
                bias_tensor,
                control,
                pool_after: block.pool_after,
                stride: block.stride,
                residual_from: block.residual_from,
                starts_block: block.starts_block,
            });
        }
        let channels = model.config().in_channels;
        let input_norm = model.input_norm.as_ref().map(|(m, s)| (m.detach().view([1, channels, 1, 1]), s.detach().view([1, channels, 1, 1])));
        Ok(GatedNetwork {
            input_norm,
            layers,
            classifier_weight: floats(&model.classifier.ws)?,
            classifier_bias: floats(required(&model.classifier.bs, "classifier biases"))?,
        })
    }

    /// Eval-mode forward of `x` `[N, C, H, W]` computing, in each gated layer, the union of
    /// the batch's open filters (at N = 1: exactly the input's path; the gates zero what is
    /// open for another input only). With `heads`, the MI-head logits are filled in as the
    /// dense pass fills them; `pooled_outputs` stays empty (it feeds only training).
    pub fn forward(&self, x: &Tensor, heads: bool) -> Result<ForwardOutput> {
        let _guard = tch::no_grad_guard();
        let n = x.size()[0] as usize;
        let device = x.device();
        // One libtorch call per tensor made from host values (no reshaping view after it).
        let to_tensor = |values: &[f32], shape: &[i64]| -> Result<Tensor> {
            let t = Tensor::f_from_data_size(bytemuck::cast_slice(values), shape, Kind::Float)?;
            Ok(if device == Device::Cpu { t } else { t.to_device(device) })
        };
        let mut h = match &self.input_norm {
            Some((mean, std)) => (x - mean) / std,
            None => x.shallow_clone(),
        };
        // Which of the layer input's channels `h` holds, in order; None = all of them.
        let mut present: Option<Vec<usize>> = None;
        let (mut gates, mut gate_logits, mut mi_logits) = (Vec::new(), Vec::new(), Vec::new());
        // Each layer's input at full width, kept while a residual block that starts there needs it.
        let mut block_inputs: Vec<Option<Tensor>> = Vec::with_capacity(self.layers.len());
        // The channel means of `h` when the layer before computed them on the host.
        let mut channel_means: Option<Vec<f32>> = None;
        for layer in &self.layers {
            block_inputs.push(layer.starts_block.then(|| scatter_channels(&h, present.as_deref(), layer.in_channels)));
            let means_of_input = channel_means.take();
            // Per input, the gates of the kept filters, where some of them are closed.
            let mut multiplier: Option<Vec<f32>> = None;
            let (weight, bias, kept) = match &layer.control {
                Some(control) => {
                    let pooled = match means_of_input {
                        Some(means) => means,
                        None => floats(&h.mean_dim([2i64, 3].as_slice(), false, Kind::Float))?,
                    };
                    let logits = control.gate_logits(&pooled, n, present.as_deref(), layer.in_channels);
                    let z: Vec<f32> = logits.iter().map(|&y| if y > 0.0 { 1.0 } else { 0.0 }).collect();
                    let out = layer.out_channels;
                    let mut open: Vec<usize> = (0..out).filter(|&o| (0..n).any(|i| z[i * out + o] > 0.0)).collect();
                    // A layer whose every filter is closed keeps one, zeroed by its gate.
                    let all_closed = open.is_empty();
                    if all_closed {
                        open.push(0);
                    }
                    // At N = 1 every kept filter is open: no gate to multiply.
                    if n > 1 || all_closed {
                        multiplier = Some((0..n).flat_map(|i| open.iter().map(|&o| z[i * out + o]).collect::<Vec<_>>()).collect());
                    }
                    if heads {
                        let classes = control.mi_head.len() / out;
                        mi_logits.push(to_tensor(&linear(&z, n, &control.mi_head, None), &[n as i64, classes as i64])?);
                    }
                    gates.push(to_tensor(&z, &[n as i64, out as i64])?);
                    gate_logits.push(to_tensor(&logits, &[n as i64, out as i64])?);
                    let (weight, bias) = layer.gather(&open, present.as_deref());
                    (to_tensor(&weight, &layer.weight_shape(open.len(), present.as_deref()))?, to_tensor(&bias, &[open.len() as i64])?, Some(open))
                }
                None => match &present {
                    None => (layer.weight_tensor.shallow_clone(), layer.bias_tensor.shallow_clone(), None),
                    Some(inputs) => {
                        let all: Vec<usize> = (0..layer.out_channels).collect();
                        let (weight, bias) = layer.gather(&all, Some(inputs));
                        (to_tensor(&weight, &layer.weight_shape(all.len(), Some(inputs)))?, to_tensor(&bias, &[all.len() as i64])?, None)
                    }
                },
            };
            let stride = [layer.stride, layer.stride];
            h = h.conv2d(&weight, Some(&bias), stride, [1, 1], [1, 1], 1);
            let gate_tensor = |gates: &[f32]| to_tensor(gates, &[n as i64, (gates.len() / n.max(1)) as i64, 1, 1]);
            match layer.residual_from {
                // One input on the CPU: ReLU, gate, pooling and the channel means the next
                // controlling module reads run on the host, a few thousand numbers for which
                // libtorch's per-call cost and thread hand-offs outweigh the work (measured:
                // +6-14% at batch 1; at batch 8-128 libtorch's vectorised threads win).
                None if device == Device::Cpu && n == 1 => {
                    let size = h.size();
                    let shape = [size[0] as usize, size[1] as usize, size[2] as usize, size[3] as usize];
                    let (values, pooled_shape, means) = relu_gate_pool(&floats(&h)?, shape, multiplier.as_deref(), layer.pool_after);
                    h = to_tensor(&values, &pooled_shape)?;
                    channel_means = Some(means);
                }
                None => {
                    h = h.relu_();
                    if let Some(gates) = &multiplier {
                        h = h * gate_tensor(gates)?;
                    }
                    if layer.pool_after {
                        h = h.max_pool2d_default(2);
                    }
                }
                Some(from) => {
                    // Gate the conv, widen it back to every channel, add the shortcut, ReLU.
                    if let Some(gates) = &multiplier {
                        h = h * gate_tensor(gates)?;
                    }
                    h = scatter_channels(&h, kept.as_deref(), layer.out_channels);
                    let input = block_inputs[from].take().expect("a block's input is kept until its end");
                    let size = h.size();
                    h = (h + super::decoupled::shortcut(&input, size[1], size[2])).relu_();
                    if layer.pool_after {
                        h = h.max_pool2d_default(2);
                    }
                }
            }
            present = if layer.residual_from.is_some() { None } else { kept };
        }
        let last = self.layers.last().map_or(0, |l| l.out_channels);
        let compact = match channel_means {
            Some(means) => means,
            None => floats(&h.mean_dim([2i64, 3].as_slice(), false, Kind::Float))?,
        };
        let penultimate = scatter_rows(&compact, n, present.as_deref(), last);
        let classes = self.classifier_bias.len();
        let logits = to_tensor(&linear(&penultimate, n, &self.classifier_weight, Some(&self.classifier_bias)), &[n as i64, classes as i64])?;
        let penultimate = to_tensor(&penultimate, &[n as i64, last as i64])?;
        Ok(ForwardOutput { logits, gates, pooled_outputs: Vec::new(), mi_logits, gate_logits, penultimate })
    }

    /// Per input, its own path: each image of the batch through [`GatedNetwork::forward`]
    /// alone, the outputs concatenated.
    pub fn forward_each(&self, x: &Tensor, heads: bool) -> Result<ForwardOutput> {
        let n = x.size()[0];
        let outs = (0..n).map(|i| self.forward(&x.narrow(0, i, 1), heads)).collect::<Result<Vec<_>>>()?;
        if outs.len() == 1 {
            return Ok(outs.into_iter().next().expect("one output"));
        }
        let cat = |pick: &dyn Fn(&ForwardOutput) -> &Tensor| Tensor::cat(&outs.iter().map(pick).collect::<Vec<_>>(), 0);
        let cat_layers = |pick: &dyn Fn(&ForwardOutput) -> &Vec<Tensor>| -> Vec<Tensor> {
            (0..pick(&outs[0]).len()).map(|l| cat(&|o| &pick(o)[l])).collect()
        };
        Ok(ForwardOutput {
            logits: cat(&|o| &o.logits),
            gates: cat_layers(&|o| &o.gates),
            pooled_outputs: Vec::new(),
            mi_logits: cat_layers(&|o| &o.mi_logits),
            gate_logits: cat_layers(&|o| &o.gate_logits),
            penultimate: cat(&|o| &o.penultimate),
        })
    }
}

impl FoldedLayer {
    /// The shape of the weights [`FoldedLayer::gather`] returns for `outputs` filters.
    fn weight_shape(&self, outputs: usize, inputs: Option<&[usize]>) -> [i64; 4] {
        [outputs as i64, inputs.map_or(self.in_channels, <[usize]>::len) as i64, 3, 3]
    }

    /// The weights of filters `outputs` over the input channels `inputs` (all when None).
    fn gather(&self, outputs: &[usize], inputs: Option<&[usize]>) -> (Vec<f32>, Vec<f32>) {
        let kernel = 9;
        let row = self.in_channels * kernel;
        let mut weight = Vec::with_capacity(outputs.len() * inputs.map_or(self.in_channels, <[usize]>::len) * kernel);
        for &o in outputs {
            let filter = &self.weight[o * row..(o + 1) * row];
            match inputs {
                None => weight.extend_from_slice(filter),
                Some(inputs) => {
                    for &c in inputs {
                        weight.extend_from_slice(&filter[c * kernel..(c + 1) * kernel]);
                    }
                }
            }
        }
        (weight, outputs.iter().map(|&o| self.bias[o]).collect())
    }
}

impl Control {
    /// Gate logits `[n][out]` from the pooled layer input `[n][k]`, whose k columns are the
    /// input channels `present` (all `in_channels` when None; the others are zero).
    /// Accumulates in f64, so it rounds no worse than libtorch's f32 matmul.
    fn gate_logits(&self, pooled: &[f32], n: usize, present: Option<&[usize]>, in_channels: usize) -> Vec<f32> {
        let k = pooled.len() / n.max(1);
        let out = self.fc2_bias.len();
        let mut logits = Vec::with_capacity(n * out);
        let mut hidden = vec![0.0f64; self.hidden];
        for row in pooled.chunks(k.max(1)).take(n) {
            for (j, h) in hidden.iter_mut().enumerate() {
                let weights = &self.fc1[j * in_channels..(j + 1) * in_channels];
                let sum: f64 = match present {
                    None => weights.iter().zip(row).map(|(&w, &p)| w as f64 * p as f64).sum(),
                    Some(channels) => channels.iter().zip(row).map(|(&c, &p)| weights[c] as f64 * p as f64).sum(),
                };
                *h = (sum + self.fc1_bias[j] as f64).max(0.0);
            }
            for o in 0..out {
                let weights = &self.fc2[o * self.hidden..(o + 1) * self.hidden];
                let sum: f64 = weights.iter().zip(&hidden).map(|(&w, &h)| w as f64 * h).sum();
                logits.push((sum + self.fc2_bias[o] as f64) as f32);
            }
        }
        logits
    }
}

/// ReLU, then the gates (`[n][c]`, if any), then 2x2 max-pooling (if `pool`; odd sides
/// floored, as `max_pool2d(2)`) of a conv output `values` `[n][c][h][w]`: the result, its
/// shape and its per-channel means `[n][c]` (the next controlling module's GAP). Exact but
/// for the means, which accumulate in f64.
fn relu_gate_pool(values: &[f32], shape: [usize; 4], gates: Option<&[f32]>, pool: bool) -> (Vec<f32>, [i64; 4], Vec<f32>) {
    let [n, c, h, w] = shape;
    let (out_h, out_w) = if pool { (h / 2, w / 2) } else { (h, w) };
    let mut out = Vec::with_capacity(n * c * out_h * out_w);
    let mut means = Vec::with_capacity(n * c);
    for (plane_index, plane) in values.chunks((h * w).max(1)).take(n * c).enumerate() {
        // A gate is 0 or 1 and ReLU's output is >= 0, so gating commutes with the pooling.
        let gate = gates.map_or(1.0, |g| g[plane_index]);
        let start = out.len();
        if pool {
            for y in 0..out_h {
                let (top, bottom) = (&plane[2 * y * w..], &plane[(2 * y + 1) * w..]);
                for x in 0..out_w {
                    let max = top[2 * x].max(top[2 * x + 1]).max(bottom[2 * x]).max(bottom[2 * x + 1]);
                    out.push(max.max(0.0) * gate);
                }
            }
        } else {
            out.extend(plane.iter().map(|&v| v.max(0.0) * gate));
        }
        let sum: f64 = out[start..].iter().map(|&v| v as f64).sum();
        means.push((sum / (out_h * out_w).max(1) as f64) as f32);
    }
    (out, [n as i64, c as i64, out_h as i64, out_w as i64], means)
}

/// `rows [n][k] · weightᵀ + bias` for `weight [m][k]`, accumulated in f64 (so it rounds no
/// worse than libtorch's f32 matmul): a few hundred numbers, cheaper here than a libtorch call.
fn linear(rows: &[f32], n: usize, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let k = rows.len() / n.max(1);
    let m = weight.len() / k.max(1);
    let mut out = Vec::with_capacity(n * m);
    for row in rows.chunks(k.max(1)).take(n) {
        for j in 0..m {
            let sum: f64 = weight[j * k..(j + 1) * k].iter().zip(row).map(|(&w, &x)| w as f64 * x as f64).sum();
            out.push((sum + bias.map_or(0.0, |b| b[j] as f64)) as f32);
        }
    }
    out
}

/// `x` `[N, k, H, W]`, whose k channels are the channels `present` of `channels`, at full
/// width (the others zero).
fn scatter_channels(x: &Tensor, present: Option<&[usize]>, channels: usize) -> Tensor {
    let Some(present) = present else { return x.shallow_clone() };
    let size = x.size();
    let index: Vec<i64> = present.iter().map(|&c| c as i64).collect();
    let index = Tensor::from_slice(&index).to_device(x.device());
    Tensor::zeros([size[0], channels as i64, size[2], size[3]], (x.kind(), x.device())).index_copy(1, &index, x)
}

/// Rows `[n][k]` holding the channels `present` of `[n][channels]` rows whose others are 0.
fn scatter_rows(compact: &[f32], n: usize, present: Option<&[usize]>, channels: usize) -> Vec<f32> {
    let Some(present) = present else { return compact.to_vec() };
    let mut full = vec![0.0f32; n * channels];
    for (i, row) in compact.chunks(present.len().max(1)).take(n).enumerate() {
        for (&c, &v) in present.iter().zip(row) {
            full[i * channels + c] = v;
        }
    }
    full
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GateMode, ModelConfig};
    use tch::nn;

    fn assert_same(dense: &ForwardOutput, gated: &ForwardOutput) {
        assert!(dense.logits.allclose(&gated.logits, 1e-4, 1e-5, false), "logits differ");
        assert!(dense.penultimate.allclose(&gated.penultimate, 1e-4, 1e-5, false), "penultimate differs");
        assert_eq!(dense.path(), gated.path(), "paths differ");
        for (d, g) in dense.gate_logits.iter().zip(&gated.gate_logits) {
            assert!(d.allclose(g, 1e-4, 1e-5, false), "gate logits differ");
        }
        for (d, g) in dense.mi_logits.iter().zip(&gated.mi_logits) {
            assert!(d.allclose(g, 1e-5, 1e-6, false), "MI logits differ");
        }
    }

    /// A random tiny model, once as it is and once with every gate of one layer closed (the
    /// case where gated execution keeps a zeroed filter).
    #[test]
    fn gated_passes_equal_the_dense_pass_even_when_a_layer_is_all_closed() {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = DecoupledCnn::new(&vs.root(), &ModelConfig::tiny()).unwrap();
        let x = Tensor::rand([5, 1, 28, 28], (Kind::Float, Device::Cpu));
        for close_layer in [false, true] {
            if close_layer {
                let control = model.blocks[3].control.as_ref().unwrap();
                let _ = tch::no_grad(|| control.fc2.bs.as_ref().unwrap().shallow_clone().fill_(-100.0));
            }
            let dense = tch::no_grad(|| model.forward_with_path(&x, GateMode::Eval));
            let gated = GatedNetwork::new(&model).unwrap();
            assert_same(&dense, &gated.forward(&x, true).unwrap());
            assert_same(&dense, &gated.forward_each(&x, true).unwrap());
            let closed = dense.gates[2].sum(Kind::Float).double_value(&[]) == 0.0;
            assert_eq!(closed, close_layer);
        }
    }

    /// The same on a ResNet: strided convs, gated inner convs, shortcuts that zero-pad, input
    /// standardised inside the model.
    #[test]
    fn gated_passes_equal_the_dense_pass_on_a_resnet() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = ModelConfig { normalized_input: true, ..ModelConfig::resnet(&[4, 8], 1).unwrap() };
        let model = DecoupledCnn::new(&vs.root(), &config).unwrap();
        model.set_input_statistics(&[0.5, 0.4, 0.3], &[0.2, 0.3, 0.25]).unwrap();
        // Random BatchNorm statistics and gate biases, so that some gates close.
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                if name.ends_with("running_mean") || name.ends_with("fc2.bias") {
                    let _ = t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.5));
                }
            }
        });
        let x = Tensor::rand([4, 3, 15, 15], (Kind::Float, Device::Cpu));
        let dense = tch::no_grad(|| model.forward_with_path(&x, GateMode::Eval));
        let open = dense.path().mean(Kind::Float).double_value(&[]);
        assert!(open > 0.1 && open < 0.9, "open fraction {open}");
        let gated = GatedNetwork::new(&model).unwrap();
        assert_same(&dense, &gated.forward(&x, true).unwrap());
        assert_same(&dense, &gated.forward_each(&x, true).unwrap());
    }
}
