//! The `KvCache` gRPC service over a [`Store`].
//!
//! [`serve`] runs on a listener the caller bound (tests bind port 0) until `shutdown`
//! resolves; [`spawn`] does the same on the current tokio runtime and hands back the
//! address and store. Both apply the config's message limit in both directions, so an
//! oversized message is refused by the transport before it reaches the store. A cluster
//! member serves with a [`Routing`] ([`serve_routed`]): see [`route`] for what changes.

mod codecs;
mod convert;
mod layers;
pub mod moving;
pub mod route;

pub use route::Routing;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use kvtier_proto::v1 as pb;
use kvtier_proto::v1::kv_cache_server::{KvCache, KvCacheServer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::{Config, Store};

/// Blocks read ahead of the client in a Get stream.
const GET_READAHEAD: usize = 4;
/// Largest HTTP/2 frame the server accepts and, where the client allows, sends: blocks are
/// megabytes, and the protocol's default of 16 KiB cuts one into hundreds of frames.
const MAX_FRAME_BYTES: u32 = 1 << 20;
/// Layers sent ahead of the client in a GetLayers stream.
const LAYERS_READAHEAD: usize = 2;

/// The KvCache service.
#[derive(Debug, Clone)]
pub struct KvCacheService {
    store: Arc<Store>,
    /// Set on a cluster member; `None` serves every key from this store.
    routing: Option<Arc<Routing>>,
}

impl KvCacheService {
    pub fn new(store: Arc<Store>) -> Self {
        KvCacheService {
            store,
            routing: None,
        }
    }

    /// The service of a cluster member.
    pub fn routed(store: Arc<Store>, routing: Arc<Routing>) -> Self {
        KvCacheService {
            store,
            routing: Some(routing),
        }
    }

    /// The routing that applies to a call: none for a call from another member.
    fn routing_for<T>(&self, request: &Request<T>) -> Option<&Arc<Routing>> {
        self.routing.as_ref().filter(|_| !route::from_peer(request))
    }
}

#[tonic::async_trait]
impl KvCache for KvCacheService {
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let routing = self.routing_for(&request).cloned();
        let request = request.into_inner();
        let namespace = convert::namespace(request.namespace.as_ref())?;
        let key = convert::key("key", &request.key)?;
        let mut parent = convert::parent(&request.parent, request.position)?;
        let options = convert::put_options(&request)?;
        let replicas = match &routing {
            Some(routing) => routing.put_replicas(&key)?,
            None => Vec::new(),
        };
        if let Some(local) = &self.routing {
            parent = local.local_parent(parent);
        }
        let copy = (!replicas.is_empty()).then(|| request.clone());
        let store = self.store.clone();
        let local = tokio::task::spawn_blocking(move || {
            store.put(
                &namespace,
                key,
                parent,
                request.position,
                request.block,
                &options,
            )
        });
        let local = match (routing, copy) {
            (Some(routing), Some(copy)) => {
                let (local, copies) = tokio::join!(local, routing.replicate(replicas, copy));
                copies?;
                local
            }
            _ => local.await,
        };
        let outcome = local
            .map_err(|e| Status::internal(format!("put task failed: {e}")))?
            .map_err(convert::status)?;
        Ok(Response::new(pb::PutResponse {
            stored: outcome.stored,
            already_present: outcome.already_present,
        }))
    }

    async fn lookup(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let routing = self.routing_for(&request).cloned();
        let request = request.into_inner();
        convert::namespace(request.namespace.as_ref())?;
        let keys = convert::keys(&request.keys)?;
        let prefix_len = match routing {
            Some(routing) => {
                routing.check_read(&keys)?;
                moving::lookup(&self.store, &routing, &request.namespace, &keys).await
            }
            None => self.store.lookup(&keys),
        };
        Ok(Response::new(pb::LookupResponse {
            prefix_len: prefix_len as u32,
        }))
    }

    type GetStream = ReceiverStream<Result<pb::GetResponse, Status>>;

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let routing = self.routing_for(&request).cloned();
        let request = request.into_inner();
        let namespace = convert::namespace(request.namespace.as_ref())?;
        let keys = Arc::new(convert::keys(&request.keys)?);
        if let Some(routing) = &routing {
            routing.check_read(&keys)?;
        }
        let (tx, rx) = mpsc::channel(GET_READAHEAD);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut next = 0;
            loop {
                let stop = {
                    let (store, namespace, keys, tx) =
                        (store.clone(), namespace.clone(), keys.clone(), tx.clone());
                    tokio::task::spawn_blocking(move || {
                        read_run(&store, &namespace, &keys, next, &tx)
                    })
                    .await
                    .unwrap_or(0)
                };
                let Some(routing) = routing.as_ref().filter(|_| stop < keys.len()) else {
                    break;
                };
                let got =
                    moving::get_from_previous(routing, &request.namespace, &keys, stop, &tx).await;
                if got == 0 {
                    break;
                }
                next = stop + got;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type GetLayersStream = ReceiverStream<Result<pb::LayerSlice, Status>>;

    async fn get_layers(
        &self,
        request: Request<pb::GetLayersRequest>,
    ) -> Result<Response<Self::GetLayersStream>, Status> {
        let routing = self.routing_for(&request).cloned();
        let request = request.into_inner();
        let namespace = convert::namespace(request.namespace.as_ref())?;
        let keys = convert::keys(&request.keys)?;
        let (tx, rx) = mpsc::channel(LAYERS_READAHEAD);
        let store = self.store.clone();
        if let Some(routing) = &routing {
            routing.check_read(&keys)?;
        }
        // A new owner still pulling a partition reads what it lacks from the old owners.
        let held = match &routing {
            Some(_) => self.store.lookup(&keys),
            None => keys.len(),
        };
        let moving = routing.filter(|r| held < keys.len() && !r.fallbacks(&keys[held]).is_empty());
        match moving {
            None => {
                tokio::task::spawn_blocking(move || layers::stream(&store, &namespace, &keys, &tx));
            }
            Some(routing) => {
                let wire = request.namespace;
                let gather =
                    moving::layers_with_previous(store, routing, namespace, wire, keys, tx);
                tokio::spawn(gather);
            }
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn prefetch(
        &self,
        request: Request<pb::PrefetchRequest>,
    ) -> Result<Response<pb::PrefetchResponse>, Status> {
        let request = request.into_inner();
        let namespace = convert::namespace(request.namespace.as_ref())?;
        let keys = convert::keys(&request.keys)?;
        let conversation = (!request.conversation.is_empty()).then_some(request.conversation);
        let store = self.store.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            store.prefetch(&namespace, &keys, conversation.as_deref())
        })
        .await
        .map_err(|e| Status::internal(format!("prefetch task failed: {e}")))?;
        Ok(Response::new(pb::PrefetchResponse {
            promoted: outcome.promoted,
            already_hot: outcome.already_hot,
            skipped: outcome.skipped,
        }))
    }

    async fn set_namespace_codecs(
        &self,
        request: Request<pb::SetNamespaceCodecsRequest>,
    ) -> Result<Response<pb::SetNamespaceCodecsResponse>, Status> {
        codecs::set(&self.store, request.get_ref()).map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let request = request.into_inner();
        convert::namespace(request.namespace.as_ref())?;
        let keys = convert::keys(&request.keys)?;
        let deleted = self.store.delete(&keys) as u32;
        Ok(Response::new(pb::DeleteResponse { deleted }))
    }

    async fn routes(
        &self,
        _: Request<pb::RoutesRequest>,
    ) -> Result<Response<pb::RoutesResponse>, Status> {
        let routes = self
            .routing
            .as_ref()
            .map(|r| r.routes())
            .unwrap_or_default();
        Ok(Response::new(routes))
    }

    type ScanStream = ReceiverStream<Result<pb::ScanItem, Status>>;

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        let request = request.into_inner();
        if request.partition_count == 0 {
            return Err(Status::invalid_argument(
                "partition_count: must be positive",
            ));
        }
        if let Some(p) = request
            .partitions
            .iter()
            .find(|p| **p >= request.partition_count)
        {
            return Err(Status::invalid_argument(format!(
                "partitions: {p} is not below partition_count {}",
                request.partition_count
            )));
        }
        let (tx, rx) = mpsc::channel(GET_READAHEAD);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            moving::scan(&store, request.partition_count, &request.partitions, &tx)
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let s = self.store.stats();
        let tiers = s
            .tiers
            .iter()
            .map(|t| pb::TierStats {
                tier: t.tier.as_str().to_string(),
                capacity_bytes: t.capacity_bytes,
                used_bytes: t.used_bytes,
                blocks: t.blocks,
                hits: t.hits,
                misses: t.misses,
                evictions: t.evictions,
                promotions: t.promotions,
                demotions: t.demotions,
            })
            .collect();
        Ok(Response::new(pb::StatsResponse {
            tiers,
            puts: s.puts,
            puts_duplicate: s.puts_duplicate,
            puts_declined: s.puts_declined,
            lookups: s.lookups,
            checksum_failures: s.checksum_failures,
            max_block_bytes: s.max_block_bytes,
            misses: s.misses,
            compaction_bytes: s.compaction_bytes,
            blocks: s.blocks,
            io_engine: s.io_engine.unwrap_or_default().to_string(),
            pinned_memory: s.pinned_memory.unwrap_or_default().to_string(),
        }))
    }
}

