//! Prefix caching around the reference model: a prompt's KV comes from kvtier where it can
//! and is computed where it must.
//!
//! A [`Sequence`] is one request's tokens and their local KV. A prompt becomes a sequence
//! in two phases: [`Engine::begin`] hashes it into block keys, looks up the longest cached
//! prefix and starts loading it (whole, or layer by layer), giving a [`Prefill`]; then
//! [`Engine::step`] computes the rest, possibly in several chunks and in the same forward
//! passes as other requests' prompts and decode steps. [`Engine::prefill`] does both for
//! one prompt. [`Engine::extend`] computes more tokens on an existing sequence (an answer,
//! a decode step); [`Engine::save`] stores the sequence's full blocks that the store does
//! not have yet. Anything the cache gets wrong (unreachable, evicted, corrupt, late) is
//! answered by computing, so the cache can make a request faster but never different.

mod prefill;
mod step;

use std::sync::Arc;
use std::time::Duration;

use kvtier_client::format::{encode_block, DType};
use kvtier_client::{block_key, Key, Namespace, NamespaceFields, RopePlacement};

pub use self::prefill::Prefill;
pub use self::step::{Stepped, Work};
use crate::connector::{ConnectorError, KvConnector, SaveBlock, SaveReport};
use crate::{EngineError, KvCache, LoadedModel, ModelInfo, Result};

/// One sequence: its tokens, the KV computed or loaded for them, and how many of its
/// leading full blocks the store already holds.
pub struct Sequence {
    pub tokens: Vec<u32>,
    pub cache: KvCache,
    keys: Vec<Key>,
    stored_blocks: usize,
}

impl Sequence {
    /// Keys of the sequence's full blocks.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }
}

/// Where a prefill's time went, and what the cache gave it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefillReport {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub fetched_bytes: u64,
    pub hash: Duration,
    pub lookup: Duration,
    pub fetch: Duration,
    pub compute: Duration,
    /// The cache failed and the prefix was recomputed instead.
    pub fell_back: bool,
}

/// The model plus, optionally, a kvtier connector.
pub struct Engine<C> {
    model: Arc<LoadedModel>,
    connector: Option<C>,
    namespace: Namespace,
    fetch_deadline: Option<Duration>,
    layer_wise: bool,
}

/// The namespace fields of a loaded model for a tenant and block size.
pub fn namespace_fields(info: &ModelInfo, tenant: &str, block_tokens: u32) -> NamespaceFields {
    NamespaceFields {
        tenant: tenant.to_string(),
        salt: None,
        model_name: info.name.clone(),
        weights_digest: info.weights_digest.clone(),
        n_layers: info.n_layers as u32,
        n_kv_heads: info.n_kv_heads as u32,
        head_dim: info.head_dim as u32,
        dtype: DType::F32,
        block_tokens,
        rope: RopePlacement::Post,
        adapter_name: None,
        adapter_id: None,
    }
}

impl<C: KvConnector> Engine<C> {
    /// An engine for `model` whose blocks live in `namespace`; without a connector every
    /// prefill computes the whole prompt.
    pub fn new(model: Arc<LoadedModel>, namespace: Namespace, connector: Option<C>) -> Self {
        Engine {
            model,
            connector,
            namespace,
            fetch_deadline: None,
            layer_wise: false,
        }
    }

    /// Loads cached prefixes one layer at a time, computing layer n of the new tokens while
    /// layer n+1 arrives, instead of loading the whole prefix before computing.
    pub fn with_layer_wise(mut self, layer_wise: bool) -> Self {
        self.layer_wise = layer_wise;
        self
    }

    /// The connector, when the engine has one.
    pub fn connector(&self) -> Option<&C> {
        self.connector.as_ref()
    }

    /// Bounds the lookup and fetch of a prefill: past `deadline` the prompt is recomputed
    /// instead, so a slow or stopped kvtierd never delays a request by more than this.
    pub fn with_fetch_deadline(mut self, deadline: Duration) -> Self {
        self.fetch_deadline = Some(deadline);
        self
    }

    /// How long a prefill's lookup and fetch may take, if bounded.
    pub fn fetch_deadline(&self) -> Option<Duration> {
        self.fetch_deadline
    }

    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    fn block_tokens(&self) -> usize {
        self.namespace.shape.block_tokens as usize
    }

    /// Computes `tokens` into a new sequence, loading the longest cached prefix first when
    /// `use_cache` is set. Returns the logits of the last prompt position.
    pub async fn prefill(
        &self,
        tokens: Vec<u32>,
        use_cache: bool,
    ) -> Result<(Sequence, Vec<f32>, PrefillReport)> {
        let mut prefill = Box::new(self.begin(tokens, use_cache).await?);
        loop {
            let chunk = prefill.remaining().min(self.model.model.prefill_chunk());
            let work = vec![Work::Prefill {
                prefill,
                tokens: chunk,
            }];
            let stepped = self.step(work).await?.pop();
            let Some(Stepped::Prefilled {
                prefill: next,
                logits,
            }) = stepped
            else {
                return Err(EngineError::Worker("a prefill step lost its prompt".into()));
            };
            prefill = next;
            if let Some(logits) = logits {
                let (sequence, report) = prefill.finish();
                return Ok((sequence, logits, report));
            }
        }
    }

