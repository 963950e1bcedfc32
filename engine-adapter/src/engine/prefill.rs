//! The first phase of a prompt: hash it into block keys, ask the store for the longest
//! cached prefix and start loading it, all within the fetch deadline.
//!
//! A whole-prefix load has finished when [`Engine::begin`] returns. A layer-wise load has
//! only delivered layer 0: the other layers keep arriving in the background and are
//! written into the cache by the first forward pass over the prompt, each just before its
//! layer computes ([`Prefill::waits_for_store`] says whether that pass would have to wait
//! for them). Any failure (unreachable, late, malformed) leaves a prefill that computes the
//! whole prompt, with [`PrefillReport::fell_back`] set.

use std::time::{Duration, Instant};

use kvtier_client::Key;

use super::{Engine, PrefillReport, Sequence};
use crate::connector::{ConnectorError, KvConnector, LayerFeed};
use crate::{EngineError, Result};

/// A prompt on its way to becoming a [`Sequence`]: what the cache gave it and what is
/// left to compute.
pub struct Prefill {
    pub(super) sequence: Sequence,
    pub(super) prompt: Vec<u32>,
    pub(super) keys: Vec<Key>,
    /// Leading prompt tokens whose KV is in the cache, or arrives through `feed` during the
    /// next pass.
    pub(super) computed: usize,
    pub(super) feed: Option<LayerFeed>,
    /// When the feed's last layer is due at the latest.
    pub(super) due: Instant,
    pub(super) report: PrefillReport,
}

impl Prefill {
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// Prompt tokens still to compute.
    pub fn remaining(&self) -> usize {
        self.prompt.len() - self.computed
    }

    pub fn report(&self) -> &PrefillReport {
        &self.report
    }

    /// Whether the next pass over this prompt would wait for the store: its prefix is
    /// still arriving layer by layer. A prefix not all arrived by the fetch deadline is
    /// given up, and the whole prompt is computed instead.
    pub fn waits_for_store(&mut self) -> bool {
        let n_layers = self.sequence.cache.shape().n_layers;
        let Some(feed) = self.feed.as_mut() else {
            return false;
        };
        if feed.arrived(n_layers) {
            return false;
        }
        if Instant::now() < self.due {
            return true;
        }
        tracing::warn!("kv cache layers late past the fetch deadline; recomputing the prompt");
        self.fall_back();
        false
    }

    /// The finished sequence; only once [`Prefill::remaining`] is zero.
    pub fn finish(mut self) -> (Sequence, PrefillReport) {
        debug_assert_eq!(self.remaining(), 0, "finish before the prompt was computed");
        self.sequence.keys = self.keys;
        (self.sequence, self.report)
    }

    /// Records that a pass computed the next `tokens` prompt tokens.
    pub(super) fn advance(&mut self, tokens: usize) {
        if let Some(feed) = self.feed.take() {
            self.report.fetched_bytes += feed.bytes();
        }
        let end = self.computed + tokens;
        let chunk = &self.prompt[self.computed..end];
        self.sequence.tokens.extend_from_slice(chunk);
        self.computed = end;
    }

    /// Forgets what the cache gave: the whole prompt is computed instead.
    pub(super) fn fall_back(&mut self) {
        self.feed = None;
        self.sequence.cache.truncate(0);
        self.sequence.tokens.clear();
        self.sequence.stored_blocks = 0;
        self.computed = 0;
        self.report.cached_tokens = 0;
        self.report.fell_back = true;
    }

    /// The prefix of `blocks` blocks of `block_tokens` is (or is arriving) in the cache.
    fn cached(&mut self, blocks: usize, block_tokens: usize) {
        self.computed = blocks * block_tokens;
        self.sequence.tokens = self.prompt[..self.computed].to_vec();
        self.sequence.stored_blocks = blocks;
        self.report.cached_tokens = self.computed;
    }
}

impl<C: KvConnector> Engine<C> {
    /// Hashes `tokens` and, when `use_cache` is set, looks up and starts loading their
    /// longest cached prefix, within the engine's fetch deadline. At least the last prompt
    /// token is always left to compute: its logits are the answer.
    pub async fn begin(&self, tokens: Vec<u32>, use_cache: bool) -> Result<Prefill> {
        let due = self.fetch_deadline.map(|d| Instant::now() + d);
        self.begin_by(tokens, use_cache, due).await
    }

    /// [`Engine::begin`] with the lookup and the load due by `due` (none: no deadline),
    /// for a caller that spent part of the deadline already.
    pub async fn begin_by(
        &self,
        tokens: Vec<u32>,
        use_cache: bool,
        due: Option<Instant>,
    ) -> Result<Prefill> {
        if tokens.is_empty() {
            return Err(EngineError::NoTokens);
        }
        let started = Instant::now();
        let keys = self.keys_for(&[], &tokens);
        let mut cache = self.model.model.new_cache()?;
        // One allocation for the whole prompt: loading and computing then never regrow it.
        cache.reserve(tokens.len())?;
        let report = PrefillReport {
            prompt_tokens: tokens.len(),
            hash: started.elapsed(),
            ..Default::default()
        };
        let mut prefill = Prefill {
            sequence: Sequence {
                tokens: Vec::new(),
                cache,
                keys: Vec::new(),
                stored_blocks: 0,
            },
            keys,
            computed: 0,
            feed: None,
            due: due.unwrap_or(started + NO_DEADLINE),
            report,
            prompt: tokens,
        };
        let Some(connector) = self.connector.as_ref().filter(|_| use_cache) else {
            return Ok(prefill);
        };
        let b = self.block_tokens();
        let usable = prefill.keys.len().min((prefill.prompt.len() - 1) / b);
        let loaded = by(due, self.fetch_prefix(connector, usable, &mut prefill)).await;
        if let Err(error) = loaded {
            tracing::warn!(%error, "kv cache load failed; recomputing the prompt");
            prefill.fall_back();
        }
        Ok(prefill)
    }

    /// Looks up the prefix and loads it: whole into the cache before returning, or, layer
    /// by layer, opens its stream once layer 0 has arrived.
    async fn fetch_prefix(
        &self,
        connector: &C,
        usable: usize,
        prefill: &mut Prefill,
    ) -> std::result::Result<(), ConnectorError> {
        let started = Instant::now();
        let held = connector.lookup(&prefill.keys[..usable]).await?;
        prefill.report.lookup = started.elapsed();
        if held == 0 {
            return Ok(());
        }
        let keys = &prefill.keys[..held];
        if self.layer_wise {
            let feed = connector.load_layers(keys).await?;
            if feed.blocks() > 0 {
                prefill.cached(feed.blocks(), self.block_tokens());
                prefill.feed = Some(feed);
            }
            return Ok(());
        }
        let started = Instant::now();
        let loaded = connector.load(keys, &mut prefill.sequence.cache).await?;
        prefill.report.fetch = started.elapsed();
        prefill.report.fetched_bytes = loaded.bytes;
        prefill.cached(loaded.blocks, self.block_tokens());
        Ok(())
    }
}

/// How long a layer-wise load may take when the engine has no fetch deadline.
const NO_DEADLINE: Duration = Duration::from_secs(3600);

/// Runs `load` until `due`, when there is one.
async fn by(
    due: Option<Instant>,
    load: impl std::future::Future<Output = std::result::Result<(), ConnectorError>>,
) -> std::result::Result<(), ConnectorError> {
    let Some(due) = due else {
        return load.await;
    };
    let left = due.saturating_duration_since(Instant::now());
    tokio::time::timeout_at(due.into(), load)
        .await
        .unwrap_or(Err(ConnectorError::Deadline(left)))
}
