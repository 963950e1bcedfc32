//! kvtier's cluster metadata: one openraft group over all nodes that replicates the
//! cluster map (members and their addresses, the partition table, namespace settings).
//! Blocks never enter the log.
//!
//! A node's Raft log and state machine live in a RocksDB database under its data
//! directory, next to the file holding its node id. Peers talk over the cluster service
//! (`kvtier.cluster.v1.Cluster`), which has its own address and message limit and is never
//! served to inference clients.

mod admin;
mod error;
mod map;
mod network;
mod node;
mod placement;
mod service;
mod store;
mod types;
mod watchdog;

pub use admin::AdminError;
pub use error::RaftError;
pub use map::{
    partition_of, ClusterMap, Command, MapMember, Move, NamespaceSettings, Outcome, MAX_PARTITIONS,
};
pub use node::{ClusterConfig, ClusterHandle, ClusterNode};
pub use placement::place;
pub use types::{Member, NodeId, TypeConfig};
