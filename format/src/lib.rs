//! The kvtier block format, shared by the store and by every client.
//!
//! A block holds the K and V tensors of `block_tokens` consecutive tokens across all layers,
//! logically `[layer][K|V][kv_head][token][head_dim]`. On the wire and at rest it is a
//! [`header`] followed by the payload. The header names the namespace fingerprint, the
//! codec and its parameters, the shape and per-layer offsets, and carries CRC32C checksums
//! of itself and of the payload, so a reader can stream layer by layer and verify what it
//! got; it needs nothing but the block to decode it.
//!
//! Writers call [`encode_block`] (codec `none`) or [`encode_block_with`] and a
//! [`CodecSpec`]; readers call [`BlockView::parse`] (structure and header checksum), then
//! [`BlockView::verify_payload`] before trusting the bytes, then [`BlockView::decoded`] or
//! [`BlockView::decode_layer`]. The codecs and their error bounds are described in
//! [`codec`].

mod block;
pub mod codec;
mod error;
pub mod header;
mod shape;

pub use block::{encode_block, encode_block_with, BlockView};
pub use codec::{CodecSpec, Entropy, Transform};
pub use error::FormatError;
pub use header::{FORMAT_VERSION, MAGIC};
pub use shape::{BlockShape, DType, KEY_LEN};
