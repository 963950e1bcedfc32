//! Prefix caching around the reference model: a prompt's KV comes from kvtier where it can
//! and is computed where it must.
//!
//! A [`Sequence`] is one request's tokens and their local KV. [`Engine::prefill`] hashes the
//! prompt into block keys, loads the longest cached prefix through the connector, computes
//! the rest in one batched forward and returns the last position's logits;
//! [`Engine::extend`] computes more tokens on an existing sequence (an answer, a decode
//! step); [`Engine::save`] stores the sequence's full blocks that the store does not have
//! yet. Anything the cache gets wrong (unreachable, evicted, corrupt) is answered by
//! computing, so the cache can make a request faster but never different.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_client::format::{encode_block, DType};
use kvtier_client::{block_key, Key, Namespace, NamespaceFields, RopePlacement};

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
        if tokens.is_empty() {
            return Err(EngineError::NoTokens);
        }
        let mut report = PrefillReport {
            prompt_tokens: tokens.len(),
            ..Default::default()
        };
        let started = Instant::now();
        let keys = self.keys_for(&[], &tokens);
        report.hash = started.elapsed();
        let mut cache = self.model.model.new_cache()?;
        // One allocation for the whole prompt: loading and computing then never regrow it.
        cache.reserve(tokens.len())?;
        let mut stored_blocks = 0;
        if let (true, true, Some(connector)) = (use_cache, self.layer_wise, &self.connector) {
            return self
                .prefill_layer_wise(connector, tokens, keys, cache, report, started)
                .await;
        }
        if let (true, Some(connector)) = (use_cache, &self.connector) {
            // At least one token is always computed: its logits are the answer.
            let usable = &keys[..keys.len().min((tokens.len() - 1) / self.block_tokens())];
            let load = self.load_prefix(connector, usable, &mut cache, &mut report);
            let loaded = match self.fetch_deadline {
                Some(deadline) => tokio::time::timeout(deadline, load)
                    .await
                    .unwrap_or(Err(ConnectorError::Deadline(deadline))),
                None => load.await,
            };
            match loaded {
                Ok(blocks) => stored_blocks = blocks,
                Err(error) => {
                    tracing::warn!(%error, "kv cache load failed; recomputing the prompt");
                    cache = self.model.model.new_cache()?;
                    cache.reserve(tokens.len())?;
                    report.fell_back = true;
                }
            }
        }
        // The store may also hold blocks past what was usable; save skips them cheaply.
        report.cached_tokens = stored_blocks * self.block_tokens();
        let compute_from = report.cached_tokens;
        let sequence = Sequence {
            tokens: Vec::new(),
            cache,
            keys: Vec::new(),
            stored_blocks,
        };
        let compute_started = Instant::now();
        let (mut sequence, logits) = self
            .forward(sequence, tokens[compute_from..].to_vec())
            .await?;
        report.compute = compute_started.elapsed();
        sequence.tokens = tokens;
        sequence.keys = keys;
        Ok((sequence, logits, report))
    }

    /// Computes `more` tokens after the sequence in one batched forward; returns the logits
    /// of the last one.
    pub async fn extend(&self, sequence: Sequence, more: &[u32]) -> Result<(Sequence, Vec<f32>)> {
        if more.is_empty() {
            return Err(EngineError::NoTokens);
        }
        let (mut sequence, logits) = self.forward(sequence, more.to_vec()).await?;
        let hashed = sequence.keys.len() * self.block_tokens();
        let new_keys = self.keys_for(&sequence.keys, &sequence.tokens[hashed..]);
        sequence.keys.extend(new_keys);
        Ok((sequence, logits))
    }

    /// Computes one more token of each sequence in one step: the projections run once over
    /// all of them, attention over each one's own cache. Returns each sequence with the
    /// logits of its new token, in order.
    pub async fn extend_each(
        &self,
        mut sequences: Vec<Sequence>,
        next: Vec<u32>,
    ) -> Result<Vec<(Sequence, Vec<f32>)>> {
        let model = self.model.clone();
        let (mut sequences, logits) = tokio::task::spawn_blocking(move || {
            let mut caches: Vec<&mut KvCache> =
                sequences.iter_mut().map(|s| &mut s.cache).collect();
            let logits = model.model.decode_batch(&next, &mut caches)?;
            for (sequence, token) in sequences.iter_mut().zip(&next) {
                sequence.tokens.push(*token);
            }
            Ok::<_, EngineError>((sequences, logits))
        })
        .await
        .map_err(|e| EngineError::Worker(e.to_string()))??;
        for sequence in &mut sequences {
            let hashed = sequence.keys.len() * self.block_tokens();
            let new_keys = self.keys_for(&sequence.keys, &sequence.tokens[hashed..]);
            sequence.keys.extend(new_keys);
        }
        Ok(sequences.into_iter().zip(logits).collect())
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

    /// [`Engine::prefill`] with the prefix loaded layer by layer under the computation.
    /// Any failure of the feed (late, short, malformed) recomputes the whole prompt.
    async fn prefill_layer_wise(
        &self,
        connector: &C,
        tokens: Vec<u32>,
        keys: Vec<Key>,
        cache: KvCache,
        mut report: PrefillReport,
        started: Instant,
    ) -> Result<(Sequence, Vec<f32>, PrefillReport)> {
        let b = self.block_tokens();
        let usable = &keys[..keys.len().min((tokens.len() - 1) / b)];
        let deadline_at = self.fetch_deadline.map(|d| (d, started + d));
        let open = async {
            let lookup_started = Instant::now();
            let held = connector.lookup(usable).await?;
            report.lookup = lookup_started.elapsed();
            connector.load_layers(&usable[..held]).await
        };
        let feed = match deadline_at {
            Some((deadline, _)) => tokio::time::timeout(deadline, open)
                .await
                .unwrap_or(Err(ConnectorError::Deadline(deadline))),
            None => open.await,
        };
        let feed = match feed {
            Ok(feed) if feed.blocks() > 0 => feed,
            Ok(_) => return self.compute_prompt(tokens, keys, cache, report).await,
            Err(error) => {
                tracing::warn!(%error, "kv cache load failed; recomputing the prompt");
                report.fell_back = true;
                return self.compute_prompt(tokens, keys, cache, report).await;
            }
        };
        let blocks = feed.blocks();
        let until = deadline_at.map_or(started + Duration::from_secs(3600), |(_, at)| at);
        let compute_started = Instant::now();
        let model = self.model.clone();
        let suffix = tokens[blocks * b..].to_vec();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut feed = feed;
            let mut cache = cache;
            let mut failed = None;
            let mut fill = |layer: usize, cache: &mut KvCache| {
                feed.fill(layer, cache, b, until).map_err(|error| {
                    let what = error.to_string();
                    failed = Some(error);
                    EngineError::Unsupported {
                        what: "layer-wise load",
                        value: what,
                    }
                })
            };
            let logits = model
                .model
                .forward_filling(&suffix, blocks * b, &mut cache, &mut fill)
                .and_then(|t| Ok(t.to_vec1::<f32>()?));
            (logits, failed, cache, feed.bytes())
        })
        .await
        .map_err(|e| EngineError::Worker(e.to_string()))?;
        let (logits, failed, mut cache, bytes) = outcome;
        if let Some(error) = failed {
            tracing::warn!(%error, "layer-wise load failed; recomputing the prompt");
            report.fell_back = true;
            cache.truncate(0);
            return self.compute_prompt(tokens, keys, cache, report).await;
        }
        let logits = logits?;
        report.compute = compute_started.elapsed();
        report.fetched_bytes = bytes;
        report.cached_tokens = blocks * b;
        let sequence = Sequence {
            tokens,
            cache,
            keys,
            stored_blocks: blocks,
        };
        Ok((sequence, logits, report))
    }

    /// Computes the whole prompt into `cache` (empty), as a prefill without the cache.
    async fn compute_prompt(
        &self,
        tokens: Vec<u32>,
        keys: Vec<Key>,
        cache: KvCache,
        mut report: PrefillReport,
    ) -> Result<(Sequence, Vec<f32>, PrefillReport)> {
        let sequence = Sequence {
            tokens: Vec::new(),
            cache,
            keys: Vec::new(),
            stored_blocks: 0,
        };
        let compute_started = Instant::now();
        let (mut sequence, logits) = self.forward(sequence, tokens.clone()).await?;
        report.compute = compute_started.elapsed();
        sequence.tokens = tokens;
        sequence.keys = keys;
        Ok((sequence, logits, report))
    }

    async fn load_prefix(
        &self,
        connector: &C,
        keys: &[Key],
        cache: &mut KvCache,
        report: &mut PrefillReport,
    ) -> std::result::Result<usize, ConnectorError> {
        let started = Instant::now();
        let held = connector.lookup(keys).await?;
        report.lookup = started.elapsed();
        if held == 0 {
            return Ok(0);
        }
        let started = Instant::now();
        let loaded = connector.load(&keys[..held], cache).await?;
        report.fetch = started.elapsed();
        report.fetched_bytes = loaded.bytes;
        Ok(loaded.blocks)
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
