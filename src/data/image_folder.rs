//! An image folder: one sub-folder per class holding PNG or JPEG files, classes in sorted
//! order (as torchvision's `ImageFolder`). Either `train/` and `test/` each hold the class
//! folders, or the class folders sit at the top and a seeded fifth of each class's files
//! (chosen by a hash of the file's name, so adding files moves no other) is the test split.
//!
//! Images are decoded to grey or RGB (alpha dropped, 16-bit scaled to 8) and brought to one
//! shape by [`InputSpec`]: the channels and side asked for (a model's) when given, else those
//! of the first image in sorted order. The split comes in a seeded order that mixes the
//! classes.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::dataset::{Dataset, Split};
use super::preprocess::{InputSpec, Resize};
use crate::error::{Error, Result};

/// Share of the files that the seeded hold-out puts in the test split, in percent.
const TEST_PERCENT: u64 = 20;
/// Most memory the decoder may allocate for one image (a 4096x4096 RGBA image).
const DECODER_MAX_ALLOC: u64 = 64 << 20;

/// Whether `dir` looks like an image folder: a sub-folder holding a PNG or JPEG file, either
/// directly (class folders) or under `train/`.
pub fn is_image_folder(dir: &Path) -> bool {
    let root = if dir.join("train").is_dir() { dir.join("train") } else { dir.to_path_buf() };
    class_folders(&root).ok().is_some_and(|classes| classes.iter().any(|c| image_files(c).is_ok_and(|f| !f.is_empty())))
}

/// Loads one split. `shape` is `(channels, side)` to bring images to, each if known.
pub fn load(dir: &Path, split: Split, shape: (Option<i64>, Option<i64>), resize: Resize, seed: u64) -> Result<Dataset> {
    let bad = |path: &Path, reason: String| Error::Dataset { path: path.into(), reason };
    let split_dirs = dir.join("train").is_dir() && dir.join("test").is_dir();
    let root = if split_dirs { dir.join(split.name()) } else { dir.to_path_buf() };
    let classes = class_folders(&root)?;
    if classes.len() < 2 {
        return Err(bad(&root, format!("{} class folders; at least 2 are needed", classes.len())));
    }
    let class_names: Vec<String> = classes.iter().map(|c| c.file_name().unwrap().to_string_lossy().into_owned()).collect();
    if split_dirs {
        // Both splits must name the same classes, or labels would mean different things.
        let other = match split {
            Split::Train => "test",
            Split::Test => "train",
        };
        let other_names: Vec<String> = class_folders(&dir.join(other))?
            .iter()
            .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        if other_names != class_names {
            return Err(bad(dir, format!("train/ and test/ hold different class folders: {class_names:?} vs {other_names:?}")));
        }
    }
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        for file in image_files(class)? {
            let keep = split_dirs || (in_test_split(&file, seed) == (split == Split::Test));
            if keep {
                files.push((file, label as i64));
            }
        }
    }
    if files.is_empty() {
        return Err(bad(&root, format!("no PNG or JPEG files for the {} split", split.name())));
    }
    let mut conform = None;
    let mut images = Vec::with_capacity(files.len());
    for (file, _) in &files {
        let image = decode(file)?;
        let rule = *conform.get_or_insert_with(|| {
            let s = image.size();
            let (channels, side) = (shape.0.unwrap_or(s[1]), shape.1.unwrap_or(s[2].min(s[3])));
            InputSpec { channels, size: side, resize }
        });
        images.push(rule.apply(&image).map_err(|reason| Error::Image { path: file.clone(), reason })?);
    }
    // Files are listed class by class; a seeded order mixes the classes, so that the first-N
    // slices commands take (--limit) hold every class, as they do in IDX and CIFAR files.
    let mut order: Vec<(u64, usize)> =
        files.iter().enumerate().map(|(i, (file, label))| (fnv1a(seed, &format!("order/{label}/{}", file_name(file))), i)).collect();
    order.sort();
    let order: Vec<i64> = order.into_iter().map(|(_, i)| i as i64).collect();
    let labels: Vec<i64> = order.iter().map(|&i| files[i as usize].1).collect();
    let images = Tensor::cat(&images, 0).index_select(0, &Tensor::from_slice(&order));
    Ok(Dataset { images, labels: Tensor::from_slice(&labels), class_names })
}

/// The sub-folders of `root`, sorted by name (hidden ones skipped).
fn class_folders(root: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The PNG and JPEG files of one class folder, sorted by name.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The seeded hold-out: a hash of the seed and the file name.
fn in_test_split(file: &Path, seed: u64) -> bool {
    fnv1a(seed, &file_name(file)) % 100 < TEST_PERCENT
}

fn file_name(file: &Path) -> String {
    file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// FNV-1a of the seed and a text: stable across runs, platforms and Rust versions, unlike
/// std's hasher.
fn fnv1a(seed: u64, text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.to_le_bytes().iter().chain(text.as_bytes()) {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One file as `[1, C, H, W]` float in [0, 1]: C = 1 for grey images, else 3.
fn decode(path: &Path) -> Result<Tensor> {
    use image::{ColorType, DynamicImage};
    let bad = |reason: String| Error::Image { path: path.into(), reason };
    let mut reader = image::ImageReader::open(path).map_err(|e| Error::io(path, e))?.with_guessed_format().map_err(|e| Error::io(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(DECODER_MAX_ALLOC);
    reader.limits(limits);
    let image: DynamicImage = reader.decode().map_err(|e| bad(format!("not a readable PNG or JPEG image: {e}")))?;
    let (w, h) = (image.width() as i64, image.height() as i64);
    let grey = matches!(image.color(), ColorType::L8 | ColorType::La8 | ColorType::L16 | ColorType::La16);
    let (channels, raw) = if grey { (1, image.to_luma8().into_raw()) } else { (3, image.to_rgb8().into_raw()) };
    // HWC bytes -> CHW floats.
    Ok(Tensor::from_slice(&raw).view([h, w, channels]).permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float) / 255.0)
}
