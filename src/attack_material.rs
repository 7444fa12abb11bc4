//! Labelled material for fitting and judging detectors: the clean images a model classifies
//! correctly and, per attack, the adversarial images made from them that fool it.

use std::path::Path;

use ndarray::Array2;
use tch::{Device, Kind, Tensor};

use crate::attack_set::{run_attack, GateGradient};
use crate::attack_spec::{AttackName, AttackSpec};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::DecoupledCnn;
use crate::path::PathTemplates;
use crate::representations::Representations;

/// One attack's contribution: the adversarial examples proper (the clean image was classified
/// correctly and the attacked one is not).
#[derive(Debug, Clone)]
pub struct AttackBlock {
    /// e.g. "pgd eps 0.1 (40 steps)".
    pub name: String,
    /// The method, when one attack made the block.
    pub attack: Option<AttackName>,
    pub kind: BlockKind,
    /// Correctly classified clean images that were attacked.
    pub attempted: usize,
    pub fooled: Representations,
    /// The fooled images themselves, flattened `[fooled, C*H*W]`, when
    /// [`MaterialOptions::keep_images`] asked for them (to hand the same images to a peer).
    pub images: Option<Array2<f32>>,
    pub seconds: f64,
}

/// What kind of adversarial examples a block holds: the detector's experts learn from
/// different kinds ([`crate::detector_fit::fit_experts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Full-strength attacks (and attack sets read from disk).
    Strong,
    /// Attacks that stop each image at its first success: minimal, low-confidence examples.
    Minimal,
    /// Detector-aware attacks ([`crate::detector_hardening`]).
    Adaptive,
}

impl BlockKind {
    pub fn of(spec: &AttackSpec) -> Self {
        if spec.is_adaptive() {
            BlockKind::Adaptive
        } else if spec.attack.stops_early() {
            BlockKind::Minimal
        } else {
            BlockKind::Strong
        }
    }
}

impl AttackBlock {
    pub fn success_rate(&self) -> f64 {
        self.fooled.len() as f64 / self.attempted.max(1) as f64
    }
}

/// An attack and how many of the images (from the first) it runs on.
#[derive(Debug, Clone)]
pub struct PlannedAttack {
    pub spec: AttackSpec,
    /// `None`: every image.
    pub max_images: Option<usize>,
}

/// Clean rows and attack blocks of one set of images.
#[derive(Debug, Clone)]
pub struct AttackMaterial {
    /// Representations of every image, in order.
    pub all_clean: Representations,
    /// Which images the model classifies correctly.
    pub correct: Vec<bool>,
    pub attacks: Vec<AttackBlock>,
}

pub struct MaterialOptions {
    pub gates: GateGradient,
    pub batch_size: usize,
    pub show_progress: bool,
    /// Keep each block's fooled images ([`AttackBlock::images`]).
    pub keep_images: bool,
}

impl AttackMaterial {
    /// Forwards the clean images of `data` once and runs every planned attack on them.
    pub fn build(
        model: &DecoupledCnn,
        device: Device,
        data: &Dataset,
        templates: &PathTemplates,
        attacks: &[PlannedAttack],
        options: &MaterialOptions,
    ) -> Result<Self> {
        let all_clean = Representations::compute(model, device, &data.images, templates, options.batch_size)?;
        let labels = Vec::<i64>::try_from(data.labels.to_kind(Kind::Int64))?;
        let correct: Vec<bool> = all_clean.predictions.iter().zip(&labels).map(|(p, l)| p == l).collect();
        let mut material = AttackMaterial { all_clean, correct, attacks: Vec::new() };
        for planned in attacks {
            let n = planned.max_images.unwrap_or(data.len()).min(data.len());
            let subset = data.take(n);
            let indices = Tensor::arange(n as i64, (Kind::Int64, Device::Cpu));
            let outcome = run_attack(
                model,
                device,
                &subset,
                &indices,
                &planned.spec,
                options.gates,
                options.batch_size,
                options.show_progress,
            )?;
            let reps = Representations::compute(model, device, &outcome.adversarial, templates, options.batch_size)?;
            let kept = options.keep_images.then_some(&outcome.adversarial);
            let block = material.block(planned.spec.describe(), Some(&planned.spec), &reps, kept, &labels[..n], outcome.stats.seconds)?;
            material.attacks.push(block);
        }
        Ok(material)
    }

