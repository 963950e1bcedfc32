//! The openraft type configuration: what a node is and what the log carries.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::map::{Command, Outcome};

/// A node's id: chosen once, persisted in its data directory, never 0.
pub type NodeId = u64;

/// What the group knows of a node: where clients and peers reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Address of the KvCache service (host:port).
    pub data_addr: String,
    /// Address of the cluster-internal service (host:port).
    pub cluster_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data {} cluster {}", self.data_addr, self.cluster_addr)
    }
}

openraft::declare_raft_types!(
    /// kvtier's Raft types: metadata commands in the log, JSON snapshots in memory.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type StorageError = openraft::StorageError<NodeId>;
