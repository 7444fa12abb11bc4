//! Data in and out of the model.
//!
//! Pixel convention, everywhere in pathguard: `float32` values in `[0, 1]` (0 = black,
//! 1 = white), laid out NCHW, i.e. `[N, C, H, W]` (`[N, 1, 28, 28]` for the Fashion-MNIST
//! model). 8-bit sources are divided by 255.
//!
//! One [`Dataset`] type; one module per on-disk format (IDX, CIFAR binary, image folder,
//! NPY arrays); [`DataSource`] recognises the format and brings images to a model's shape
//! ([`preprocess`]).

pub mod cifar;
pub mod dataset;
pub mod fashion_mnist;
pub mod idx;
pub mod idx_set;
pub mod image;
pub mod image_folder;
pub mod npy_set;
pub mod preprocess;
pub mod source;

pub use dataset::{Dataset, Split};
pub use fashion_mnist::CLASS_NAMES;
pub use preprocess::{InputSpec, Resize};
pub use source::{DataFormat, DataSource};