/// Blocks of `keys[from..]` read from `store` into `tx` until the first miss; returns the
/// index it stopped at.
fn read_run(
    store: &Store,
    namespace: &crate::NamespaceSpec,
    keys: &[crate::Key],
    from: usize,
    tx: &mpsc::Sender<Result<pb::GetResponse, Status>>,
) -> usize {
    for (index, key) in keys.iter().enumerate().skip(from) {
        let Some(block) = store.read(namespace, key) else {
            return index;
        };
        let item = pb::GetResponse {
            index: index as u32,
            key: bytes::Bytes::copy_from_slice(key),
            block,
        };
        if tx.blocking_send(Ok(item)).is_err() {
            return keys.len();
        }
    }
    keys.len()
}

/// Serves `store` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, KvCacheService::new(store), config, shutdown).await
}

/// Serves `store` as a cluster member: keys are routed by `routing`, and the partitions
/// this node gains are pulled from their previous owners in the background.
pub async fn serve_routed(
    listener: TcpListener,
    store: Arc<Store>,
    routing: Arc<Routing>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let every = config.cluster.pull_interval;
    let puller = tokio::spawn(moving::pull_forever(store.clone(), routing.clone(), every));
    let service = KvCacheService::routed(store, routing);
    let served = serve_with(listener, service, config, shutdown).await;
    puller.abort();
    served
}

async fn serve_with(
    listener: TcpListener,
    service: KvCacheService,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let limit = config.max_message_bytes.as_u64() as usize;
    let service = KvCacheServer::new(service)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    // The builder's `tcp_nodelay` reaches only sockets tonic binds itself: accepted
    // sockets of a listener the caller bound need it set here, or every small HTTP/2 frame
    // after another waits out the peer's delayed ACK (40 ms).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// A server running on the current runtime; dropping it shuts the server down.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    pub store: Arc<Store>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight calls finish and waits for the server to end.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Binds `config.listen` (port 0 picks a free port) and serves a new store on the
/// current tokio runtime.
pub async fn spawn(config: Config) -> std::io::Result<RunningServer> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let store = Arc::new(Store::open(&config).map_err(std::io::Error::other)?);
    let (tx, rx) = oneshot::channel();
    let task_store = store.clone();
    let task = tokio::spawn(async move {
        serve(listener, task_store, &config, async {
            let _ = rx.await;
        })
        .await
    });
    Ok(RunningServer {
        addr,
        store,
        shutdown: Some(tx),
        task: Some(task),
    })
}
