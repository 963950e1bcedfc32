//! The kvtier client library: the key scheme and the data-plane calls.
//!
//! An engine computes a namespace [`Namespace`] once per model, the chained keys of its
//! prompt with [`block_keys`], asks [`KvClient::lookup`] how long a prefix is cached,
//! streams that prefix with [`KvClient::get`] and later saves new full blocks with
//! [`KvClient::put`], in chain order so that every block's parent is already stored.
//!
//! Against a cluster the same calls are routed: the client reads the partition table from
//! the node it was given, sends each put to its key's primary, splits calls over many keys
//! by node and merges the answers in key order, and reads the table again when a node
//! redirects it or cannot be reached.

mod client;
mod error;
mod fanout;
pub mod keys;
mod namespace;
mod routing;

pub use client::{
    KvClient, PrefetchOutcome, PutHints, PutOutcome, StoreStats, TierStats,
    DEFAULT_MAX_MESSAGE_BYTES,
};
pub use error::ClientError;
pub use keys::{block_key, block_keys, Key, NamespaceFields, RopePlacement};
pub use kvtier_format as format;
pub use namespace::Namespace;
