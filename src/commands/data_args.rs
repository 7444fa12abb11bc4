//! Flags shared by the commands that read a data set.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use pathguard::data::{fashion_mnist, DataFormat, DataSource, Dataset, Resize, Split};
use pathguard::model::ModelMeta;

#[derive(Args)]
pub struct DataArgs {
    /// Data set directory [default: $PATHGUARD_DATA or /usr/share/datasets/fashion-mnist]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Its format; auto recognises IDX, CIFAR-10/100 binary, NPY arrays and image folders
    #[arg(long, value_enum, default_value_t = DataFormat::Auto)]
    pub data_format: DataFormat,
    /// Images of another size than the model's: refuse, or shorter-side-crop (scale the
    /// shorter side, crop the centre) [default: the model's rule; refuse for a new model]
    #[arg(long, value_enum)]
    pub resize: Option<Resize>,
    /// Side (pixels) a new model's square input gets; images are brought to it by --resize
    /// [default: the data's own]
    #[arg(long)]
    pub image_size: Option<i64>,
    /// auto (GPU if CUDA works), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl DataArgs {
    /// The data set, its images brought to `model`'s input (channels, side, resize rule) when
    /// given.
    pub fn source(&self, model: Option<&ModelMeta>) -> DataSource {
        let mut source = DataSource::new(self.data.clone().unwrap_or_else(fashion_mnist::default_dir));
        source.format = self.data_format;
        if let Some(meta) = model {
            let [c, h, _] = meta.pixel_convention.shape;
            (source.channels, source.size) = (Some(c), Some(h));
            source.resize = meta.resize;
        } else {
            source.size = self.image_size;
        }
        if let Some(resize) = self.resize {
            source.resize = resize;
        }
        source
    }
}

/// The images a command works on: a slice of one split.
#[derive(Args)]
pub struct SliceArgs {
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
    /// First image of the split
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Number of images
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// The images `slice` selects, brought to `model`'s input, and their positions in the split.
pub fn load_slice(args: &DataArgs, model: &ModelMeta, slice: &SliceArgs) -> Result<(Dataset, tch::Tensor)> {
    let full = load_split(args, Some(model), slice.split, None)?;
    let (offset, limit) = (slice.offset, slice.limit);
    if limit == 0 || offset >= full.len() {
        bail!("--offset {offset} --limit {limit} selects no images of the {} split ({} images)", slice.split.name(), full.len());
    }
    let len = limit.min(full.len() - offset);
    let indices = tch::Tensor::arange_start(offset as i64, (offset + len) as i64, (tch::Kind::Int64, tch::Device::Cpu));
    Ok((full.slice(offset, len), indices))
}

/// One split of the data set (its first `limit` images if given), brought to `model`'s input
/// and checked against its classes when given.
pub fn load_split(args: &DataArgs, model: Option<&ModelMeta>, split: Split, limit: Option<usize>) -> Result<Dataset> {
    match (args.image_size, model) {
        (Some(size), _) if size < 1 => bail!("--image-size must be at least 1 pixel, got {size}"),
        (Some(size), Some(meta)) if size != meta.pixel_convention.shape[1] => {
            bail!("--image-size {size}: the model takes {}x{} images", meta.pixel_convention.shape[1], meta.pixel_convention.shape[2])
        }
        _ => {}
    }
    let source = args.source(model);
    let data = source.load(split)?;
    if let Some(meta) = model {
        if data.num_classes() != meta.class_names.len() {
            bail!(
                "data set {} has {} classes; the model has {} ({})",
                source.dir.display(),
                data.num_classes(),
                meta.class_names.len(),
                meta.class_names.join(", ")
            );
        }
        // Same count, other names or order: label k would mean another class than the model's
        // class k. A set that names no classes ("0", "1", ...) takes the model's names.
        let unnamed = data.class_names == pathguard::data::dataset::numbered_classes(data.num_classes());
        if !unnamed && data.class_names != meta.class_names {
            bail!(
                "data set {} names its classes {}; the model's are {} (in this order), so its labels would mean other classes",
                source.dir.display(),
                data.class_names.join(", "),
                meta.class_names.join(", ")
            );
        }
    }
    Ok(match limit {
        Some(n) => data.take(n),
        None => data,
    })
}
