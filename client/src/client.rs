use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use kvtier_proto::v1 as pb;
use kvtier_proto::v1::kv_cache_client::KvCacheClient;
use tonic::transport::{Channel, Endpoint};

use crate::fanout;
use crate::routing::{self, ClusterView, Routes};
use crate::{ClientError, Key, Namespace};

pub use pb::{StatsResponse as StoreStats, TierStats};

/// Largest gRPC message the client sends or accepts by default; kvtierd's default block
/// limit (64 MiB) sits below it.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 72 << 20;

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// The block is held after the put.
    pub stored: bool,
    /// The key was present before: the first write won.
    pub already_present: bool,
}

/// What a put may tell the store about where a block belongs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutHints {
    /// The conversation the block belongs to (eviction policy, prefetch by conversation).
    pub conversation: Option<String>,
    /// Place the block in the pinned tier when it has room.
    pub hot: bool,
}

/// What a prefetch moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefetchOutcome {
    /// Blocks moved into the hottest tier.
    pub promoted: u32,
    /// Blocks that were there already.
    pub already_hot: u32,
    /// Blocks not held, or that did not fit.
    pub skipped: u32,
}

/// A connection to one kvtierd. Cloning is cheap and shares the connection.
/// Largest HTTP/2 frame a kvtier peer accepts (the protocol's default is 16 KiB).
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// The endpoint for `addr` (`host:port` or a URL), with kvtier's transport settings.
fn endpoint(addr: &str) -> Result<Endpoint, ClientError> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(url).map_err(|source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    })?;
    // Blocks are megabytes: large windows and frames keep a transfer from stalling on
    // flow-control updates or splitting into thousands of 16 KiB frames.
    Ok(endpoint
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .max_frame_size(Some(MAX_FRAME_BYTES)))
}

/// A client of a kvtier store: one kvtierd, or a cluster reached through any member.
///
/// Against a cluster the client keeps the partition table: a put goes to its key's
/// primary, and a call over many keys is split by node, sent in parallel and merged in
/// key order. Cloning is cheap and shares connections and the table.
#[derive(Debug, Clone)]
pub struct KvClient {
    /// The node the client was given.
    inner: KvCacheClient<Channel>,
    cluster: Arc<ClusterView>,
    /// Connections to the members, by data address.
    members: Arc<Mutex<HashMap<String, KvCacheClient<Channel>>>>,
}

impl KvClient {
    /// Connects to `addr` (`host:port` or a URL) and reads its cluster's partition table.
    pub async fn connect(addr: &str) -> Result<Self, ClientError> {
        let channel = endpoint(addr)?
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let client = KvClient::over(channel);
        client.refresh_routes().await?;
        Ok(client)
    }

    /// A client that connects on first use and reconnects after the server went away, for
    /// callers that must start, and keep serving, while kvtierd is down. Fails only on a
    /// malformed address.
    pub fn connect_lazy(addr: &str) -> Result<Self, ClientError> {
        Ok(KvClient::over(endpoint(addr)?.connect_lazy()))
    }

    fn over(channel: Channel) -> Self {
        KvClient {
            inner: with_limits(KvCacheClient::new(channel)),
            cluster: Arc::default(),
            members: Arc::default(),
        }
    }

    /// Reads the partition table again from the node the client was given.
    pub async fn refresh_routes(&self) -> Result<(), ClientError> {
        match self.inner.clone().routes(pb::RoutesRequest {}).await {
            Ok(reply) => self.cluster.set(Routes::from_reply(reply.into_inner())),
            // A store older than clusters: every call goes to it.
            Err(status) if status.code() == tonic::Code::Unimplemented => self.cluster.set(None),
            Err(status) => return Err(status.into()),
        }
        Ok(())
    }

