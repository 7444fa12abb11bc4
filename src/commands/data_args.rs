//! Flags shared by the commands that read Fashion-MNIST.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pathguard::data::{fashion_mnist, Split};

#[derive(Args)]
pub struct DataArgs {
    /// Directory with the Fashion-MNIST IDX files [default: $PATHGUARD_DATA or /usr/share/datasets/fashion-mnist]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// auto (GPU if CUDA works), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// One split of the data set, its first `limit` images if given.
pub fn load_split(args: &DataArgs, split: Split, limit: Option<usize>) -> Result<fashion_mnist::Dataset> {
    let dir = args.data.clone().unwrap_or_else(fashion_mnist::default_dir);
    let data = fashion_mnist::load(&dir, split)?;
    Ok(match limit {
        Some(n) => data.take(n),
        None => data,
    })
}
