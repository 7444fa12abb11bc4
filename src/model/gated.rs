//! Gated execution: the inference pass that computes, per input, only the filters on its
//! path. A gated layer's gates come from its controlling module on the layer *input*, so they
//! are known before the conv runs: the conv then uses only the weight rows of the open filters
//! and the weight columns of the previous layer's open filters (the closed ones are exactly
//! zero). Same logits and path as the dense pass, up to float rounding.
//!
//! At batch 1 the convolutions are small and libtorch's per-op cost (about 10 us), copies and
//! thread hand-offs would eat the FLOPs saved: the controlling modules, the choice of open
//! filters and the weight gathers always run here in Rust on a few hundred numbers, and each
//! image on the CPU of a plain network runs wholly on the host (`HostNetwork::pass`,
//! `host_ops.rs`: convolution, ReLU, gates, pooling), a batch's images spread over threads.
//! The union pass over a batch, GPUs and residual networks run their convolutions in libtorch.

use tch::{Device, Kind, Tensor};

use super::decoupled::{DecoupledCnn, ForwardOutput};
use super::host_ops::{bordered, conv3x3, linear, relu_gate_pool};
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
    host: HostNetwork,
    /// Each layer's folded `(weight, bias)` as tensors, for a layer that computes every
    /// filter of every input in libtorch.
    conv_tensors: Vec<(Tensor, Tensor)>,
}

/// The folded network as host values (no tensors, so passes can share it across threads).
#[derive(Debug)]
struct HostNetwork {
    layers: Vec<FoldedLayer>,
    /// `[classes][C_last]`
    classifier_weight: Vec<f32>,
    classifier_bias: Vec<f32>,
}

