//! Benign corruptions (issue 19): what an image pipeline does to images long before an
//! attacker does. Written from their definitions in MNIST-C (Mu & Gilmer, 2019) and
//! CIFAR-10-C (Hendrycks & Dietterich, 2019); nothing is downloaded. Every corruption takes a
//! batch `[N, C, H, W]` in [0, 1] and returns one of the same shape in [0, 1]. Severities start
//! at barely visible; random draws are seeded.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Poisson, StandardNormal};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Seeded random draws as tensors. A generator of our own: libtorch's is global, so another
/// thread drawing at the same time would change a corruption.
struct Draws(StdRng);

impl Draws {
    fn like(&mut self, x: &Tensor, draw: impl Fn(&mut StdRng) -> f32) -> Tensor {
        let values: Vec<f32> = (0..x.numel()).map(|_| draw(&mut self.0)).collect();
        Tensor::from_slice(&values).view(x.size().as_slice())
    }

    fn uniform(&mut self, x: &Tensor) -> Tensor {
        self.like(x, |r| r.gen::<f32>())
    }

    fn normal(&mut self, x: &Tensor) -> Tensor {
        self.like(x, |r| StandardNormal.sample(r))
    }

    /// Poisson counts of the given rates (0 where the rate is 0).
    fn poisson(&mut self, rates: &Tensor) -> Result<Tensor> {
        let rates = Vec::<f32>::try_from(rates.flatten(0, -1))?;
        let counts: Vec<f32> = rates
            .iter()
            .map(|&rate| if rate > 0.0 { Poisson::new(rate).map(|p| p.sample(&mut self.0)).unwrap_or(rate) } else { 0.0 })
            .collect();
        Ok(Tensor::from_slice(&counts))
    }

    /// `n` integers in 0..below.
    fn integers(&mut self, n: i64, below: i64) -> Tensor {
        let values: Vec<i64> = (0..n).map(|_| self.0.gen_range(0..below)).collect();
        Tensor::from_slice(&values)
    }
}

/// A corruption and its severities (1-based on the command line).
pub struct Corruption {
    pub name: &'static str,
    /// The parameter at each severity, in the corruption's own unit (see [`Corruption::unit`]).
    pub levels: &'static [f64],
    pub unit: &'static str,
}

pub const CORRUPTIONS: [Corruption; 11] = [
    Corruption { name: "gaussian-noise", levels: &[0.02, 0.04, 0.06, 0.08, 0.10], unit: "standard deviation" },
    Corruption { name: "shot-noise", levels: &[1000.0, 500.0, 250.0, 100.0, 50.0], unit: "photons at white" },
    Corruption { name: "impulse-noise", levels: &[0.005, 0.01, 0.02, 0.035, 0.05], unit: "share of pixels" },
    Corruption { name: "gaussian-blur", levels: &[0.4, 0.6, 0.8, 1.0, 1.3], unit: "sigma in pixels" },
    Corruption { name: "motion-blur", levels: &[2.0, 3.0, 5.0, 7.0], unit: "length in pixels" },
    Corruption { name: "jpeg", levels: &[90.0, 75.0, 50.0, 30.0], unit: "quality" },
    Corruption { name: "brightness", levels: &[0.05, 0.1, 0.15, 0.2, 0.3], unit: "added to every pixel" },
    Corruption { name: "contrast", levels: &[0.9, 0.8, 0.7, 0.6, 0.5], unit: "contrast factor" },
    Corruption { name: "translate", levels: &[1.0, 2.0, 3.0, 4.0], unit: "pixels, random direction" },
    Corruption { name: "rotate", levels: &[4.0, 8.0, 12.0, 16.0, 20.0], unit: "degrees, random sign" },
    Corruption { name: "scale", levels: &[0.04, 0.08, 0.12, 0.16, 0.2], unit: "zoom in or out by this share" },
];