    /// The partition table, read on first use; `None` sends every call to the seed node
    /// (a single store, or a table that cannot be read now).
    pub(crate) async fn routes(&self) -> Option<Arc<Routes>> {
        if let Some(known) = self.cluster.current() {
            return known;
        }
        self.refresh_routes().await.ok()?;
        self.cluster.current().flatten()
    }

    /// After `status` from the node at `addr`: avoid it if it could not be reached, and
    /// read the table again.
    pub(crate) async fn reroute(&self, addr: &str, status: &tonic::Status) {
        if !routing::is_redirect(status) {
            self.cluster.suspect(addr);
        }
        let _ = self.refresh_routes().await;
    }

    pub(crate) fn view(&self) -> &ClusterView {
        &self.cluster
    }

    /// The connection to the member at `addr`, opened on first use.
    pub(crate) fn member(&self, addr: &str) -> Result<KvCacheClient<Channel>, ClientError> {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = members.get(addr) {
            return Ok(client.clone());
        }
        let client = with_limits(KvCacheClient::new(endpoint(addr)?.connect_lazy()));
        members.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Stores one encoded block. `parent` is `None` exactly at position 0.
    pub async fn put(
        &self,
        namespace: &Namespace,
        key: &Key,
        parent: Option<&Key>,
        position: u32,
        block: Bytes,
    ) -> Result<PutOutcome, ClientError> {
        self.put_with(
            namespace,
            key,
            parent,
            position,
            block,
            &PutHints::default(),
        )
        .await
    }

    /// [`KvClient::put`] with placement hints.
    pub async fn put_with(
        &self,
        namespace: &Namespace,
        key: &Key,
        parent: Option<&Key>,
        position: u32,
        block: Bytes,
        hints: &PutHints,
    ) -> Result<PutOutcome, ClientError> {
        let request = pb::PutRequest {
            namespace: Some(namespace.to_proto()),
            key: Bytes::copy_from_slice(key),
            parent: parent.map_or_else(Bytes::new, |p| Bytes::copy_from_slice(p)),
            position,
            block,
            conversation: hints.conversation.clone().unwrap_or_default(),
            hot: hints.hot,
            ..Default::default()
        };
        let reply = match self.routes().await {
            Some(_) => fanout::put(self, key, request).await?,
            None => self.inner.clone().put(request).await?.into_inner(),
        };
        Ok(PutOutcome {
            stored: reply.stored,
            already_present: reply.already_present,
        })
    }

    /// Length of the longest prefix of `keys` whose blocks are all held.
    pub async fn lookup(&self, namespace: &Namespace, keys: &[Key]) -> Result<usize, ClientError> {
        if self.routes().await.is_some() {
            return fanout::lookup(self, namespace, keys).await;
        }
        let request = pb::LookupRequest {
            namespace: Some(namespace.to_proto()),
            keys: wire(keys),
        };
        let reply = self.inner.clone().lookup(request).await?.into_inner();
        Ok(reply.prefix_len as usize)
    }

    /// Streams the blocks of the longest held prefix of `keys`, in order. The stream ends
    /// early at the first block that is missing or fails its checksum.
    pub async fn get(
        &self,
        namespace: &Namespace,
        keys: &[Key],
    ) -> Result<impl Stream<Item = Result<Bytes, ClientError>>, ClientError> {
        if self.routes().await.is_some() {
            return fanout::get(self, namespace, keys).await;
        }
        let request = pb::GetRequest {
            namespace: Some(namespace.to_proto()),
            keys: wire(keys),
        };
        let stream = self.inner.clone().get(request).await?.into_inner();
        Ok(ordered_blocks(stream).boxed())
    }

    /// Collects [`KvClient::get`] into a vector.
    pub async fn get_all(
        &self,
        namespace: &Namespace,
        keys: &[Key],
    ) -> Result<Vec<Bytes>, ClientError> {
        let mut stream = std::pin::pin!(self.get(namespace, keys).await?);
        let mut blocks = Vec::with_capacity(keys.len());
        while let Some(block) = stream.next().await {
            blocks.push(block?);
        }
        Ok(blocks)
    }

    /// Streams the held prefix of `keys` one layer at a time: item `n` is layer `n` of every
    /// block of the prefix, raw (decoded and checked by the server), in key order. No item
    /// at all means nothing is held.
    pub async fn get_layers(
        &self,
        namespace: &Namespace,
        keys: &[Key],
    ) -> Result<impl Stream<Item = Result<Vec<Bytes>, ClientError>>, ClientError> {
        if self.routes().await.is_some() {
            return fanout::get_layers(self, namespace, keys).await;
        }
        let request = pb::GetLayersRequest {
            namespace: Some(namespace.to_proto()),
            keys: wire(keys),
        };
        let stream = self.inner.clone().get_layers(request).await?.into_inner();
        let mut expected = 0u32;
        let mut blocks = None;
        Ok(stream
            .map(move |item| {
                let item = item?;
                if item.layer != expected {
                    return Err(ClientError::Protocol(format!(
                        "layer {} arrived where {expected} was due",
                        item.layer
                    )));
                }
                if *blocks.get_or_insert(item.blocks.len()) != item.blocks.len() {
                    return Err(ClientError::Protocol(format!(
                        "layer {} holds {} blocks where earlier layers held {blocks:?}",
                        item.layer,
                        item.blocks.len()
                    )));
                }
                expected += 1;
                Ok(item.blocks)
            })
            .boxed())
    }

    /// Asks the store to move the held blocks of `keys`, and those put under
    /// `conversation`, toward the pinned tier before they are read.
    pub async fn prefetch(
        &self,
        namespace: &Namespace,
        keys: &[Key],
        conversation: Option<&str>,
    ) -> Result<PrefetchOutcome, ClientError> {
        if let Some(routes) = self.routes().await {
            return fanout::prefetch(self, routes, namespace, keys, conversation).await;
        }
        let request = pb::PrefetchRequest {
            namespace: Some(namespace.to_proto()),
            keys: wire(keys),
            conversation: conversation.unwrap_or_default().to_string(),
        };
        let reply = self.inner.clone().prefetch(request).await?.into_inner();
        Ok(PrefetchOutcome {
            promoted: reply.promoted,
            already_hot: reply.already_hot,
            skipped: reply.skipped,
        })
    }

    /// Removes blocks (and their descendants); returns how many were removed.
    pub async fn delete(&self, namespace: &Namespace, keys: &[Key]) -> Result<u32, ClientError> {
        if let Some(routes) = self.routes().await {
            return fanout::delete(self, routes, namespace, keys).await;
        }
        let request = pb::DeleteRequest {
            namespace: Some(namespace.to_proto()),
            keys: wire(keys),
        };
        Ok(self
            .inner
            .clone()
            .delete(request)
            .await?
            .into_inner()
            .deleted)
    }

    /// Counters and per-tier occupancy of the node the client was given.
    pub async fn stats(&self) -> Result<StoreStats, ClientError> {
        Ok(self
            .inner
            .clone()
            .stats(pb::StatsRequest {})
            .await?
            .into_inner())
    }
}

pub(crate) fn wire(keys: &[Key]) -> Vec<Bytes> {
    keys.iter().map(|k| Bytes::copy_from_slice(k)).collect()
}

fn with_limits(client: KvCacheClient<Channel>) -> KvCacheClient<Channel> {
    client
        .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
}

/// The blocks of one node's Get stream, checked to arrive in order.
pub(crate) fn ordered_blocks(
    stream: tonic::Streaming<pb::GetResponse>,
) -> impl Stream<Item = Result<Bytes, ClientError>> {
    let mut expected = 0u32;
    stream.map(move |item| {
        let item = item?;
        if item.index != expected {
            return Err(ClientError::Protocol(format!(
                "block {} arrived where {expected} was due",
                item.index
            )));
        }
        expected += 1;
        Ok(item.block)
    })
}
