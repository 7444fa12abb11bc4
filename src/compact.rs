//! Acceleration by compaction: filters whose gate is open for fewer than a fraction of
//! training inputs are dropped, giving a smaller dense network whose gates still work. For
//! an input whose path uses only kept filters the compact network computes exactly the same
//! logits (a closed filter contributes zeros); for the rare others, it drops those filters'
//! contributions. In a residual block only the inner conv's filters can go: the block's
//! last conv adds into the shortcut's channels, which every later block reads.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{Checkpoint, GateMode, ModelConfig};

/// How a compact model was made; stored in its config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactionRecord {
    /// Model hash of the parent.
    pub parent: String,
    /// Filters open for fewer than this fraction of the usage images were dropped.
    pub min_usage: f64,
    pub usage_images: usize,
    /// Kept filter indices of each conv layer (all, for ungated layers).
    pub kept: Vec<Vec<i64>>,
}

/// Per gated layer, the fraction of `data`'s inputs for which each filter's gate is open.
pub fn filter_usage(checkpoint: &Checkpoint, device: Device, data: &Dataset, batch_size: usize) -> Result<Vec<Vec<f64>>> {
    let model = &checkpoint.model;
    let sizes = model.config().gate_sizes();
    let mut counts: Vec<Tensor> = sizes.iter().map(|&s| Tensor::zeros([s], (Kind::Double, device))).collect();
    let n = data.len() as i64;
    for start in (0..n).step_by(batch_size.max(1)) {
        let x = data.images.narrow(0, start, (batch_size as i64).min(n - start)).to_device(device);
        let out = tch::no_grad(|| model.forward_with_path(&x, GateMode::Eval));
        for (count, z) in counts.iter_mut().zip(&out.gates) {
            *count += z.to_kind(Kind::Double).sum_dim_intlist([0i64].as_slice(), false, Kind::Double);
        }
    }
    Ok(counts.iter().map(|c| Vec::<f64>::try_from(c.to_device(Device::Cpu) / n as f64).unwrap_or_default()).collect())
}

/// The compact model: `checkpoint` without the gated filters whose usage is below `min_usage`
/// (each gated layer keeps at least its most used filter).
pub fn compact(checkpoint: &Checkpoint, usage: &[Vec<f64>], min_usage: f64, usage_images: usize) -> Result<Checkpoint> {
    if !(0.0..1.0).contains(&min_usage) {
        return Err(Error::Config(format!("minimum usage must be in [0, 1), got {min_usage}")));
    }
    let config = checkpoint.model.config();
    if usage.len() != config.gate_sizes().len() {
        return Err(Error::Config(format!("{} usage vectors for {} gated layers", usage.len(), config.gate_sizes().len())));
    }
    let mut usage_iter = usage.iter();
    let kept: Vec<Vec<i64>> = config
        .layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            if !layer.gated {
                return (0..layer.out_channels).collect();
            }
            let u = usage_iter.next().expect("one usage vector per gated layer");
            // A residual sum, and a shortcut's source, keep every channel: a dropped filter
            // there would leave a channel the skip still carries.
            if config.output_always_full(i) || config.feeds_a_shortcut(i) {
                return (0..layer.out_channels).collect();
            }
            let mut keep: Vec<i64> = (0..u.len()).filter(|&f| u[f] >= min_usage).map(|f| f as i64).collect();
            if keep.is_empty() {
                let best = (0..u.len()).max_by(|&a, &b| u[a].total_cmp(&u[b])).unwrap_or(0);
                keep.push(best as i64);
            }
            keep
        })
        .collect();

    // The compact architecture: fewer filters, the parent's controlling-module widths.
    let mut compact_config: ModelConfig = config.clone();
    let mut c_in = config.in_channels;
    for (layer, keep) in compact_config.layers.iter_mut().zip(&kept) {
        if layer.gated {
            layer.acm_hidden = Some(layer.acm_hidden(c_in, config.acm_reduction));
        }
        c_in = layer.out_channels;
        layer.out_channels = keep.len() as i64;
    }
    compact_config.validate()?;
    let names: Vec<&str> = checkpoint.meta.class_names.iter().map(String::as_str).collect();
    let device = checkpoint.vs.device();
    let mut out = Checkpoint::new(&compact_config, &names, device)?;

    let source = checkpoint.vs.variables();
    let index = |keep: &[i64]| Tensor::from_slice(keep).to_device(device);
    let last = kept.len() - 1;
    let mut copies = Vec::new();
    for (name, target) in out.vs.variables() {
        let src = source.get(&name).ok_or_else(|| Error::Config(format!("parent has no variable {name}")))?;
        let value = if let Some(rest) = name.strip_prefix("blocks.") {
            let (layer, field) = rest.split_once('.').expect("blocks.{i}.{field}");
            let i: usize = layer.parse().map_err(|_| Error::Config(format!("bad variable name {name}")))?;
            let own = index(&kept[i]);
            let input = (i > 0).then(|| index(&kept[i - 1]));
            match field {
                "conv.weight" => {
                    let w = src.index_select(0, &own);
                    match &input {
                        Some(input) => w.index_select(1, input),
                        None => w,
                    }
                }
                "acm.fc1.weight" => src.index_select(1, input.as_ref().expect("gated layers have an input layer")),
                "acm.fc1.bias" => src.shallow_clone(),
                "acm.fc2.weight" | "acm.fc2.bias" => src.index_select(0, &own),
                "acm.mi_head.weight" => src.index_select(1, &own),
                f if f.starts_with("bn.") => src.index_select(0, &own),
                other => return Err(Error::Config(format!("compaction does not know variable {other} of layer {i}"))),
            }
        } else if name == "classifier.weight" {
            src.index_select(1, &index(&kept[last]))
        } else {
            src.shallow_clone()
        };
        if value.size() != target.size() {
            return Err(Error::Config(format!("{name}: compacted shape {:?}, expected {:?}", value.size(), target.size())));
        }
        copies.push((target, value));
    }
    tch::no_grad(|| {
        for (mut target, value) in copies {
            target.copy_(&value);
        }
    });
    out.meta.training = checkpoint.meta.training.clone();
    out.meta.compacted_from = Some(CompactionRecord {
        parent: checkpoint.model_hash().to_string(),
        min_usage,
        usage_images,
        kept,
    });
    Ok(out)
}