pub fn find(name: &str) -> Result<&'static Corruption> {
    CORRUPTIONS.iter().find(|c| c.name == name).ok_or_else(|| {
        let names: Vec<&str> = CORRUPTIONS.iter().map(|c| c.name).collect();
        Error::Config(format!("unknown corruption {name:?}; use one of {}", names.join(", ")))
    })
}

impl Corruption {
    /// The parameter of `severity` (1-based).
    pub fn level(&self, severity: usize) -> Result<f64> {
        if severity == 0 || severity > self.levels.len() {
            return Err(Error::Config(format!("{} has severities 1 to {}, not {severity}", self.name, self.levels.len())));
        }
        Ok(self.levels[severity - 1])
    }

    /// `images` corrupted at `severity`, random draws from `seed`.
    pub fn apply(&self, images: &Tensor, severity: usize, seed: i64) -> Result<Tensor> {
        let level = self.level(severity)?;
        let size = images.size();
        if size.len() != 4 || images.kind() != Kind::Float {
            return Err(Error::Config(format!("corruptions take float32 [N, C, H, W] images, not {:?} {size:?}", images.kind())));
        }
        let mut draws = Draws(StdRng::seed_from_u64(seed as u64));
        let x = images.to_device(Device::Cpu);
        let n = size[0];
        let out = match self.name {
            "gaussian-noise" => &x + draws.normal(&x) * level,
            "shot-noise" => draws.poisson(&(&x * level))?.view(size.as_slice()) / level,
            "impulse-noise" => {
                let hit = draws.uniform(&x).lt(level);
                let salt = draws.uniform(&x).lt(0.5).to_kind(Kind::Float);
                salt.where_self(&hit, &x)
            }
            "gaussian-blur" => {
                let radius = (2.0 * level).ceil() as i64;
                let taps: Vec<f32> =
                    (-radius..=radius).map(|i| (-(i * i) as f64 / (2.0 * level * level)).exp() as f32).collect();
                separable_blur(&x, &taps, &taps)
            }
            "motion-blur" => {
                // A horizontal streak: the average over `level` pixels (centred; even lengths
                // lean right by half a pixel, as a camera pan would).
                let length = level as usize;
                let taps = vec![1.0f32; length + 1 - length % 2];
                let mut taps = taps;
                if length % 2 == 0 {
                    taps[0] = 0.5;
                    *taps.last_mut().expect("taps") = 0.5;
                }
                separable_blur(&x, &taps, &[1.0])
            }
            "jpeg" => jpeg_round_trip(&x, level as u8)?,
            "brightness" => &x + level,
            "contrast" => {
                let mean = x.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
                (&x - &mean) * level + &mean
            }
            "translate" => {
                // One of the eight compass directions per image, `level` pixels along each axis used.
                let direction = draws.integers(n, 8);
                let angle = direction.to_kind(Kind::Float) * (std::f64::consts::PI / 4.0);
                let (dx, dy) = ((angle.cos() * level).round(), (angle.sin() * level).round());
                let (w, h) = (size[3] as f64, size[2] as f64);
                warp(&x, &Tensor::ones([n], (Kind::Float, Device::Cpu)), &Tensor::zeros([n], (Kind::Float, Device::Cpu)), &(dx * (2.0 / w)), &(dy * (2.0 / h)))
            }
            "rotate" => {
                let sign = draws.integers(n, 2).to_kind(Kind::Float) * 2.0 - 1.0;
                let zeros = Tensor::zeros([n], (Kind::Float, Device::Cpu));
                warp(&x, &zeros.ones_like(), &(sign * level.to_radians()), &zeros, &zeros)
            }
            "scale" => {
                let grow = draws.integers(n, 2).to_kind(Kind::Bool);
                let zoom = Tensor::full([n], 1.0 + level, (Kind::Float, Device::Cpu))
                    .where_self(&grow, &Tensor::full([n], 1.0 - level, (Kind::Float, Device::Cpu)));
                let zeros = zoom.zeros_like();
                warp(&x, &zoom, &zeros, &zeros, &zeros)
            }
            other => unreachable!("corruption {other} is listed but not implemented"),
        };
        Ok(out.clamp(0.0, 1.0).to_kind(Kind::Float).to_device(images.device()))
    }
}

