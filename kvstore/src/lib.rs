//! kvtier's block store and its gRPC server, `kvtierd`.
//!
//! [`Store`] holds blocks in tiers and keeps every chain prefix-closed; [`server`] exposes
//! it as the `KvCache` gRPC service. Binaries that embed a store call [`server::spawn`],
//! which binds a loopback port and serves until the returned handle is dropped or shut
//! down, and then talk to it through the client library like any remote node.

mod catalog;
pub mod cluster;
pub mod codecs;
pub mod config;
mod error;
pub mod index;
pub mod metrics;
pub mod policy;
pub mod server;
mod store;
pub mod tier;

pub use codecs::{NamespaceCodecs, TierCodec, TierCodecs};
pub use config::{Config, Durability};
pub use error::{ConfigError, StoreError};
pub use kvtier_format::KEY_LEN;
pub use store::{
    Clock, HeldBlock, ManualClock, NamespaceSpec, OpenError, PrefetchOutcome, PutOptions,
    PutOutcome, Store, StoreStats, SystemClock, TierStats,
};

/// A 32-byte block key.
pub type Key = [u8; KEY_LEN];