/// Parameters of a checkpoint's network (the controlling modules included).
pub fn parameter_count(checkpoint: &Checkpoint) -> i64 {
    checkpoint.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

/// Per input (`[N]` bool): whether its path opens only filters kept by `kept` (the
/// compaction record's per-conv-layer indices); `gates` are the full model's gated layers,
/// which are the conv layers `gated_layers`.
pub fn uses_only_kept(gates: &[Tensor], kept: &[Vec<i64>], gated_layers: &[usize]) -> Tensor {
    let n = gates.first().map(|z| z.size()[0]).unwrap_or(0);
    let device = gates.first().map(|z| z.device()).unwrap_or(Device::Cpu);
    let mut only_kept = Tensor::ones([n], (Kind::Bool, device));
    for (z, &layer) in gates.iter().zip(gated_layers) {
        let mut dropped = Tensor::ones([z.size()[1]], (Kind::Bool, device));
        let _ = dropped.index_fill_(0, &Tensor::from_slice(&kept[layer]).to_device(device), 0);
        let opens_dropped = z.gt(0.5).logical_and(&dropped.unsqueeze(0)).any_dim(1, false);
        only_kept = only_kept.logical_and(&opens_dropped.logical_not());
    }
    only_kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a ResNet, compaction drops the never-open filters of the inner convs only, and the
    /// compact network computes exactly the full one's logits (every path uses kept filters).
    #[test]
    fn a_resnet_compacts_its_inner_convs_exactly() {
        tch::manual_seed(5);
        let config = ModelConfig::resnet(&[8, 16], 1).unwrap();
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let checkpoint = Checkpoint::new(&config, &names, Device::Cpu).unwrap();
        // Close half of every gated layer's filters for good.
        tch::no_grad(|| {
            for (name, t) in checkpoint.vs.variables() {
                if name.ends_with("acm.fc2.bias") {
                    let half = t.size()[0] / 2;
                    let _ = t.narrow(0, 0, half).fill_(-1e4);
                }
            }
        });
        let x = Tensor::rand([6, 3, 32, 32], (Kind::Float, Device::Cpu));
        let data = Dataset { images: x.shallow_clone(), labels: Tensor::zeros([6], (Kind::Int64, Device::Cpu)), class_names: names.iter().map(|s| s.to_string()).collect() };
        let usage = filter_usage(&checkpoint, Device::Cpu, &data, 6).unwrap();
        let compacted = compact(&checkpoint, &usage, 0.01, 6).unwrap();
        let widths: Vec<i64> = compacted.model.config().layers.iter().map(|l| l.out_channels).collect();
        // Stem, then per block: the inner conv loses at least its closed half, the conv
        // closing the block stays full.
        assert_eq!((widths[0], widths[2], widths[4]), (8, 8, 16), "{widths:?}");
        assert!(widths[1] <= 4 && widths[3] <= 8, "{widths:?}");
        let full = checkpoint.model.predict(&x).unwrap().0;
        let small = compacted.model.predict(&x).unwrap().0;
        assert!(full.allclose(&small, 1e-4, 1e-5, false), "logits differ");
    }
}
