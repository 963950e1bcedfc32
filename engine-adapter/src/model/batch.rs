//! One forward pass over several sequences at once, each bringing its own new tokens and
//! its own KV cache: a decode step brings one token, a prefill a chunk of its prompt.
//!
//! The embedding, every projection, the MLP and the LM head run once over the rows of all
//! segments (one product per weight, so the weights are read once per pass however many
//! sequences share it); attention runs per segment, over that segment's cache. A segment
//! may bring a `fill` that writes its cached prefix one layer at a time, just before the
//! layer computes (a layer-wise load). A fill that fails spoils only its own segment: the
//! other segments' results are unaffected, and that segment's cache is emptied.

use candle_core::{Device, Tensor};

use super::layer::Step;
use super::Model;
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;

/// Writes layer `layer` of a cached prefix into the cache, before that layer computes.
pub type LayerFill<'a> = dyn FnMut(usize, &mut KvCache) -> Result<()> + 'a;

/// New tokens of one sequence in a batched pass.
pub struct Segment<'a> {
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`. Without a fill the cache holds exactly this many tokens;
    /// with one the cache is empty and the fill writes positions `..start` of each layer.
    pub start: usize,
    pub cache: &'a mut KvCache,
    pub fill: Option<&'a mut LayerFill<'a>>,
}

impl<'a> Segment<'a> {
    /// `tokens` after everything `cache` holds.
    pub fn after(tokens: &'a [u32], cache: &'a mut KvCache) -> Self {
        Segment {
            tokens,
            start: cache.len(),
            cache,
            fill: None,
        }
    }
}

impl Model {
    /// Computes every segment's tokens and returns, per segment, the logits of its last
    /// token, or why its fill failed. An `Err` of the whole call (a refused segment, a
    /// tensor error) leaves every cache as it was before.
    pub fn forward_batch(&self, segments: &mut [Segment<'_>]) -> Result<Vec<Result<Vec<f32>>>> {
        self.check_segments(segments)?;
        let before: Vec<usize> = segments.iter().map(|s| s.cache.len()).collect();
        let mut failed: Vec<Option<EngineError>> = segments.iter().map(|_| None).collect();
        let logits = self.run_segments(segments, &mut failed).and_then(|hidden| {
            let mut last = Vec::with_capacity(segments.len());
            let mut row = 0;
            for segment in segments.iter() {
                row += segment.tokens.len();
                last.push(row as u32 - 1);
            }
            let last = Tensor::new(last.as_slice(), &Device::Cpu)?;
            Ok(self.logits(&hidden.index_select(&last, 0)?)?.to_vec2()?)
        });
        let logits = match logits {
            Ok(logits) => logits,
            Err(error) => {
                for (segment, len) in segments.iter_mut().zip(before) {
                    segment.cache.truncate(len);
                }
                return Err(error);
            }
        };
        let results = segments
            .iter_mut()
            .zip(failed)
            .zip(logits)
            .map(|((segment, failed), logits)| match failed {
                Some(error) => {
                    segment.cache.truncate(0);
                    Err(error)
                }
                None => Ok(logits),
            })
            .collect();
        Ok(results)
    }

    /// Computes `tokens[i]` after the cached tokens of `caches[i]`, for every `i`; returns
    /// each sequence's logits. On error every cache keeps its previous length.
    pub fn decode_batch(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
    ) -> Result<Vec<Vec<f32>>> {
        if tokens.is_empty() || tokens.len() != caches.len() {
            return Err(EngineError::NoTokens);
        }
        let mut segments: Vec<Segment<'_>> = tokens
            .iter()
            .zip(caches.iter_mut())
            .map(|(token, cache)| Segment::after(std::slice::from_ref(token), cache))
            .collect();
        // Without fills no segment can fail on its own.
        self.forward_batch(&mut segments)?.into_iter().collect()
    }

    fn check_segments(&self, segments: &[Segment<'_>]) -> Result<()> {
        if segments.is_empty() {
            return Err(EngineError::NoTokens);
        }
        for segment in segments {
            self.check(segment.tokens, segment.cache)?;
            let expected = if segment.fill.is_some() {
                0
            } else {
                segment.start
            };
            if segment.cache.len() != expected {
                return Err(EngineError::Unsupported {
                    what: "segment start",
                    value: format!(
                        "{} with {} tokens cached",
                        segment.start,
                        segment.cache.len()
                    ),
                });
            }
            let requested = segment.start + segment.tokens.len();
            if requested > self.config.context_length {
                return Err(EngineError::ContextOverflow {
                    requested,
                    limit: self.config.context_length,
                });
            }
        }
        Ok(())
    }

    /// Runs every layer over the segments' tokens, which the caller has checked; returns
    /// the hidden states of all their rows, in order, before the final norm. A fill that
    /// fails is recorded in `failed` and not called again.
    pub(super) fn run_segments(
        &self,
        segments: &mut [Segment<'_>],
        failed: &mut [Option<EngineError>],
    ) -> Result<Tensor> {
        let mut ids = Vec::new();
        for segment in segments.iter_mut() {
            segment
                .cache
                .reserve(segment.start + segment.tokens.len())?;
            ids.extend_from_slice(segment.tokens);
        }
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu)?;
        let mut x = self.weights.embed.index_select(&ids, 0)?;
        for (index, layer) in self.weights.layers.iter().enumerate() {
            for (segment, failed) in segments.iter_mut().zip(failed.iter_mut()) {
                if let (Some(fill), None) = (segment.fill.as_mut(), failed.as_ref()) {
                    *failed = fill(index, segment.cache).err();
                }
            }
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.config.rms_eps)?;
            let qkv = layer.wqkv.forward(&h)?;
            let mut rows = Vec::with_capacity(segments.len());
            let mut row = 0;
            for segment in segments.iter_mut() {
                let n = segment.tokens.len();
                let step = Step {
                    cfg: &self.config,
                    rope: &self.rope,
                    pos: segment.start,
                };
                let qkv = qkv.narrow(0, row, n)?;
                rows.push(layer.attend_projected(index, &qkv, &step, segment.cache)?);
                row += n;
            }
            let attn = match rows.len() {
                1 => rows.remove(0),
                _ => Tensor::cat(&rows, 0)?,
            };
            x = (x + layer.wo.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.config.rms_eps)?;
            x = (x + layer.mlp(&h, self.config.ffn_hidden)?)?;
        }
        for segment in segments.iter_mut() {
            let end = segment.start + segment.tokens.len();
            segment.cache.advance(end - segment.cache.len());
        }
        Ok(x)
    }
}
