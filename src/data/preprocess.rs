//! Bringing images to the shape a model takes: the channel count and the square side.
//!
//! The rule is part of the model (recorded in its `config.json`), so that training data,
//! evaluation data and the images the service receives go through exactly the same steps.
//! Grey becomes colour by repeating the channel; colour becomes grey with the ITU-R BT.601
//! luma weights (as the service always did). A different size is refused unless the rule
//! says to resize: shorter side to the model's side (bilinear, antialiased when shrinking),
//! then the centre square.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// What to do with images whose size is not the model's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Refuse them (silent resampling changes what the model sees).
    #[default]
    Refuse,
    /// Scale the shorter side to the model's side, then crop the centre square.
    ShorterSideCrop,
}

impl Resize {
    /// The name in configs, flags and GetInfo.
    pub fn name(self) -> &'static str {
        match self {
            Resize::Refuse => "refuse",
            Resize::ShorterSideCrop => "shorter-side-crop",
        }
    }

    pub fn from_name(name: &str) -> Option<Resize> {
        [Resize::Refuse, Resize::ShorterSideCrop].into_iter().find(|r| r.name() == name)
    }
}

/// What a model takes: `channels` x `size` x `size` pixels in [0, 1], and what is done to
/// images of another shape. Data sets, user files and the service's requests all go through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSpec {
    pub channels: i64,
    pub size: i64,
    pub resize: Resize,
}

impl InputSpec {
    /// The shipped Fashion-MNIST model's: 28x28 grey, other sizes refused.
    pub fn fashion_mnist() -> Self {
        InputSpec { channels: 1, size: 28, resize: Resize::Refuse }
    }

    /// Values of one image (C x H x W).
    pub fn values_per_image(&self) -> usize {
        (self.channels * self.size * self.size) as usize
    }

    /// `[C, H, W]` of one image.
    pub fn image_shape(&self) -> [i64; 3] {
        [self.channels, self.size, self.size]
    }

    /// How attack and corruption sets store such images (their manifests' words).
    pub fn stored_as(&self) -> String {
        let [c, h, w] = self.image_shape();
        format!("float32 in [0, 1], NCHW [N, {c}, {h}, {w}]")
    }

    /// Words for messages: "28x28 grey" or "32x32 RGB".
    pub fn describe(&self) -> String {
        let colour = match self.channels {
            1 => "grey".to_string(),
            3 => "RGB".to_string(),
            c => format!("{c}-channel"),
        };
        format!("{s}x{s} {colour}", s = self.size)
    }

    /// `images` `[N, C, H, W]` float in [0, 1] as `[N, channels, size, size]`, or why not.
    pub fn apply(&self, images: &Tensor) -> std::result::Result<Tensor, String> {
        let shape = images.size();
        let [_, c, h, w] = shape[..] else {
            return Err(format!("images have shape {shape:?}, expected [N, C, H, W]"));
        };
        let images = match (c, self.channels) {
            (c, want) if c == want => images.shallow_clone(),
            (1, 3) => images.repeat([1, 3, 1, 1]),
            (3, 1) => {
                let weights = Tensor::from_slice(&[0.299f32, 0.587, 0.114]).view([1, 3, 1, 1]).to_device(images.device());
                (images * weights).sum_dim_intlist(1, true, Kind::Float)
            }
            (c, want) => return Err(format!("images have {c} channels; the model takes {want}")),
        };
        if (h, w) == (self.size, self.size) {
            return Ok(images);
        }
        match self.resize {
            Resize::Refuse => Err(format!(
                "images are {w}x{h} pixels; the model takes {s}x{s} (resize them, or choose \
                 the shorter-side-crop resize rule)",
                s = self.size
            )),
            Resize::ShorterSideCrop => Ok(shorter_side_crop(&images, self.size)),
        }
    }
}

fn shorter_side_crop(images: &Tensor, size: i64) -> Tensor {
    let shape = images.size();
    let (h, w) = (shape[2], shape[3]);
    let scale = size as f64 / h.min(w) as f64;
    let (nh, nw) = (((h as f64 * scale).round() as i64).max(size), ((w as f64 * scale).round() as i64).max(size));
    let resized = if scale < 1.0 {
        images.internal_upsample_bilinear2d_aa([nh, nw], false, None, None)
    } else {
        images.upsample_bilinear2d([nh, nw], false, None, None)
    };
    resized.narrow(2, (nh - size) / 2, size).narrow(3, (nw - size) / 2, size).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn channels_are_converted_and_sizes_refused_or_resized() {
        let grey = Tensor::rand([2, 1, 8, 8], (Kind::Float, Device::Cpu));
        let rgb = InputSpec { channels: 3, size: 8, resize: Resize::Refuse }.apply(&grey).unwrap();
        assert_eq!(rgb.size(), vec![2, 3, 8, 8]);
        let back = InputSpec { channels: 1, size: 8, resize: Resize::Refuse }.apply(&rgb).unwrap();
        assert!((back - &grey).abs().max().double_value(&[]) < 1e-5, "luma of equal channels is the channel");

        let wide = Tensor::rand([1, 3, 12, 20], (Kind::Float, Device::Cpu));
        let err = InputSpec { channels: 3, size: 8, resize: Resize::Refuse }.apply(&wide).unwrap_err();
        assert!(err.contains("20x12") && err.contains("8x8"), "{err}");
        let out = InputSpec { channels: 3, size: 8, resize: Resize::ShorterSideCrop }.apply(&wide).unwrap();
        assert_eq!(out.size(), vec![1, 3, 8, 8]);
        let small = Tensor::rand([1, 3, 4, 6], (Kind::Float, Device::Cpu));
        let up = InputSpec { channels: 3, size: 8, resize: Resize::ShorterSideCrop }.apply(&small).unwrap();
        assert_eq!(up.size(), vec![1, 3, 8, 8]);
        assert!(up.min().double_value(&[]) >= 0.0 && up.max().double_value(&[]) <= 1.0);

        let four = Tensor::rand([1, 4, 8, 8], (Kind::Float, Device::Cpu));
        assert!(InputSpec { channels: 3, size: 8, resize: Resize::Refuse }.apply(&four).unwrap_err().contains("4 channels"));
    }

    #[test]
    fn a_uniform_image_stays_uniform_when_resized() {
        let image = Tensor::full([1, 1, 30, 50], 0.25, (Kind::Float, Device::Cpu));
        let out = InputSpec { channels: 1, size: 10, resize: Resize::ShorterSideCrop }.apply(&image).unwrap();
        assert!((out - 0.25).abs().max().double_value(&[]) < 1e-5);
    }
}
