//! Screening in process: the model and its detector, turning a batch of images into
//! predictions, adversarial scores and path summaries. The server's workers and
//! `pathguard screen` without `--server` both use this.

use std::path::Path;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use crate::detector::{noisy_or, PathDetector, DETECTOR_FILE};
use crate::distribution::{Distance, TrainingDistribution, DISTRIBUTION_FILE};
use crate::error::{Error, Result};
use crate::model::{Checkpoint, Execution, Inference};

/// What screening says about one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Screened {
    pub predicted_class: i64,
    pub probabilities: Vec<f32>,
    /// In [0, 1]; higher = more likely adversarial.
    pub score: f64,
    /// Per gated layer: fraction of filters switched on.
    pub open_fraction: Vec<f32>,
    /// Per gated layer: fraction of filters whose state differs from the predicted class's
    /// template.
    pub template_deviation: Vec<f32>,
    /// The path, one byte per filter (0 or 1), gated layers in order.
    pub path: Vec<u8>,
    /// Each detector expert's score, in the detector's order; `score` is their noisy-OR.
    pub expert_scores: Vec<f64>,
    /// How far the image is from the clean training images (when the model has a
    /// `distribution.json`).
    pub distribution: Option<Distance>,
    /// Per gated layer: how much its path features pushed the experts toward "adversarial"
    /// (their logit contributions, summed; negative pulled toward clean).
    pub layer_evidence: Vec<f64>,
}

/// Where the time of one [`Screener::screen_timed`] call went.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScreenTimes {
    /// The forward pass (logits and path).
    pub model: Duration,
    /// Path features, the detector's experts, the distance to the training images, and the
    /// per-image results.
    pub detector: Duration,
}

/// Packs 0/1 bytes, bit i in byte i / 8 at position i % 8 (least significant first).
pub fn pack_bits(bits: &[u8]) -> Vec<u8> {
    let mut packed = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b != 0 {
            packed[i / 8] |= 1 << (i % 8);
        }
    }
    packed
}

/// A loaded model with its detector, on one device.
#[derive(Debug)]
pub struct Screener {
    pub checkpoint: Checkpoint,
    pub detector: PathDetector,
    /// The training distribution, when `distribution.json` is beside the model.
    pub distribution: Option<TrainingDistribution>,
    pub device: Device,
    /// How the forward pass runs (auto unless `with_execution` says otherwise).
    pub inference: Inference,
}

impl Screener {
    /// Loads `dir` (model and its `detector.json`) onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let checkpoint = Checkpoint::load(dir, device)?;
        let detector_path = dir.join(DETECTOR_FILE);
        if !detector_path.exists() {
            return Err(Error::Checkpoint {
                path: detector_path,
                reason: "no detector beside the model; fit one with `pathguard fit-detector --model DIR`".into(),
            });
        }
        let detector = PathDetector::load(&detector_path, checkpoint.model_hash())?;
        let distribution_path = dir.join(DISTRIBUTION_FILE);
        let distribution = if distribution_path.exists() {
            Some(TrainingDistribution::load(&distribution_path, checkpoint.model_hash())?)
        } else {
            None
        };
        let inference = Inference::new(&checkpoint.model, Execution::Auto)?;
        Ok(Screener { checkpoint, detector, distribution, device, inference })
    }

    /// Runs the forward pass `execution`'s way.
    pub fn with_execution(mut self, execution: Execution) -> Result<Self> {
        self.inference = Inference::new(&self.checkpoint.model, execution)?;
        Ok(self)
    }

    pub fn class_names(&self) -> &[String] {
        &self.checkpoint.meta.class_names
    }

    pub fn gate_sizes(&self) -> Vec<usize> {
        self.checkpoint.model.config().gate_sizes().iter().map(|&s| s as usize).collect()
    }

    /// Screens `images` (`[N, 1, 28, 28]` float32 in [0, 1], any device) in one forward pass.
    pub fn screen(&self, images: &Tensor) -> Result<Vec<Screened>> {
        Ok(self.screen_timed(images)?.0)
    }

    /// [`Screener::screen`], also saying how long the forward pass and the rest took.
    pub fn screen_timed(&self, images: &Tensor) -> Result<(Vec<Screened>, ScreenTimes)> {
        let started = Instant::now();
        let model = &self.checkpoint.model;
        let x = images.to_device(self.device);
        let out = self.inference.forward(model, &x)?;
        // On CUDA the forward pass only queues kernels; reading the logits waits for them, so
        // that the time below is the model's and not the detector's.
        let probabilities = out.logits.softmax(1, Kind::Float).to_device(Device::Cpu);
        let model_time = started.elapsed();
        let reading = self.detector.read(&out)?;
        let (expert_scores, rows) = (&reading.expert_scores, &reading.statistics);
        let scores = noisy_or(expert_scores);
        let distances = match &self.distribution {
            Some(d) => Some(d.distances(&out)?),
            None => None,
        };
        let predicted = Vec::<i64>::try_from(out.logits.argmax(1, false).to_device(Device::Cpu))?;
        let path = Vec::<u8>::try_from(out.path().to_kind(Kind::Uint8).to_device(Device::Cpu).contiguous().view([-1]))?;
        let bits = path.len() / predicted.len().max(1);
        let layers = out.gates.len();
        // Columns 0..L of the features are the open fractions, L..2L the Hamming deviations.
        let column = |i: usize, j: usize| rows[[i, j]] as f32;
        let screened = (0..predicted.len())
            .map(|i| Screened {
                predicted_class: predicted[i],
                probabilities: Vec::<f32>::try_from(probabilities.get(i as i64)).unwrap_or_default(),
                score: scores[i],
                open_fraction: (0..layers).map(|l| column(i, l)).collect(),
                template_deviation: (0..layers).map(|l| column(i, layers + l)).collect(),
                path: path[i * bits..(i + 1) * bits].to_vec(),
                expert_scores: expert_scores.iter().map(|e| e[i]).collect(),
                distribution: distances.as_ref().map(|d| d[i]),
                layer_evidence: reading.layer_evidence.row(i).to_vec(),
            })
            .collect();
        Ok((screened, ScreenTimes { model: model_time, detector: started.elapsed() - model_time }))
    }
}

#[cfg(test)]
mod tests {
    use super::pack_bits;

    #[test]
    fn the_screener_can_move_to_a_worker_thread() {
        // The model (tch tensors) is Send but not Sync: it lives on one worker thread.
        fn assert_send<T: Send>() {}
        assert_send::<super::Screener>();
    }

    #[test]
    fn bits_pack_least_significant_first() {
        assert_eq!(pack_bits(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 1]), vec![0b0000_0001, 0b0000_0010]);
        assert_eq!(pack_bits(&[0, 1, 1]), vec![0b0000_0110]);
        assert!(pack_bits(&[]).is_empty());
    }
}
