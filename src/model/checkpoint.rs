//! Checkpoints: a directory with `model.safetensors` (weights under readable `nn::Path`
//! names, loadable from PyTorch by name) and `config.json` ([`ModelMeta`]: architecture,
//! class names, pixel convention, training record and the weights' SHA-256).
//!
//! Writes are atomic per file (temp file in the same directory, fsync, rename). The weights
//! are renamed first and the config last; a crash in between leaves a config whose hash no
//! longer matches, which loading reports instead of using mismatched files.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{nn, Device, Kind, Tensor};

use super::config::ModelConfig;
use super::decoupled::DecoupledCnn;
use crate::data::{InputSpec, Resize};
use crate::error::{Error, Result};
use crate::train::TrainingRecord;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
const FORMAT: &str = "pathguard-decoupled-cnn";
const FORMAT_VERSION: u32 = 1;

/// How pixels must be given to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PixelConvention {
    pub dtype: String,
    pub range: [f32; 2],
    pub layout: String,
    /// `[C, H, W]` of one image.
    pub shape: [i64; 3],
}

impl PixelConvention {
    pub fn for_config(config: &ModelConfig) -> Self {
        PixelConvention {
            dtype: "float32".into(),
            range: [0.0, 1.0],
            layout: "NCHW".into(),
            shape: [config.in_channels, config.image_size, config.image_size],
        }
    }
}

/// Everything in `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelMeta {
    pub format: String,
    pub format_version: u32,
    pub architecture: ModelConfig,
    pub class_names: Vec<String>,
    pub pixel_convention: PixelConvention,
    /// What is done to images of another size before they reach the model (data sets and
    /// the service alike); checkpoints from before this field refuse them.
    #[serde(default)]
    pub resize: Resize,
    pub weights_file: String,
    /// SHA-256 of the weights file: the model's identity ("model hash") everywhere.
    pub weights_sha256: String,
    pub training: Option<TrainingRecord>,
    /// Set on models made by `pathguard compact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted_from: Option<crate::compact::CompactionRecord>,
}

impl ModelMeta {
    /// What the model takes: its input shape and resize rule.
    pub fn input_spec(&self) -> InputSpec {
        let [channels, size, _] = self.pixel_convention.shape;
        InputSpec { channels, size, resize: self.resize }
    }
}

/// A loaded model: its variables, the network built on them, and its metadata.
#[derive(Debug)]
pub struct Checkpoint {
    pub vs: nn::VarStore,
    pub model: DecoupledCnn,
    pub meta: ModelMeta,
}

impl Checkpoint {
    /// A freshly initialised model (not yet saved: `meta.weights_sha256` is empty).
    pub fn new(config: &ModelConfig, class_names: &[&str], device: Device) -> Result<Self> {
        if class_names.len() as i64 != config.num_classes {
            return Err(Error::Config(format!(
                "{} class names for {} classes",
                class_names.len(),
                config.num_classes
            )));
        }
        let vs = nn::VarStore::new(device);
        let model = DecoupledCnn::new(&vs.root(), config)?;
        let meta = ModelMeta {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            architecture: config.clone(),
            class_names: class_names.iter().map(|s| s.to_string()).collect(),
            pixel_convention: PixelConvention::for_config(config),
            resize: Resize::Refuse,
            weights_file: WEIGHTS_FILE.into(),
            weights_sha256: String::new(),
            training: None,
            compacted_from: None,
        };
        Ok(Checkpoint { vs, model, meta })
    }