    /// Computes `more` tokens after the sequence in one batched forward; returns the logits
    /// of the last one.
    pub async fn extend(&self, sequence: Sequence, more: &[u32]) -> Result<(Sequence, Vec<f32>)> {
        if more.is_empty() {
            return Err(EngineError::NoTokens);
        }
        let (mut sequence, logits) = self.forward(sequence, more.to_vec()).await?;
        self.hash_new_blocks(&mut sequence);
        Ok((sequence, logits))
    }

    /// Brings the sequence to `tokens`: keeps the KV of the longest common prefix and
    /// computes the rest in one batched forward. This is how a turn's answer joins the
    /// conversation: re-tokenizing the rendered conversation may not split exactly where
    /// the prompt ended, and only the tokens that differ are recomputed.
    pub async fn continue_to(&self, mut sequence: Sequence, tokens: &[u32]) -> Result<Sequence> {
        let common = sequence
            .tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        self.truncate(&mut sequence, common);
        if tokens.len() > common {
            sequence = self.extend(sequence, &tokens[common..]).await?.0;
        }
        Ok(sequence)
    }

    /// Cuts the sequence back to `len` tokens (for a continuation that diverges).
    pub fn truncate(&self, sequence: &mut Sequence, len: usize) {
        let len = len.min(sequence.tokens.len());
        sequence.tokens.truncate(len);
        sequence.cache.truncate(len);
        let blocks = len / self.block_tokens();
        sequence.keys.truncate(blocks);
        sequence.stored_blocks = sequence.stored_blocks.min(blocks);
    }

    /// Keys of the full blocks of a prompt.
    pub fn prompt_keys(&self, tokens: &[u32]) -> Vec<Key> {
        self.keys_for(&[], tokens)
    }

    /// Position and key of the sequence's first full block that the store does not hold
    /// yet: the first block [`Engine::save`] would write.
    pub fn first_unsaved(&self, sequence: &Sequence) -> Option<(usize, Key)> {
        let full = sequence.cache.len().min(sequence.tokens.len()) / self.block_tokens();
        let i = sequence.stored_blocks;
        (i < full).then(|| sequence.keys.get(i).map(|key| (i, *key)))?
    }

    /// The sequence's full blocks that the store does not hold yet, encoded in chain order.
    pub fn blocks_to_save(&self, sequence: &Sequence) -> Result<Vec<SaveBlock>> {
        let b = self.block_tokens();
        let full = sequence.cache.len().min(sequence.tokens.len()) / b;
        (sequence.stored_blocks..full.min(sequence.keys.len()))
            .map(|i| {
                let raw = sequence.cache.export_block(i * b, b)?;
                let block = encode_block(&self.namespace.fingerprint, &self.namespace.shape, &raw)
                    .map_err(|e| EngineError::Unsupported {
                        what: "block",
                        value: e.to_string(),
                    })?;
                Ok(SaveBlock {
                    key: sequence.keys[i],
                    parent: i.checked_sub(1).map(|p| sequence.keys[p]),
                    position: i as u32,
                    block: block.into(),
                })
            })
            .collect()
    }

    /// Saves the sequence's new full blocks; a no-op without a connector.
    pub async fn save(
        &self,
        sequence: &mut Sequence,
    ) -> std::result::Result<SaveReport, SaveError> {
        let Some(connector) = &self.connector else {
            return Ok(SaveReport::default());
        };
        self.save_via(sequence, connector).await
    }

    /// [`Engine::save`] through `connector` (the engine's own with other put hints).
    pub async fn save_via(
        &self,
        sequence: &mut Sequence,
        connector: &C,
    ) -> std::result::Result<SaveReport, SaveError> {
        let blocks = self.blocks_to_save(sequence)?;
        let count = blocks.len();
        let report = connector.save(blocks).await?;
        sequence.stored_blocks += count;
        Ok(report)
    }

    async fn forward(
        &self,
        mut sequence: Sequence,
        tokens: Vec<u32>,
    ) -> Result<(Sequence, Vec<f32>)> {
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || {
            let logits = model
                .model
                .forward_last_logits(&tokens, &mut sequence.cache)?;
            sequence.tokens.extend_from_slice(&tokens);
            Ok((sequence, logits))
        })
        .await
        .map_err(|e| EngineError::Worker(e.to_string()))?
    }

    /// Hashes the full blocks of the sequence's tokens that have no key yet.
    fn hash_new_blocks(&self, sequence: &mut Sequence) {
        let hashed = sequence.keys.len() * self.block_tokens();
        let new_keys = self.keys_for(&sequence.keys, &sequence.tokens[hashed..]);
        sequence.keys.extend(new_keys);
    }

    /// Keys of the full blocks of `tokens`, which start right after the blocks whose keys
    /// are `previous`.
    fn keys_for(&self, previous: &[Key], tokens: &[u32]) -> Vec<Key> {
        let mut parent = previous.last().copied().unwrap_or([0; 32]);
        tokens
            .chunks_exact(self.block_tokens())
            .map(|chunk| {
                parent = block_key(&self.namespace.fingerprint, &parent, chunk);
                parent
            })
            .collect()
    }
}

/// Why a save failed.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Connector(#[from] ConnectorError),
}