/// Every image under one mild corruption: image i gets corruption i mod 11 at severity 1 or 2
/// (alternating per round of 11), so a batch holds every mild corruption in equal shares.
/// What a detector that must not flag benign changes is fitted and calibrated on.
pub fn mild_mix(images: &Tensor, seed: i64) -> Result<Tensor> {
    let n = images.size()[0];
    let mut out = images.shallow_clone();
    let combos = (CORRUPTIONS.len() * 2) as i64;
    for (k, corruption) in CORRUPTIONS.iter().enumerate() {
        for severity in [1usize, 2] {
            let combo = k as i64 + CORRUPTIONS.len() as i64 * (severity as i64 - 1);
            let rows = Tensor::arange_start_step(combo, n, combos, (Kind::Int64, images.device()));
            if rows.numel() == 0 {
                continue;
            }
            let corrupted = corruption.apply(&images.index_select(0, &rows), severity, seed + combo)?;
            out = out.index_copy(0, &rows, &corrupted);
        }
    }
    Ok(out)
}

/// Convolves each channel with `vertical` (a column) and `horizontal` (a row), normalised,
/// reflecting at the borders.
fn separable_blur(x: &Tensor, vertical: &[f32], horizontal: &[f32]) -> Tensor {
    let channels = x.size()[1];
    let kernel = |taps: &[f32], shape: [i64; 4]| {
        let sum: f32 = taps.iter().sum();
        let normalised: Vec<f32> = taps.iter().map(|t| t / sum).collect();
        Tensor::from_slice(&normalised).view(shape).repeat([channels, 1, 1, 1])
    };
    let (v, h) = (vertical.len() as i64, horizontal.len() as i64);
    let padded = x.reflection_pad2d([h / 2, h / 2, v / 2, v / 2]);
    padded
        .conv2d(&kernel(vertical, [1, 1, v, 1]), None::<Tensor>, [1, 1], [0, 0], [1, 1], channels)
        .conv2d(&kernel(horizontal, [1, 1, 1, h]), None::<Tensor>, [1, 1], [0, 0], [1, 1], channels)
}

/// Zooms each image by `zoom`, rotates it by `angle` (radians) and shifts it by (`dx`, `dy`)
/// in grid units (2 = the width), bilinear, black outside.
fn warp(x: &Tensor, zoom: &Tensor, angle: &Tensor, dx: &Tensor, dy: &Tensor) -> Tensor {
    // The grid maps output coordinates to input ones: the inverse transform.
    let (cos, sin) = (angle.cos() / zoom, angle.sin() / zoom);
    let theta = Tensor::stack(&[&cos, &(-&sin), &(-dx), &sin, &cos, &(-dy)], 1).view([-1, 2, 3]);
    let grid = Tensor::affine_grid_generator(&theta, x.size(), false);
    x.grid_sampler(&grid, 0, 0, false)
}

