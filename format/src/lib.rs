//! The kvtier block format, shared by the store and by every client.
//!
//! A block holds the K and V tensors of `block_tokens` consecutive tokens across all layers,
//! logically `[layer][K|V][kv_head][token][head_dim]`. On the wire and at rest it is a
//! [`header`] followed by the payload. The header names the namespace fingerprint, the
//! codec, the shape and per-layer offsets, and carries CRC32C checksums of itself and of the
//! payload, so a reader can stream layer by layer and verify what it got.
//!
//! Writers call [`encode_block`]; readers call [`BlockView::parse`] (structure and header
//! checksum) and then [`BlockView::verify_payload`] before trusting the bytes.

mod error;
pub mod header;
mod shape;

pub use error::FormatError;
pub use header::{encode_block, BlockView, Codec, FORMAT_VERSION, MAGIC};
pub use shape::{BlockShape, DType, KEY_LEN};
