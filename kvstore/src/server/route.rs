//! The data plane of a cluster member: which keys this node answers for, the redirect it
//! gives for the others, and its calls to peers.
//!
//! A put from a client must reach the primary of its key's partition; the primary stores
//! the block and sends a copy to every other replica, and acknowledges once all of them
//! hold it. A read is answered by any replica. A node asked about a key it does not own
//! answers UNAVAILABLE naming the primary (in the message and in the `kvtier-owner`
//! metadata entry), so the client refreshes its table and asks again. Calls between
//! members carry the `kvtier-peer` metadata entry: they are answered from local state,
//! with no ownership check and no further forwarding.
//!
//! Chains cross nodes: a block's parent usually lives in another partition. The parent of
//! a block is checked (and the block declined when it is missing) only when the parent's
//! partition is this node's too; otherwise the block is a chain root here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kvtier_proto::v1 as pb;
use kvtier_proto::v1::kv_cache_client::KvCacheClient;
use kvtier_raft::{ClusterHandle, ClusterMap, NodeId};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::Key;

/// Metadata entry of a redirect: the data address of the key's primary.
pub const OWNER_METADATA: &str = "kvtier-owner";
/// Metadata entry that marks a call from another member.
pub const PEER_METADATA: &str = "kvtier-peer";

/// True when `request` came from another member.
pub fn from_peer<T>(request: &Request<T>) -> bool {
    request.metadata().get(PEER_METADATA).is_some()
}

/// `message` as a call from a member to another.
pub fn as_peer<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(PEER_METADATA, MetadataValue::from_static("1"));
    request
}

/// This node's view of the partition table and its connections to the other members.
pub struct Routing {
    cluster: ClusterHandle,
    peers: Mutex<HashMap<String, KvCacheClient<Channel>>>,
    max_message_bytes: usize,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("node_id", &self.cluster.id())
            .finish()
    }
}

impl Routing {
    pub fn new(cluster: ClusterHandle, max_message_bytes: usize) -> Arc<Self> {
        Arc::new(Routing {
            cluster,
            peers: Mutex::new(HashMap::new()),
            max_message_bytes,
        })
    }

    pub fn id(&self) -> NodeId {
        self.cluster.id()
    }

    pub fn cluster(&self) -> &ClusterHandle {
        &self.cluster
    }

    /// For a client's put of `key`: the other replicas to copy it to, or the redirect to
    /// the primary when this node is not it.
    pub fn put_replicas(&self, key: &Key) -> Result<Vec<(NodeId, String)>, Status> {
        let me = self.id();
        self.cluster.read(|map| {
            let owners = map.owners(key);
            match owners.first() {
                Some(primary) if *primary == me => Ok(owners[1..]
                    .iter()
                    .filter_map(|id| map.data_addr(*id).map(|addr| (*id, addr.to_string())))
                    .collect()),
                primary => Err(redirect(map, "key", primary.copied())),
            }
        })
    }

    /// Ok when this node owns every key of a client's read; else the first one's redirect.
    pub fn check_read(&self, keys: &[Key]) -> Result<(), Status> {
        let me = self.id();
        self.cluster.read(|map| {
            for (i, key) in keys.iter().enumerate() {
                let owners = map.owners(key);
                if !owners.contains(&me) {
                    return Err(redirect(
                        map,
                        &format!("keys[{i}]"),
                        owners.first().copied(),
                    ));
                }
            }
            Ok(())
        })
    }

    /// The parent a put links its block to here: `parent` when its partition is this
    /// node's, else none (the block is a chain root on this node).
    pub fn local_parent(&self, parent: Option<Key>) -> Option<Key> {
        let me = self.id();
        parent.filter(|p| self.cluster.read(|map| map.owners(p).contains(&me)))
    }

    /// Data addresses of the nodes that held `key`'s partition before a move that is
    /// still going on; empty when it is not moving.
    pub fn fallbacks(&self, key: &Key) -> Vec<String> {
        let me = self.id();
        self.cluster
            .read(|map| addresses(map, map.previous_owners(key), me))
    }

    /// Partitions this node still has to pull, each with the addresses to pull it from,
    /// members that answer first.
    pub fn pulls(&self) -> (u32, Vec<(u32, Vec<String>)>) {
        let me = self.id();
        self.cluster.read(|map| {
            let pulls = map
                .pulls_for(me)
                .into_iter()
                .map(|(p, from)| (p, addresses(map, &from, me)))
                .collect();
            (map.partitions.len() as u32, pulls)
        })
    }

    /// The partition table as the Routes call returns it.
    pub fn routes(&self) -> pb::RoutesResponse {
        self.cluster.read(|map| pb::RoutesResponse {
            partition_count: map.partitions.len() as u32,
            epoch: map.epoch,
            nodes: map
                .members
                .iter()
                .map(|(id, m)| pb::RouteNode {
                    node_id: *id,
                    data_addr: m.member.data_addr.clone(),
                })
                .collect(),
            partitions: map
                .partitions
                .iter()
                .map(|set| pb::ReplicaSet {
                    node_ids: set.clone(),
                })
                .collect(),
        })
    }

    /// A client of the member at `addr`, connected on first use and kept.
    pub fn peer(&self, addr: &str) -> Result<KvCacheClient<Channel>, Status> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = peers.get(addr) {
            return Ok(client.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::internal(format!("peer address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .connect_lazy();
        let client = KvCacheClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Sends a copy of a put to every replica in `replicas`; fails unless all take it.
    pub async fn replicate(
        &self,
        replicas: Vec<(NodeId, String)>,
        put: pb::PutRequest,
    ) -> Result<(), Status> {
        let copies = replicas.into_iter().map(|(id, addr)| {
            let put = put.clone();
            async move {
                let mut peer = self.peer(&addr)?;
                peer.put(as_peer(put)).await.map(|_| ()).map_err(|e| {
                    Status::unavailable(format!(
                        "replication: node {id} at {addr} did not take the copy: {}",
                        e.message()
                    ))
                })
            }
        });
        for copy in futures::future::join_all(copies).await {
            copy?;
        }
        Ok(())
    }
}

/// Addresses of `ids` other than `me`, members that are not down first.
fn addresses(map: &ClusterMap, ids: &[NodeId], me: NodeId) -> Vec<String> {
    let mut known: Vec<(bool, String)> = ids
        .iter()
        .filter(|id| **id != me)
        .filter_map(|id| {
            let entry = map.members.get(id)?;
            Some((entry.down, entry.member.data_addr.clone()))
        })
        .collect();
    known.sort_by_key(|(down, _)| *down);
    known.into_iter().map(|(_, addr)| addr).collect()
}

/// UNAVAILABLE naming the owner of `field`'s key, with its address in the metadata.
fn redirect(map: &ClusterMap, field: &str, primary: Option<NodeId>) -> Status {
    let Some((id, addr)) = primary.and_then(|id| Some((id, map.data_addr(id)?))) else {
        return Status::unavailable(format!("{field}: no node owns its partition yet"));
    };
    let mut status = Status::unavailable(format!(
        "{field}: owned by node {id} at {addr}; refresh the partition table"
    ));
    if let Ok(value) = addr.parse() {
        status.metadata_mut().insert(OWNER_METADATA, value);
    }
    status
}

/// Keys as the wire carries them.
pub fn wire(keys: &[Key]) -> Vec<Bytes> {
    keys.iter().map(|k| Bytes::copy_from_slice(k)).collect()
}
