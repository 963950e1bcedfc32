//! A forward pass that overlaps loading a cached prefix with computing after it.
//!
//! The prefix's K and V arrive one layer at a time; layer `i` of the new tokens needs only
//! layer `i` of the prefix, so the pass asks for each layer just before computing it and
//! layer `i + 1` can be in flight while layer `i` computes. The arithmetic is the one of
//! [`Model::forward`] on a cache that already holds the prefix, so the logits are the same.

use candle_core::Tensor;

use super::{rollback_on_error, LayerFill, Model, Segment};
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;

impl Model {
    /// Computes `tokens` after a prefix of `prefix` tokens that is not in `cache` yet (which
    /// must be empty): `fill_layer(i, cache)` is called before layer `i` of the first
    /// chunk and must write layer `i` of the prefix at positions `0..prefix`. Returns the
    /// last token's logits; on error the cache is left empty.
    pub fn forward_filling(
        &self,
        tokens: &[u32],
        prefix: usize,
        cache: &mut KvCache,
        fill_layer: &mut LayerFill<'_>,
    ) -> Result<Tensor> {
        if !cache.is_empty() {
            return Err(EngineError::Unsupported {
                what: "layer-wise load into a non-empty cache",
                value: format!("{} tokens", cache.len()),
            });
        }
        self.check(tokens, cache)?;
        let requested = prefix + tokens.len();
        if requested > self.config.context_length {
            return Err(EngineError::ContextOverflow {
                requested,
                limit: self.config.context_length,
            });
        }
        rollback_on_error(cache, |cache| {
            let mut chunks = tokens.chunks(self.prefill_chunk);
            let first = chunks.next().ok_or(EngineError::NoTokens)?;
            let mut segment = [Segment {
                tokens: first,
                start: prefix,
                cache,
                fill: Some(fill_layer),
            }];
            let mut failed = [None];
            let mut last = self.run_segments(&mut segment, &mut failed)?;
            let [Segment { cache, .. }] = segment;
            if let [Some(error)] = failed {
                return Err(error);
            }
            for chunk in chunks {
                last = self.run_layers(chunk, cache)?;
            }
            let n = last.dim(0)?;
            let logits = self.logits(&last.narrow(0, n - 1, 1)?)?;
            Ok(logits.squeeze(0)?)
        })
    }
}