/// One image's pass on the host, as host values: per gated layer its gates, gate logits and
/// (with the heads) MI-head logits; the last layer's channel means (all channels) and logits.
struct HostOutputs {
    gates: Vec<Vec<f32>>,
    gate_logits: Vec<Vec<f32>>,
    mi_logits: Vec<Vec<f32>>,
    penultimate: Vec<f32>,
    logits: Vec<f32>,
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
        let mut conv_tensors = Vec::with_capacity(model.blocks.len());
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
                control,
                pool_after: block.pool_after,
                stride: block.stride,
                residual_from: block.residual_from,
                starts_block: block.starts_block,
            });
            conv_tensors.push((weight_tensor, bias_tensor));
        }
        let channels = model.config().in_channels;
        let input_norm = model.input_norm.as_ref().map(|(m, s)| (m.detach().view([1, channels, 1, 1]), s.detach().view([1, channels, 1, 1])));
        let host = HostNetwork {
            layers,
            classifier_weight: floats(&model.classifier.ws)?,
            classifier_bias: floats(required(&model.classifier.bs, "classifier biases"))?,
        };
        Ok(GatedNetwork { input_norm, host, conv_tensors })
    }

    /// Eval-mode forward of `x` `[N, C, H, W]` computing, in each gated layer, the union of
    /// the batch's open filters (at N = 1: exactly the input's path; the gates zero what is
    /// open for another input only). With `heads`, the MI-head logits are filled in as the
    /// dense pass fills them; `pooled_outputs` stays empty (it feeds only training).
    pub fn forward(&self, x: &Tensor, heads: bool) -> Result<ForwardOutput> {
        let _guard = tch::no_grad_guard();
        let n = x.size()[0] as usize;
        let device = x.device();
        if device == Device::Cpu && n == 1 && self.runs_on_host() {
            return self.forward_each_on_host(x, heads, false);
        }
        let to_tensor = tensor_maker(device);
        let mut h = self.normalized(x);
        // Which of the layer input's channels `h` holds, in order; None = all of them.
        let mut present: Option<Vec<usize>> = None;
        let mut path = PathOutputs::default();
        // Each layer's input at full width, kept while a residual block that starts there needs it.
        let mut block_inputs: Vec<Option<Tensor>> = Vec::with_capacity(self.host.layers.len());
        // The channel means of `h` when the layer before computed them on the host.
        let mut channel_means: Option<Vec<f32>> = None;
        for (layer, (weight_tensor, bias_tensor)) in self.host.layers.iter().zip(&self.conv_tensors) {
            block_inputs.push(layer.starts_block.then(|| scatter_channels(&h, present.as_deref(), layer.in_channels)));
            let means_of_input = channel_means.take();
            let decision = match &layer.control {
                Some(control) => {
                    let pooled = match means_of_input {
                        Some(means) => means,
                        None => floats(&h.mean_dim([2i64, 3].as_slice(), false, Kind::Float))?,
                    };
                    let decision = control.decide(&pooled, n, present.as_deref(), layer.in_channels);
                    path.record(control, &decision, n, heads, &to_tensor)?;
                    Some(decision)
                }
                None => None,
            };
            let (weight, bias) = match (&decision, &present) {
                (None, None) => (weight_tensor.shallow_clone(), bias_tensor.shallow_clone()),
                _ => {
                    let outputs = decision.as_ref().map_or_else(|| (0..layer.out_channels).collect(), |d| d.open.clone());
                    let (weight, bias) = layer.gather(&outputs, present.as_deref());
                    (to_tensor(&weight, &layer.weight_shape(outputs.len(), present.as_deref()))?, to_tensor(&bias, &[outputs.len() as i64])?)
                }
            };
            let multiplier = decision.as_ref().and_then(|d| d.multiplier.as_deref());
            let kept = decision.as_ref().map(|d| d.open.clone());
            let stride = [layer.stride, layer.stride];
            h = h.conv2d(&weight, Some(&bias), stride, [1, 1], [1, 1], 1);
            let gate_tensor = |gates: &[f32]| to_tensor(gates, &[n as i64, (gates.len() / n.max(1)) as i64, 1, 1]);
            match layer.residual_from {
                // One input on the CPU (a residual network's plain layers; a plain network
                // runs wholly on the host): ReLU, gate, pooling and the channel means on the
                // host (measured +6-14% at batch 1; at batch 8-128 libtorch's threads win).
                None if device == Device::Cpu && n == 1 => {
                    let size = h.size();
                    let shape = [size[0] as usize, size[1] as usize, size[2] as usize, size[3] as usize];
                    let (values, pooled_shape, means) = relu_gate_pool(&floats(&h)?, shape, shape[3], multiplier, layer.pool_after, 0);
                    h = to_tensor(&values, &pooled_shape)?;
                    channel_means = Some(means);
                }
                None => {
                    h = h.relu_();
                    if let Some(gates) = multiplier {
                        h = h * gate_tensor(gates)?;
                    }
                    if layer.pool_after {
                        h = h.max_pool2d_default(2);
                    }
                }
                Some(from) => {
                    // Gate the conv, widen it back to every channel, add the shortcut, ReLU.
                    if let Some(gates) = multiplier {
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
        let compact = match channel_means {
            Some(means) => means,
            None => floats(&h.mean_dim([2i64, 3].as_slice(), false, Kind::Float))?,
        };
        self.finish(path, &compact, n, present.as_deref(), &to_tensor)
    }

    /// Whether images on the CPU run wholly on the host: a plain network (no residual blocks)
    /// whose convs all have stride 1, as the host convolution has.
    pub fn runs_on_host(&self) -> bool {
        self.host.layers.iter().all(|l| l.residual_from.is_none() && l.stride == 1)
    }

    /// Every filter, one host pass per input of `x` (see [`HostNetwork::pass`]); None where
    /// images do not run on the host (a GPU, a residual network).
    pub fn forward_each_all_filters(&self, x: &Tensor) -> Result<Option<ForwardOutput>> {
        if x.device() != Device::Cpu || !self.runs_on_host() {
            return Ok(None);
        }
        let _guard = tch::no_grad_guard();
        self.forward_each_on_host(x, true, true).map(Some)
    }

    /// `x` standardised as the model's first step does, if it has one.
    fn normalized(&self, x: &Tensor) -> Tensor {
        match &self.input_norm {
            Some((mean, std)) => (x - mean) / std,
            None => x.shallow_clone(),
        }
    }

    /// The forward output from the last layer's channel means `compact` `[n][k]` (its
    /// channels `present`; all when None) and the path recorded on the way.
    fn finish(&self, path: PathOutputs, compact: &[f32], n: usize, present: Option<&[usize]>, to_tensor: &TensorMaker) -> Result<ForwardOutput> {
        let penultimate = scatter_rows(compact, n, present, self.host.last_channels());
        let logits = to_tensor(&self.host.classify(&penultimate, n), &[n as i64, self.host.classes() as i64])?;
        let penultimate = to_tensor(&penultimate, &[n as i64, self.host.last_channels() as i64])?;
        let PathOutputs { gates, gate_logits, mi_logits } = path;
        Ok(ForwardOutput { logits, gates, pooled_outputs: Vec::new(), mi_logits, gate_logits, penultimate })
    }

    /// Per input, its own path: each image of the batch through the network alone. On the
    /// CPU, a plain network's images run on the host, spread over libtorch's intra-op thread
    /// count; elsewhere each goes through [`GatedNetwork::forward`], the outputs concatenated.
    pub fn forward_each(&self, x: &Tensor, heads: bool) -> Result<ForwardOutput> {
        if x.device() == Device::Cpu && self.runs_on_host() {
            let _guard = tch::no_grad_guard();
            return self.forward_each_on_host(x, heads, false);
        }
        let n = x.size()[0];
        let outs = (0..n).map(|i| self.forward(&x.narrow(0, i, 1), heads)).collect::<Result<Vec<_>>>()?;
        Ok(concatenate(outs))
    }

    /// One [`HostNetwork::pass`] per image of `x` (on the CPU), on up to libtorch's intra-op
    /// thread count of threads, each taking a contiguous share of the batch; the outputs
    /// become tensors once, for the whole batch.
    fn forward_each_on_host(&self, x: &Tensor, heads: bool, all_filters: bool) -> Result<ForwardOutput> {
        let size = x.size();
        let shape = [size[1] as usize, size[2] as usize, size[3] as usize];
        let per_image = shape.iter().product::<usize>();
        let values = floats(&self.normalized(x).contiguous())?;
        let n = size[0] as usize;
        let threads = (tch::get_num_threads().max(1) as usize).min(n);
        let host = &self.host;
        let run = |part: &[f32]| -> Vec<HostOutputs> { part.chunks(per_image.max(1)).take(n).map(|image| host.pass(image, shape, heads, all_filters)).collect() };
        let outputs: Vec<HostOutputs> = if threads <= 1 {
            run(&values)
        } else {
            let share = n.div_ceil(threads) * per_image;
            std::thread::scope(|scope| {
                let workers: Vec<_> = values.chunks(share.max(1)).map(|part| scope.spawn(move || run(part))).collect();
                workers.into_iter().flat_map(|w| w.join().expect("a host pass does not panic")).collect()
            })
        };
        self.host.to_forward_output(&outputs, heads)
    }
}

impl HostNetwork {
    fn last_channels(&self) -> usize {
        self.layers.last().map_or(0, |l| l.out_channels)
    }

    fn classes(&self) -> usize {
        self.classifier_bias.len()
    }

    /// The classifier's logits `[n][classes]` for penultimate rows `[n][last_channels]`.
    fn classify(&self, penultimate: &[f32], n: usize) -> Vec<f32> {
        linear(penultimate, n, &self.classifier_weight, Some(&self.classifier_bias))
    }

    /// The eval-mode pass of one image `[shape]` (standardised) of a network without residual
    /// blocks or strides, wholly on the host: the activations stay in host buffers from the
    /// input to the classifier, each layer's input zero-bordered for the convolution (the step
    /// after a conv writes it so).
    ///
    /// With `all_filters`, every filter is computed and the gates zero the closed ones: the
    /// dense pass on the same kernels, to tell what skipping filters saves from what the
    /// kernels save.
    fn pass(&self, image: &[f32], mut shape: [usize; 3], heads: bool, all_filters: bool) -> HostOutputs {
        // `h`: the layer input `[shape]`, zero-bordered.
        let mut h = bordered(image, shape);
        let mut present: Option<Vec<usize>> = None;
        let (mut gates, mut gate_logits, mut mi_logits) = (Vec::new(), Vec::new(), Vec::new());
        let mut channel_means: Option<Vec<f32>> = None;
        for layer in &self.layers {
            let decision = match &layer.control {
                Some(control) => {
                    let pooled = channel_means.take().unwrap_or_else(|| plane_means(&h, shape));
                    let decision = control.decide(&pooled, 1, present.as_deref(), layer.in_channels);
                    if heads {
                        mi_logits.push(linear(&decision.z, 1, &control.mi_head, None));
                    }
                    gates.push(decision.z.clone());
                    gate_logits.push(decision.logits.clone());
                    Some(decision)
                }
                None => None,
            };
            let decision = match decision {
                Some(d) if all_filters => Some(LayerDecision { open: (0..layer.out_channels).collect(), multiplier: Some(d.z.clone()), ..d }),
                d => d,
            };
            let outputs = decision.as_ref().map_or_else(|| (0..layer.out_channels).collect(), |d| d.open.clone());
            let (weight, bias) = layer.gather(&outputs, present.as_deref());
            let conv = conv3x3(&h, shape, &weight, &bias);
            let multiplier = decision.as_ref().and_then(|d| d.multiplier.as_deref());
            let (values, pooled_shape, means) = relu_gate_pool(&conv, [1, outputs.len(), shape[1], shape[2]], shape[2] + 2, multiplier, layer.pool_after, 1);
            h = values;
            shape = [outputs.len(), pooled_shape[2] as usize, pooled_shape[3] as usize];
            channel_means = Some(means);
            present = decision.map(|d| d.open);
        }
        let compact = channel_means.unwrap_or_else(|| plane_means(&h, shape));
        let penultimate = scatter_rows(&compact, 1, present.as_deref(), self.last_channels());
        let logits = self.classify(&penultimate, 1);
        HostOutputs { gates, gate_logits, mi_logits, penultimate, logits }
    }

    /// The host passes of a batch, in order, as one forward output (one tensor per output).
    fn to_forward_output(&self, outputs: &[HostOutputs], heads: bool) -> Result<ForwardOutput> {
        let to_tensor = tensor_maker(Device::Cpu);
        let n = outputs.len();
        // Rows `[n][width]` from each output's `pick`.
        let stack = |width: usize, pick: &dyn Fn(&HostOutputs) -> &[f32]| -> Result<Tensor> {
            let values: Vec<f32> = outputs.iter().flat_map(|o| pick(o).iter().copied()).collect();
            to_tensor(&values, &[n as i64, width as i64])
        };
        let controls: Vec<&Control> = self.layers.iter().filter_map(|l| l.control.as_ref()).collect();
        let per_layer = |pick: &dyn Fn(&HostOutputs, usize) -> &[f32], width: &dyn Fn(&Control) -> usize| -> Result<Vec<Tensor>> {
            controls.iter().enumerate().map(|(l, control)| stack(width(control), &|o| pick(o, l))).collect()
        };
        let filters = |c: &Control| c.fc2_bias.len();
        Ok(ForwardOutput {
            logits: stack(self.classes(), &|o| &o.logits)?,
            gates: per_layer(&|o, l| &o.gates[l], &filters)?,
            pooled_outputs: Vec::new(),
            mi_logits: if heads { per_layer(&|o, l| &o.mi_logits[l], &|c| c.mi_head.len() / filters(c).max(1))? } else { Vec::new() },
            gate_logits: per_layer(&|o, l| &o.gate_logits[l], &filters)?,
            penultimate: stack(self.last_channels(), &|o| &o.penultimate)?,
        })
    }
}

/// The outputs of passes over parts of a batch, as one output.
fn concatenate(outs: Vec<ForwardOutput>) -> ForwardOutput {
    if outs.len() == 1 {
        return outs.into_iter().next().expect("one output");
    }
    let cat = |pick: &dyn Fn(&ForwardOutput) -> &Tensor| Tensor::cat(&outs.iter().map(pick).collect::<Vec<_>>(), 0);
    let cat_layers = |pick: &dyn Fn(&ForwardOutput) -> &Vec<Tensor>| -> Vec<Tensor> {
        (0..pick(&outs[0]).len()).map(|l| cat(&|o| &pick(o)[l])).collect()
    };
    ForwardOutput {
        logits: cat(&|o| &o.logits),
        gates: cat_layers(&|o| &o.gates),
        pooled_outputs: Vec::new(),
        mi_logits: cat_layers(&|o| &o.mi_logits),
        gate_logits: cat_layers(&|o| &o.gate_logits),
        penultimate: cat(&|o| &o.penultimate),
    }
}

/// Makes a tensor of `shape` from host values on `device`: one libtorch call on the CPU
/// (no reshaping view after it).
type TensorMaker = dyn Fn(&[f32], &[i64]) -> Result<Tensor>;

fn tensor_maker(device: Device) -> Box<TensorMaker> {
    Box::new(move |values: &[f32], shape: &[i64]| -> Result<Tensor> {
        let t = Tensor::f_from_data_size(bytemuck::cast_slice(values), shape, Kind::Float)?;
        Ok(if device == Device::Cpu { t } else { t.to_device(device) })
    })
}

/// The per-channel means of one image `[c][h][w]` given zero-bordered (GAP; the border adds
/// nothing to the sums), accumulated in f64.
fn plane_means(bordered: &[f32], [c, h, w]: [usize; 3]) -> Vec<f32> {
    bordered.chunks((h + 2) * (w + 2)).take(c).map(|plane| (plane.iter().map(|&v| v as f64).sum::<f64>() / (h * w).max(1) as f64) as f32).collect()
}

/// One gated layer's decision for a batch: which filters run, with which gates.
struct LayerDecision {
    /// Hard gates `[n][out]` and their logits.
    z: Vec<f32>,
    logits: Vec<f32>,
    /// The filters computed: those open for some input (one zeroed filter if none is).
    open: Vec<usize>,
    /// Per input, the gates of the `open` filters, where some of them are closed.
    multiplier: Option<Vec<f32>>,
}

/// The per-layer outputs a forward pass returns besides its logits.
#[derive(Default)]
struct PathOutputs {
    gates: Vec<Tensor>,
    gate_logits: Vec<Tensor>,
    mi_logits: Vec<Tensor>,
}

impl PathOutputs {
    fn record(&mut self, control: &Control, decision: &LayerDecision, n: usize, heads: bool, to_tensor: &TensorMaker) -> Result<()> {
        let out = control.fc2_bias.len();
        if heads {
            let classes = control.mi_head.len() / out.max(1);
            self.mi_logits.push(to_tensor(&linear(&decision.z, n, &control.mi_head, None), &[n as i64, classes as i64])?);
        }
        self.gates.push(to_tensor(&decision.z, &[n as i64, out as i64])?);
        self.gate_logits.push(to_tensor(&decision.logits, &[n as i64, out as i64])?);
        Ok(())
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
    /// The gates of `n` inputs from their pooled layer input (see [`Control::gate_logits`]),
    /// and the filters to compute.
    fn decide(&self, pooled: &[f32], n: usize, present: Option<&[usize]>, in_channels: usize) -> LayerDecision {
        let logits = self.gate_logits(pooled, n, present, in_channels);
        let z: Vec<f32> = logits.iter().map(|&y| if y > 0.0 { 1.0 } else { 0.0 }).collect();
        let out = self.fc2_bias.len();
        let mut open: Vec<usize> = (0..out).filter(|&o| (0..n).any(|i| z[i * out + o] > 0.0)).collect();
        // A layer whose every filter is closed keeps one, zeroed by its gate.
        let all_closed = open.is_empty();
        if all_closed {
            open.push(0);
        }
        // At N = 1 every kept filter is open: no gate to multiply.
        let (z_ref, open_ref) = (&z, &open);
        let multiplier = (n > 1 || all_closed).then(|| (0..n).flat_map(|i| open_ref.iter().map(move |&o| z_ref[i * out + o])).collect());
        LayerDecision { z, logits, open, multiplier }
    }

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
            assert_same(&dense, &gated.forward_each_all_filters(&x).unwrap().expect("a plain network runs on the host"));
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
        assert!(gated.forward_each_all_filters(&x).unwrap().is_none(), "a residual network does not run on the host");
    }
}
