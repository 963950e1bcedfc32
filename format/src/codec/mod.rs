//! Block codecs: a [`Transform`] (identity, byte shuffle, or a quantizer) followed by an
//! [`Entropy`] coder (none, lz4, zstd), both applied to each layer on its own so that a
//! reader can decode layer by layer.
//!
//! Encoding a layer: the transform turns the layer's raw K and V into a buffer whose
//! length depends only on the shape and the codec (its "stage length"); the entropy coder
//! compresses that buffer. Decoding runs the two backwards, into a buffer of exactly the
//! stage length, so malformed or oversized streams are refused before they are trusted.
//!
//! Lossless codecs return the input bit for bit, whatever its bytes. Lossy codecs need
//! finite input (NaN or infinity is [`crate::FormatError::NotFinite`]) and state their
//! error bounds in [`affine`] (int8, int4) and [`fp8`]; [`bounds`] checks a decoded block
//! against them.

pub mod affine;
pub mod bounds;
mod elements;
mod entropy;
pub mod fp8;
mod pipeline;
mod scale;
mod shuffle;
mod spec;

pub(crate) use pipeline::{needs_wide_scales, LayerCoder};
pub use spec::{CodecSpec, Entropy, Transform, DEFAULT_INT4_GROUP, DEFAULT_ZSTD_LEVEL};

use crate::{BlockShape, FormatError};

/// A first stage that turns one layer's raw tensors into bytes of a fixed length and back.
pub(crate) trait LayerTransform {
    /// Bytes one layer occupies after this transform.
    fn encoded_len(&self, shape: &BlockShape) -> usize;

    /// Appends the encoding of one layer (`raw` is `shape.layer_bytes()` long).
    fn encode(&self, shape: &BlockShape, raw: &[u8], out: &mut Vec<u8>) -> Result<(), FormatError>;

    /// Decodes exactly [`LayerTransform::encoded_len`] bytes into one layer. Any bytes of
    /// that length decode to something; checksums, not this step, catch corruption.
    fn decode(&self, shape: &BlockShape, encoded: &[u8], raw: &mut [u8]);
}
