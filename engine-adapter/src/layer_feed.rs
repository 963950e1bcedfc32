//! The receiving end of a layer-wise load: the held prefix's K and V, one layer at a time,
//! written into a [`KvCache`] just before the model computes that layer.
//!
//! Protocol: the connector resolves a [`LayerFeed`] once layer 0 has arrived, which fixes
//! [`LayerFeed::blocks`]; the compute thread then calls [`LayerFeed::fill`] for layers
//! `0, 1, ..` in order, each waiting at most until the deadline. [`LayerFeed::arrived`]
//! tells, without waiting, whether those calls would wait. Any failure (late, short,
//! malformed) leaves the caller to recompute the whole prompt, so a partial prefix is
//! never used.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Instant;

use crate::kv_cache::raw_tensor;
use bytes::Bytes;

use crate::connector::ConnectorError;
use crate::KvCache;

const F32_BYTES: usize = 4;

/// One layer of every block of the prefix, raw, in chain order.
type Layer = Vec<Bytes>;

/// Layers of a prefix as they arrive.
pub struct LayerFeed {
    blocks: usize,
    /// Layers received and not yet written, in order (layer 0 first).
    ready: VecDeque<Result<Layer, ConnectorError>>,
    rest: Option<Receiver<Result<Layer, ConnectorError>>>,
    /// Layers written so far.
    taken: usize,
    /// The stream has ended or failed: nothing more will arrive.
    ended: bool,
    bytes: u64,
}

impl LayerFeed {
    /// A feed of nothing: the store holds no block of the prefix.
    pub fn empty() -> Self {
        LayerFeed {
            blocks: 0,
            ready: VecDeque::new(),
            rest: None,
            taken: 0,
            ended: true,
            bytes: 0,
        }
    }

    /// A feed whose layer 0 is `first` and whose later layers come from `rest`.
    pub fn new(first: Layer, rest: Receiver<Result<Layer, ConnectorError>>) -> Self {
        LayerFeed {
            blocks: first.len(),
            ready: VecDeque::from([Ok(first)]),
            rest: Some(rest),
            taken: 0,
            ended: false,
            bytes: 0,
        }
    }

    /// Blocks of the prefix that every layer carries.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Waits (until `deadline`) for layer `layer` and writes it into `cache` at positions
    /// `0..blocks * block_tokens`. Layers must be asked for in order.
    pub fn fill(
        &mut self,
        layer: usize,
        cache: &mut KvCache,
        block_tokens: usize,
        deadline: Instant,
    ) -> Result<(), ConnectorError> {
        let slices = match self.ready.pop_front() {
            Some(received) => received?,
            None => self.receive(layer, deadline)?,
        };
        self.taken += 1;
        if slices.len() != self.blocks {
            return Err(ConnectorError::Layer {
                layer,
                reason: "it holds another number of blocks than layer 0",
            });
        }
        for (index, raw) in slices.iter().enumerate() {
            self.bytes += raw.len() as u64;
            write_block_layer(cache, layer, index, raw, block_tokens)?;
        }
        Ok(())
    }

    /// Whether layers up to `n_layers` have all arrived, or the stream has ended, so that
    /// filling them would not wait.
    pub fn arrived(&mut self, n_layers: usize) -> bool {
        if let Some(rest) = &self.rest {
            while !self.ended {
                match rest.try_recv() {
                    Ok(received) => {
                        self.ended = received.is_err();
                        self.ready.push_back(received);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => self.ended = true,
                }
            }
        }
        self.ended || self.taken + self.ready.len() >= n_layers
    }

    fn receive(&mut self, layer: usize, deadline: Instant) -> Result<Layer, ConnectorError> {
        let rest = self.rest.as_ref().ok_or(ConnectorError::Layer {
            layer,
            reason: "the feed holds no layers",
        })?;
        let wait = deadline.saturating_duration_since(Instant::now());
        match rest.recv_timeout(wait) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ConnectorError::Layer {
                layer,
                reason: "the fetch deadline passed",
            }),
            Err(RecvTimeoutError::Disconnected) => Err(ConnectorError::Layer {
                layer,
                reason: "the stream ended early",
            }),
        }
    }
}

/// Writes one block's raw layer (`[K|V][kv_head][token][head_dim]`, little-endian f32)
/// at the block's positions of `layer`.
fn write_block_layer(
    cache: &mut KvCache,
    layer: usize,
    index: usize,
    raw: &[u8],
    block_tokens: usize,
) -> Result<(), ConnectorError> {
    let shape = cache.shape();
    let part = shape.n_kv_heads * block_tokens * shape.head_dim;
    if raw.len() != 2 * part * F32_BYTES || layer >= shape.n_layers {
        return Err(ConnectorError::Cache {
            index,
            reason: format!("layer {layer} is {} bytes", raw.len()),
        });
    }
    let tensor = |bytes: &[u8]| raw_tensor(bytes, shape, block_tokens);
    let cache_error = |e: &dyn std::fmt::Display| ConnectorError::Cache {
        index,
        reason: e.to_string(),
    };
    let (k, v) = raw.split_at(part * F32_BYTES);
    let k = tensor(k).map_err(|e| cache_error(&e))?;
    let v = tensor(v).map_err(|e| cache_error(&e))?;
    cache
        .write(layer, index * block_tokens, &k, &v)
        .map_err(|e| cache_error(&e))
}
