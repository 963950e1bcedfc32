//! The `KvCache` gRPC service over a [`Store`].
//!
//! [`serve`] runs on a listener the caller bound (tests bind port 0) until `shutdown`
//! resolves; [`spawn`] does the same on the current tokio runtime and hands back the
//! address and store. Both apply the config's message limit in both directions, so an
//! oversized message is refused by the transport before it reaches the store.

mod codecs;
mod convert;
mod layers;

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
}

impl KvCacheService {
    pub fn new(store: Arc<Store>) -> Self {
        KvCacheService { store }
    }
}

#[tonic::async_trait]
impl KvCache for KvCacheService {
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let request = request.into_inner();
        let namespace = convert::namespace(request.namespace.as_ref())?;
        let key = convert::key("key", &request.key)?;
        let parent = convert::parent(&request.parent, request.position)?;
        let options = convert::put_options(&request)?;
        let store = self.store.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            store.put(
                &namespace,
                key,
                parent,
                request.position,
                request.block,
                &options,
            )
        })
        .await
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
        let request = request.into_inner();
        convert::namespace(request.namespace.as_ref())?;
        let keys = convert::keys(&request.keys)?;
        let prefix_len = self.store.lookup(&keys) as u32;
        Ok(Response::new(pb::LookupResponse { prefix_len }))
    }

    type GetStream = ReceiverStream<Result<pb::GetResponse, Status>>;

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let request = request.into_inner();
        let namespace = convert::namespace(request.namespace.as_ref())?;
        let keys = convert::keys(&request.keys)?;
        let (tx, rx) = mpsc::channel(GET_READAHEAD);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            for (index, key) in keys.iter().enumerate() {
                let Some(block) = store.read(&namespace, key) else {
                    break;
                };
                let item = pb::GetResponse {
                    index: index as u32,
                    key: bytes::Bytes::copy_from_slice(key),
                    block,
                };
                if tx.blocking_send(Ok(item)).is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type GetLayersStream = ReceiverStream<Result<pb::LayerSlice, Status>>;

    async fn get_layers(
        &self,
        request: Request<pb::GetLayersRequest>,
    ) -> Result<Response<Self::GetLayersStream>, Status> {
        let request = request.into_inner();
        let namespace = convert::namespace(request.namespace.as_ref())?;
        let keys = convert::keys(&request.keys)?;
        let (tx, rx) = mpsc::channel(LAYERS_READAHEAD);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || layers::stream(&store, &namespace, &keys, &tx));
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

/// Serves `store` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let limit = config.max_message_bytes.as_u64() as usize;
    let service = KvCacheServer::new(KvCacheService::new(store))
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