/// Each image encoded as JPEG at `quality` and decoded again.
fn jpeg_round_trip(x: &Tensor, quality: u8) -> Result<Tensor> {
    use image::codecs::jpeg::JpegEncoder;
    use image::ExtendedColorType;
    let size = x.size();
    let (channels, h, w) = (size[1], size[2] as u32, size[3] as u32);
    let colour = match channels {
        1 => ExtendedColorType::L8,
        3 => ExtendedColorType::Rgb8,
        c => return Err(Error::Config(format!("JPEG takes 1 or 3 channels, not {c}"))),
    };
    let mut out = Vec::with_capacity(size[0] as usize);
    for i in 0..size[0] {
        // Channels last, 8 bits, as a JPEG holds them.
        let pixels = (x.get(i).permute([1, 2, 0]) * 255.0).round().clamp(0.0, 255.0).to_kind(Kind::Uint8).contiguous();
        let bytes = Vec::<u8>::try_from(pixels.flatten(0, -1))?;
        let mut encoded = Vec::new();
        JpegEncoder::new_with_quality(&mut encoded, quality)
            .encode(&bytes, w, h, colour)
            .map_err(|e| Error::Config(format!("JPEG encoding: {e}")))?;
        let decoded = image::load_from_memory_with_format(&encoded, image::ImageFormat::Jpeg)
            .map_err(|e| Error::Config(format!("JPEG decoding: {e}")))?;
        let raw = if channels == 1 { decoded.to_luma8().into_raw() } else { decoded.to_rgb8().into_raw() };
        out.push(Tensor::from_slice(&raw).view([h as i64, w as i64, channels]).permute([2, 0, 1]).to_kind(Kind::Float) / 255.0);
    }
    Ok(Tensor::stack(&out, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> Tensor {
        tch::manual_seed(0);
        Tensor::rand([4, 1, 28, 28], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn every_corruption_keeps_shape_and_range_and_grows_with_severity() {
        let x = images();
        for c in &CORRUPTIONS {
            let mut previous = 0.0;
            for severity in 1..=c.levels.len() {
                let y = c.apply(&x, severity, 7).unwrap();
                assert_eq!(y.size(), x.size(), "{}", c.name);
                assert!(y.min().double_value(&[]) >= 0.0 && y.max().double_value(&[]) <= 1.0, "{}", c.name);
                let change = (&y - &x).abs().mean(Kind::Float).double_value(&[]);
                assert!(change > 0.0, "{} severity {severity} changed nothing", c.name);
                // Contrast on uniform noise and geometric changes may wobble; the rest grow.
                if !matches!(c.name, "translate" | "rotate" | "scale") {
                    assert!(change >= previous * 0.95, "{} severity {severity}: {change} < {previous}", c.name);
                }
                previous = change;
                assert!(c.apply(&x, severity, 7).unwrap().equal(&y), "{} is reproducible with a seed", c.name);
            }
        }
    }

    #[test]
    fn translation_by_whole_pixels_moves_pixels_exactly() {
        let x = images();
        let y = find("translate").unwrap().apply(&x, 2, 3).unwrap();
        // Each image is a whole-pixel shift of its input: its interior matches the input's
        // somewhere within 2 pixels.
        for i in 0..4 {
            let interior = y.get(i).narrow(1, 4, 20).narrow(2, 4, 20);
            let mut best = f64::INFINITY;
            for dy in -2..=2i64 {
                for dx in -2..=2i64 {
                    let shifted = x.get(i).narrow(1, 4 - dy, 20).narrow(2, 4 - dx, 20);
                    best = best.min((&interior - shifted).abs().max().double_value(&[]));
                }
            }
            assert!(best < 1e-5, "image {i}: no whole-pixel shift explains the output ({best})");
        }
    }

    #[test]
    fn the_mild_mix_uses_every_corruption_at_severity_one_and_two() {
        tch::manual_seed(1);
        let x = Tensor::rand([44, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = mild_mix(&x, 0).unwrap();
        let combos = 2 * CORRUPTIONS.len() as i64;
        for (k, c) in CORRUPTIONS.iter().enumerate() {
            for severity in [1usize, 2] {
                let combo = k as i64 + CORRUPTIONS.len() as i64 * (severity as i64 - 1);
                let rows = Tensor::from_slice(&[combo, combo + combos]);
                let expected = c.apply(&x.index_select(0, &rows), severity, combo).unwrap();
                assert!(y.index_select(0, &rows).equal(&expected), "rows {combo}: {} severity {severity}", c.name);
            }
        }
    }

    #[test]
    fn bad_severities_and_names_are_refused() {
        let err = find("fog").err().unwrap().to_string();
        assert!(err.contains("unknown corruption \"fog\""), "{err}");
        let err = find("jpeg").unwrap().apply(&images(), 9, 0).err().unwrap().to_string();
        assert!(err.contains("severities 1 to 4"), "{err}");
    }
}
