//! How the engine reaches kvtier: the [`KvConnector`] trait and its gRPC implementation.
//!
//! Protocol for one request: compute the prompt's block keys, [`KvConnector::lookup`] the
//! longest held prefix, [`KvConnector::load`] those blocks into an empty [`KvCache`]
//! (verifying each), compute the remaining tokens, and after the first token
//! [`KvConnector::save`] the new full blocks in chain order, off the TTFT path. A load that
//! returns fewer blocks than the lookup promised (evicted in between) is not an error: the
//! caller computes what is missing.

use std::future::Future;

use bytes::Bytes;
use kvtier_client::format::BlockView;
use kvtier_client::{ClientError, Key, KvClient, Namespace, PutHints};
use kvtier_format::FormatError;
use thiserror::Error;

pub use crate::layer_feed::LayerFeed;
use crate::KvCache;

/// Why a cache operation failed. The engine answers every such failure by recomputing.
#[derive(Debug, Error)]
pub enum ConnectorError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("block {index} is not valid: {source}")]
    Block {
        index: usize,
        #[source]
        source: FormatError,
    },
    #[error("block {index} has another namespace's fingerprint or shape")]
    Mismatch { index: usize },
    #[error("block {index} does not fit the KV cache: {reason}")]
    Cache { index: usize, reason: String },
    #[error("the store did not answer within {0:?}")]
    Deadline(std::time::Duration),
    #[error("layer {layer} of the prefix did not arrive: {reason}")]
    Layer { layer: usize, reason: &'static str },
}

/// One encoded block ready to be saved.
#[derive(Debug, Clone)]
pub struct SaveBlock {
    pub key: Key,
    pub parent: Option<Key>,
    pub position: u32,
    pub block: Bytes,
}

/// What a load brought in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub blocks: usize,
    pub bytes: u64,
}

/// What a save stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveReport {
    pub stored: usize,
    pub already_present: usize,
    pub declined: usize,
    pub bytes: u64,
}

/// The engine's view of a KV cache store.
pub trait KvConnector: Send + Sync + 'static {
    /// Number of leading `keys` whose blocks the store holds.
    fn lookup(&self, keys: &[Key]) -> impl Future<Output = Result<usize, ConnectorError>> + Send;

    /// Appends the blocks of `keys`, in order, to `cache` (which ends where the first of them
    /// starts). Stops early at the first block the store no longer has.
    fn load(
        &self,
        keys: &[Key],
        cache: &mut KvCache,
    ) -> impl Future<Output = Result<LoadReport, ConnectorError>> + Send;

    /// Stores `blocks`, which are in chain order.
    fn save(
        &self,
        blocks: Vec<SaveBlock>,
    ) -> impl Future<Output = Result<SaveReport, ConnectorError>> + Send;

    /// Starts loading the blocks of `keys` one layer at a time; resolves once the first
    /// layer (which fixes how many blocks are held) has arrived.
    fn load_layers(
        &self,
        keys: &[Key],
    ) -> impl Future<Output = Result<LayerFeed, ConnectorError>> + Send;

    /// Asks the store to move the blocks of `keys`, and those of `conversation`, toward
    /// its hottest tier before the request that needs them runs; returns how many moved.
    fn prefetch(
        &self,
        keys: &[Key],
        conversation: Option<&str>,
    ) -> impl Future<Output = Result<u32, ConnectorError>> + Send;
}

/// A [`KvConnector`] over kvtier's gRPC client, bound to one namespace.
#[derive(Debug, Clone)]
pub struct KvtierConnector {
    client: KvClient,
    namespace: Namespace,
    hints: PutHints,
}

impl KvtierConnector {
    pub fn new(client: KvClient, namespace: Namespace) -> Self {
        KvtierConnector {
            client,
            namespace,
            hints: PutHints::default(),
        }
    }

    /// The same connection, saving blocks under `conversation` (so a later prefetch of
    /// that conversation finds them).
    pub fn for_conversation(&self, conversation: Option<String>) -> Self {
        KvtierConnector {
            hints: PutHints {
                conversation,
                ..self.hints.clone()
            },
            ..self.clone()
        }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    fn append(
        &self,
        index: usize,
        bytes: &[u8],
        cache: &mut KvCache,
    ) -> Result<(), ConnectorError> {
        let view =
            BlockView::parse(bytes).map_err(|source| ConnectorError::Block { index, source })?;
        if view.fingerprint != self.namespace.fingerprint || view.shape != self.namespace.shape {
            return Err(ConnectorError::Mismatch { index });
        }
        view.verify_payload()
            .map_err(|source| ConnectorError::Block { index, source })?;
        let raw = view
            .decoded()
            .map_err(|source| ConnectorError::Block { index, source })?;
        cache
            .append_block(&raw, view.shape.block_tokens as usize)
            .map_err(|e| ConnectorError::Cache {
                index,
                reason: e.to_string(),
            })
    }
}

impl KvConnector for KvtierConnector {
    async fn lookup(&self, keys: &[Key]) -> Result<usize, ConnectorError> {
        Ok(self.client.lookup(&self.namespace, keys).await?)
    }

    async fn load(&self, keys: &[Key], cache: &mut KvCache) -> Result<LoadReport, ConnectorError> {
        use futures::StreamExt;

        let mut report = LoadReport::default();
        if keys.is_empty() {
            return Ok(report);
        }
        let mut stream = std::pin::pin!(self.client.get(&self.namespace, keys).await?);
        while let Some(block) = stream.next().await {
            let block = block?;
            self.append(report.blocks, &block, cache)?;
            report.blocks += 1;
            report.bytes += block.len() as u64;
        }
        Ok(report)
    }

    async fn save(&self, blocks: Vec<SaveBlock>) -> Result<SaveReport, ConnectorError> {
        let mut report = SaveReport::default();
        for b in blocks {
            let size = b.block.len() as u64;
            let outcome = self
                .client
                .put_with(
                    &self.namespace,
                    &b.key,
                    b.parent.as_ref(),
                    b.position,
                    b.block,
                    &self.hints,
                )
                .await?;
            match (outcome.stored, outcome.already_present) {
                (true, false) => {
                    report.stored += 1;
                    report.bytes += size;
                }
                (true, true) => report.already_present += 1,
                (false, _) => report.declined += 1,
            }
        }
        Ok(report)
    }

    async fn load_layers(&self, keys: &[Key]) -> Result<LayerFeed, ConnectorError> {
        use futures::StreamExt;

        if keys.is_empty() {
            return Ok(LayerFeed::empty());
        }
        let mut stream = Box::pin(self.client.get_layers(&self.namespace, keys).await?);
        let Some(first) = stream.next().await else {
            return Ok(LayerFeed::empty());
        };
        let (tx, rx) = std::sync::mpsc::channel();
        tokio::spawn(async move {
            while let Some(layer) = stream.next().await {
                if tx.send(layer.map_err(ConnectorError::from)).is_err() {
                    break;
                }
            }
        });
        Ok(LayerFeed::new(first?, rx))
    }

    async fn prefetch(
        &self,
        keys: &[Key],
        conversation: Option<&str>,
    ) -> Result<u32, ConnectorError> {
        let outcome = self
            .client
            .prefetch(&self.namespace, keys, conversation)
            .await?;
        Ok(outcome.promoted)
    }
}
