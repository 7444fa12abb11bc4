//! Data in and out of the model.
//!
//! Pixel convention, everywhere in pathguard: `float32` values in `[0, 1]` (0 = black,
//! 1 = white), laid out NCHW, i.e. `[N, 1, 28, 28]` for the Fashion-MNIST model.
//! 8-bit sources are divided by 255.

pub mod fashion_mnist;
pub mod idx;
pub mod image;

pub use fashion_mnist::{Dataset, Split, CLASS_NAMES};