    /// Adds the attack set in `dir` (written by `pathguard attack` on these same images, from
    /// the first): its images must be the attacked versions of the first images of this set.
    pub fn add_attack_set(
        &mut self,
        model: &DecoupledCnn,
        device: Device,
        dir: &Path,
        templates: &PathTemplates,
        batch_size: usize,
    ) -> Result<()> {
        let images = crate::attack_set::read_attack_images(dir)?;
        let labels = Vec::<i64>::try_from(crate::data::image::read_npy_i64(&dir.join("labels.npy"))?)?;
        let indices = Vec::<i64>::try_from(crate::data::image::read_npy_i64(&dir.join("indices.npy"))?)?;
        if labels.len() != images.size()[0] as usize || indices.len() != labels.len() {
            return Err(Error::InvalidInput(format!(
                "attack set {}: {} images, {} labels, {} indices",
                dir.display(),
                images.size()[0],
                labels.len(),
                indices.len()
            )));
        }
        if let Some((i, &index)) = indices.iter().enumerate().find(|(i, &index)| index != *i as i64) {
            return Err(Error::InvalidInput(format!(
                "attack set {}: image {i} has index {index}; evaluate needs a set made from the first test images in order (pathguard attack --split test --limit N)",
                dir.display()
            )));
        }
        if labels.len() > self.all_clean.len() {
            return Err(Error::InvalidInput(format!(
                "attack set {} has {} images, more than the {} evaluated clean images; raise --limit or attack fewer",
                dir.display(),
                labels.len(),
                self.all_clean.len()
            )));
        }
        let reps = Representations::compute(model, device, &images, templates, batch_size)?;
        let name = format!("attack set {}", dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let block = self.block(name, None, &reps, None, &labels, 0.0)?;
        self.attacks.push(block);
        Ok(())
    }

    /// The block (of `spec`'s attack; `None`: images read from disk) of the attacked images
    /// whose clean version was right and which fool the model; `images` (the attacked images,
    /// when kept) are selected the same way.
    fn block(
        &self,
        name: String,
        spec: Option<&AttackSpec>,
        adversarial: &Representations,
        images: Option<&Tensor>,
        labels: &[i64],
        seconds: f64,
    ) -> Result<AttackBlock> {
        let attacked: Vec<usize> = (0..labels.len()).filter(|&i| self.correct[i]).collect();
        let fooled: Vec<usize> =
            attacked.iter().copied().filter(|&i| adversarial.predictions[i] != labels[i]).collect();
        let rows = Tensor::from_slice(&fooled.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let images = images.map(|t| flat_rows(&t.index_select(0, &rows))).transpose()?;
        let (attack, kind) = (spec.map(AttackSpec::name), spec.map(BlockKind::of).unwrap_or(BlockKind::Strong));
        Ok(AttackBlock { name, attack, kind, attempted: attacked.len(), fooled: adversarial.select(&fooled), images, seconds })
    }

    /// The correctly classified clean images.
    pub fn clean(&self) -> Representations {
        self.all_clean.select(&self.correct_rows())
    }

    /// Positions of the correctly classified images: the rows of [`AttackMaterial::clean`].
    pub fn correct_rows(&self) -> Vec<usize> {
        (0..self.correct.len()).filter(|&i| self.correct[i]).collect()
    }

    /// Every block's fooled images, as one.
    pub fn adversarial(&self) -> Option<Representations> {
        let parts: Vec<&Representations> = self.attacks.iter().map(|b| &b.fooled).collect();
        Representations::concat(&parts)
    }
}

/// `[N, C, H, W]` images as `[N, C*H*W]` rows.
pub fn flat_rows(images: &Tensor) -> Result<Array2<f32>> {
    let n = images.size()[0] as usize;
    let values = Vec::<f32>::try_from(images.to_kind(Kind::Float).contiguous().view([-1]))?;
    let width = if n == 0 { 0 } else { values.len() / n };
    Ok(Array2::from_shape_vec((n, width), values).expect("rows of equal width"))
}
