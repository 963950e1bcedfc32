//! The partition table as a client keeps it, and the grouping of a call's keys by node.
//!
//! A client reads the table from the node it was given (the `Routes` call) and refreshes
//! it whenever a node answers UNAVAILABLE: either a redirect (the key is not that node's)
//! or a node that cannot be reached, which is then avoided for a few seconds in favour of
//! the key's other replicas. A table with one member, or none (a store that is not part of
//! a cluster), sends every call to that node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kvtier_proto::v1 as pb;

use crate::Key;

/// How long a node that could not be reached is passed over when another replica exists.
const SUSPECT_FOR: Duration = Duration::from_secs(3);

/// Metadata entry a node's redirect carries: the key owner's data address.
pub const OWNER_METADATA: &str = "kvtier-owner";

/// A cluster's partition table: per partition, data addresses with the primary first.
#[derive(Debug)]
pub struct Routes {
    partitions: Vec<Vec<String>>,
}

impl Routes {
    /// The table in `reply`; `None` when every call may go to the node that answered.
    pub fn from_reply(reply: pb::RoutesResponse) -> Option<Routes> {
        let addr: HashMap<u64, String> = reply
            .nodes
            .into_iter()
            .map(|n| (n.node_id, n.data_addr))
            .collect();
        if reply.partition_count == 0 || addr.len() < 2 {
            return None;
        }
        let partitions = reply
            .partitions
            .into_iter()
            .map(|set| {
                set.node_ids
                    .iter()
                    .filter_map(|id| addr.get(id).cloned())
                    .collect()
            })
            .collect();
        Some(Routes { partitions })
    }

    /// Data addresses of `key`'s replicas, the primary first.
    pub fn replicas(&self, key: &Key) -> &[String] {
        let count = self.partitions.len() as u64;
        let mut head = [0u8; 8];
        head.copy_from_slice(&key[..8]);
        &self.partitions[(u64::from_le_bytes(head) % count) as usize]
    }

    /// Every node's data address, once each.
    pub fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self.partitions.iter().flatten().cloned().collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }
}

/// Keys of one call sent to one node: their indices in the call, in order.
#[derive(Debug)]
pub struct Group {
    pub addr: String,
    pub indices: Vec<usize>,
}

/// What a client knows of the cluster behind its seed node.
#[derive(Debug, Default)]
pub struct ClusterView {
    /// `None` until the table has been read; `Some(None)` for a single node.
    routes: RwLock<Option<Option<Arc<Routes>>>>,
    suspects: Mutex<HashMap<String, Instant>>,
}

impl ClusterView {
    /// The table as last read: `None` when it has not been read yet.
    pub fn current(&self) -> Option<Option<Arc<Routes>>> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set(&self, routes: Option<Routes>) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Some(routes.map(Arc::new));
    }

    /// Avoids `addr` for a while.
    pub fn suspect(&self, addr: &str) {
        let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        suspects.insert(addr.to_string(), Instant::now() + SUSPECT_FOR);
    }

    fn is_suspect(&self, addr: &str) -> bool {
        let suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        suspects
            .get(addr)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// The replica a read of `key` goes to: the first that is not suspect.
    pub fn read_target<'a>(&self, routes: &'a Routes, key: &Key) -> Option<&'a str> {
        let replicas = routes.replicas(key);
        replicas
            .iter()
            .find(|addr| !self.is_suspect(addr))
            .or(replicas.first())
            .map(String::as_str)
    }

    /// The keys of a read grouped by the node each goes to, in order of first key.
    pub fn read_groups(&self, routes: &Routes, keys: &[Key]) -> Option<Vec<Group>> {
        let mut groups: Vec<Group> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let addr = self.read_target(routes, key)?;
            match groups.iter_mut().find(|g| g.addr == addr) {
                Some(group) => group.indices.push(i),
                None => groups.push(Group {
                    addr: addr.to_string(),
                    indices: vec![i],
                }),
            }
        }
        Some(groups)
    }
}

/// True when `status` says the key belongs elsewhere or the node could not be reached:
/// either way a fresher table may route the call differently.
pub fn worth_rerouting(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
}

/// True when `status` is a node's redirect rather than a failure to reach it.
pub fn is_redirect(status: &tonic::Status) -> bool {
    status.metadata().get(OWNER_METADATA).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(partitions: &[&[u64]]) -> pb::RoutesResponse {
        pb::RoutesResponse {
            partition_count: partitions.len() as u32,
            epoch: 7,
            nodes: (1..=3)
                .map(|id| pb::RouteNode {
                    node_id: id,
                    data_addr: format!("127.0.0.1:{}", 5000 + id),
                })
                .collect(),
            partitions: partitions
                .iter()
                .map(|set| pb::ReplicaSet {
                    node_ids: set.to_vec(),
                })
                .collect(),
        }
    }

    fn key_in(partition: u64, count: u64) -> Key {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(partition + count * 1000).to_le_bytes());
        key
    }

    #[test]
    fn a_key_goes_to_its_partitions_replicas_primary_first() {
        let routes = Routes::from_reply(reply(&[&[1, 2], &[2, 3], &[3, 1]])).unwrap();
        assert_eq!(
            routes.replicas(&key_in(1, 3)),
            ["127.0.0.1:5002", "127.0.0.1:5003"]
        );
        assert_eq!(routes.nodes().len(), 3);
    }

    #[test]
    fn a_store_outside_a_cluster_or_alone_in_one_takes_every_call() {
        assert!(Routes::from_reply(pb::RoutesResponse::default()).is_none());
        let mut alone = reply(&[&[1], &[1]]);
        alone.nodes.truncate(1);
        assert!(Routes::from_reply(alone).is_none());
    }

    #[test]
    fn reads_group_keys_by_node_and_pass_over_a_suspect_replica() {
        let routes = Routes::from_reply(reply(&[&[1, 2], &[2, 3], &[3, 1]])).unwrap();
        let view = ClusterView::default();
        let keys = [key_in(0, 3), key_in(1, 3), key_in(0, 3), key_in(2, 3)];
        let groups = view.read_groups(&routes, &keys).unwrap();
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0].indices, [0, 2]);
        view.suspect("127.0.0.1:5001");
        let groups = view.read_groups(&routes, &keys).unwrap();
        assert_eq!(groups[0].addr, "127.0.0.1:5002");
        assert_eq!(groups[0].indices, [0, 1, 2]);
    }
}
