use std::path::PathBuf;

use thiserror::Error;

/// A refused request. The store itself is unharmed by any of these.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("store is full: a {needed}-byte block does not fit in {capacity} free bytes")]
    Full { needed: u64, capacity: u64 },
    #[error("the ssd tier's device is out of space; puts resume when space returns")]
    DiskFull,
    #[error("storage I/O failed: {0}")]
    Io(String),
}

impl StoreError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        StoreError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

/// A configuration that kvtierd refuses to start with.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}
