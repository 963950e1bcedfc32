//! kvtier's gRPC definitions: generated tonic/prost code and nothing else.
//!
//! `bytes` fields are generated as [`bytes::Bytes`] so that blocks move between the
//! transport and the store without copies.

#![allow(clippy::all, missing_docs)]

/// Version 1 of the data-plane API (`kvtier.v1`).
pub mod v1 {
    tonic::include_proto!("kvtier.v1");
}

/// The cluster-internal API (`kvtier.cluster.v1`): Raft RPCs and membership calls.
pub mod cluster {
    tonic::include_proto!("kvtier.cluster.v1");
}