    /// Writes the checkpoint to `dir` (created if missing), updating `meta.weights_sha256`.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        Self::save_parts(&self.vs, &mut self.meta, dir)
    }

    /// [`Checkpoint::save`] for a checkpoint borrowed apart (training reads `vs` while the
    /// metadata of each epoch is written).
    pub fn save_parts(vs: &nn::VarStore, meta: &mut ModelMeta, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let weights = dir.join(WEIGHTS_FILE);
        // tch picks the format by extension, so the temp name ends in .safetensors too.
        let tmp = dir.join(format!(".{WEIGHTS_FILE}.{}.tmp.safetensors", std::process::id()));
        let result = (|| {
            vs.save(&tmp)?;
            let bytes = std::fs::read(&tmp).map_err(|e| Error::io(&tmp, e))?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
            meta.weights_sha256 = sha256_hex(&bytes);
            std::fs::rename(&tmp, &weights).map_err(|e| Error::io(&weights, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        let json = serde_json::to_vec_pretty(&*meta).expect("metadata serialises");
        write_atomic(&dir.join(CONFIG_FILE), &json)
    }

    /// Loads and validates a checkpoint directory onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let fail = |path: &Path, reason: String| Error::Checkpoint { path: path.into(), reason };
        if !dir.is_dir() {
            return Err(fail(dir, "no such model directory".into()));
        }
        let config_path = dir.join(CONFIG_FILE);
        let config_bytes = std::fs::read(&config_path)
            .map_err(|e| fail(&config_path, format!("cannot read: {e}")))?;
        let meta: ModelMeta = serde_json::from_slice(&config_bytes)
            .map_err(|e| fail(&config_path, format!("not a valid model config: {e}")))?;
        if meta.format != FORMAT || meta.format_version != FORMAT_VERSION {
            return Err(fail(
                &config_path,
                format!(
                    "format {} v{} is not {FORMAT} v{FORMAT_VERSION}",
                    meta.format, meta.format_version
                ),
            ));
        }
        meta.architecture.validate().map_err(|e| fail(&config_path, e.to_string()))?;
        if meta.class_names.len() as i64 != meta.architecture.num_classes {
            return Err(fail(
                &config_path,
                format!(
                    "{} class names for {} classes",
                    meta.class_names.len(),
                    meta.architecture.num_classes
                ),
            ));
        }
        let weights_path = dir.join(&meta.weights_file);
        let bytes = std::fs::read(&weights_path)
            .map_err(|e| fail(&weights_path, format!("cannot read weights: {e}")))?;
        let hash = sha256_hex(&bytes);
        if hash != meta.weights_sha256 {
            return Err(fail(
                &weights_path,
                format!(
                    "SHA-256 {hash} does not match config.json's {} (truncated, corrupted or \
                     replaced weights file)",
                    meta.weights_sha256
                ),
            ));
        }
        let stored: HashMap<String, Tensor> = Tensor::read_safetensors(&weights_path)
            .map_err(|e| fail(&weights_path, format!("not a readable safetensors file: {e}")))?
            .into_iter()
            .collect();
        let mut checkpoint = Checkpoint::new(
            &meta.architecture,
            &meta.class_names.iter().map(String::as_str).collect::<Vec<_>>(),
            device,
        )?;
        copy_weights(&checkpoint.vs, &stored).map_err(|reason| fail(&weights_path, reason))?;
        checkpoint.meta = meta;
        Ok(checkpoint)
    }

    /// What the model takes: its input shape and resize rule.
    pub fn input_spec(&self) -> InputSpec {
        self.meta.input_spec()
    }

    /// The model's identity: the SHA-256 of its weights file.
    pub fn model_hash(&self) -> &str {
        &self.meta.weights_sha256
    }
}

/// Copies stored tensors into the var store, after checking names, shapes and dtypes.
fn copy_weights(vs: &nn::VarStore, stored: &HashMap<String, Tensor>) -> Result<(), String> {
    let mut variables = vs.variables();
    let expected: BTreeSet<&String> = variables.keys().collect();
    let found: BTreeSet<&String> = stored.keys().collect();
    let missing: Vec<_> = expected.difference(&found).collect();
    let unexpected: Vec<_> = found.difference(&expected).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(format!(
            "weights do not match the architecture: missing {missing:?}, unexpected {unexpected:?}"
        ));
    }
    let mut problems = Vec::new();
    for (name, var) in &variables {
        let src = &stored[name];
        if src.size() != var.size() {
            problems.push(format!("{name}: shape {:?}, expected {:?}", src.size(), var.size()));
        } else if src.kind() != Kind::Float {
            problems.push(format!("{name}: dtype {:?}, expected Float", src.kind()));
        }
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(format!("weights do not match the architecture: {}", problems.join("; ")));
    }
    tch::no_grad(|| {
        for (name, var) in variables.iter_mut() {
            var.copy_(&stored[name]);
        }
    });
    Ok(())
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
