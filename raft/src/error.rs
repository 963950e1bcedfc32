//! Errors of the cluster crate.

use std::path::PathBuf;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("cannot open the raft database at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("raft database format {found:?} is not the supported one")]
    Format { found: String },
    #[error("raft database")]
    Db(#[from] rocksdb::Error),
    #[error("raft record encoding")]
    Encoding(#[from] serde_json::Error),
    #[error("node id file {path}")]
    NodeId {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node id file {path} holds {found:?}, not a positive integer")]
    NodeIdParse { path: PathBuf, found: String },
    #[error("cannot serve the cluster service on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("joining through {addr}: {status}")]
    Join { addr: String, status: tonic::Status },
    #[error(
        "this node was removed from its cluster ({marker} says so); start it with an empty \
         data directory to join again"
    )]
    Removed { marker: PathBuf },
}

impl RaftError {
    pub(crate) fn raft(error: impl std::fmt::Display) -> Self {
        RaftError::Raft(error.to_string())
    }
}
