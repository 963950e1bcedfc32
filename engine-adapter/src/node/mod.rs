//! `kvtier-node`: the reference inference node, an OpenAI-compatible HTTP server on the
//! reference model whose prompt KV lives in kvtier.
//!
//! Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (both with
//! `stream: true` as server-sent events), `GET /v1/models`, `GET /health`,
//! `GET /metrics`. A request is checked ([`api`]), rendered with the model's chat
//! template, tokenized and queued ([`worker`]); a full queue is answered 429 at once.
//! Every prefill asks kvtier for the prompt's longest cached prefix within the fetch
//! deadline and recomputes when the store is slow or gone, so the cache can make a
//! request faster but never fail it. `usage.prompt_tokens_details.cached_tokens` says how
//! many prompt tokens came from kvtier.
//!
//! A client names the conversation a request continues with the `x-kvtier-conversation`
//! header; the node then saves the turn's blocks under it and, as soon as a request is
//! queued, asks kvtierd to promote that conversation's blocks and the prompt's toward the
//! pinned tier. Cached prefixes are loaded layer by layer under the computation unless
//! [`NodeConfig::layer_wise`] is off.

pub mod api;
pub mod metrics;
mod respond;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use kvtier_client::{KvClient, Namespace};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use self::metrics::NodeMetrics;
use self::worker::Queue;
use crate::connector::KvtierConnector;
use crate::engine::{namespace_fields, Engine};
use crate::LoadedModel;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    /// kvtierd's address.
    pub store: String,
    /// The model id clients name in requests.
    pub model_id: String,
    pub tenant: String,
    pub block_tokens: u32,
    /// Requests that may wait behind the running ones before new ones get 429.
    pub queue_depth: usize,
    /// Longest the cache lookup and fetch of one prefill may take.
    pub fetch_deadline: Duration,
    /// Load cached prefixes layer by layer, overlapped with computing the new tokens.
    pub layer_wise: bool,
    /// Use kvtier at all; off, every prompt is computed and nothing is saved (a baseline).
    pub cache: bool,
}

/// What the handlers share.
pub struct NodeState {
    pub model: Arc<LoadedModel>,
    pub model_id: String,
    pub queue: Queue,
    pub metrics: Arc<NodeMetrics>,
}

/// A node serving in the background.
pub struct RunningNode {
    pub addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningNode {
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Serves until the task ends (it does not, unless aborted or the listener fails).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Binds `config.listen` and serves `model` in a background task.
pub async fn start(model: Arc<LoadedModel>, config: NodeConfig) -> anyhow::Result<RunningNode> {
    let namespace = Namespace::from_fields(&namespace_fields(
        &model.info,
        &config.tenant,
        config.block_tokens,
    ));
    let client = KvClient::connect_lazy(&config.store)?;
    let connector = config
        .cache
        .then(|| KvtierConnector::new(client, namespace.clone()));
    let engine = Engine::new(model.clone(), namespace, connector)
        .with_fetch_deadline(config.fetch_deadline)
        .with_layer_wise(config.layer_wise);
    let metrics = Arc::new(NodeMetrics::default());
    let queue = Queue::start(engine, config.queue_depth, metrics.clone());
    let state = Arc::new(NodeState {
        model,
        model_id: config.model_id,
        queue,
        metrics,
    });
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move { axum::serve(listener, router(state)).await });
    tracing::info!(%addr, store = %config.store, "kvtier-node serving");
    Ok(RunningNode { addr, task })
}

fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(respond::chat))
        .route("/v1/completions", post(respond::completion))
        .route("/v1/models", get(respond::models))
        .route("/health", get(respond::health))
        .route("/metrics", get(respond::metrics))
        .with_state(state)
}
