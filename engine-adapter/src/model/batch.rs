//! One decode step for several sequences at once: each brings one new token and its own
//! KV cache. The embedding, every projection, the MLP and the LM head run once over all
//! the tokens (one `[batch, hidden]` product per weight, so the weights are read once
//! per step instead of once per sequence); attention runs per sequence, over its cache.

use candle_core::{Device, Tensor};
use candle_nn::ops::rms_norm;

use super::layer::Step;
use super::Model;
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;

impl Model {
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
        for (token, cache) in tokens.iter().zip(caches.iter()) {
            self.check(std::slice::from_ref(token), cache)?;
        }
        let starts: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        let result = self.decode_batch_unchecked(tokens, caches, &starts);
        if result.is_err() {
            for (cache, start) in caches.iter_mut().zip(&starts) {
                cache.truncate(*start);
            }
        }
        result
    }

    fn decode_batch_unchecked(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        starts: &[usize],
    ) -> Result<Vec<Vec<f32>>> {
        for (cache, start) in caches.iter_mut().zip(starts) {
            cache.reserve(start + 1)?;
        }
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut x = self.weights.embed.index_select(&ids, 0)?;
        let cfg = &self.config;
        for (index, layer) in self.weights.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, cfg.rms_eps)?;
            let qkv = layer.wqkv.forward(&h)?;
            let mut rows = Vec::with_capacity(tokens.len());
            for (b, cache) in caches.iter_mut().enumerate() {
                let step = Step {
                    cfg,
                    rope: &self.rope,
                    pos: starts[b],
                    mask: None,
                };
                let row = qkv.narrow(0, b, 1)?;
                rows.push(layer.attend_projected(index, &row, &step, cache)?);
            }
            let attn = Tensor::cat(&rows, 0)?;
            x = (x + layer.wo.forward(&attn)?)?;
            let h = rms_norm(&x, &layer.ffn_norm, cfg.rms_eps)?;
            x = (x + layer.mlp(&h, cfg.ffn_hidden)?)?;
        }
        for (cache, start) in caches.iter_mut().zip(starts) {
            cache.advance(start + 1 - cache.len());
        }
        Ok(self.logits(&x)?.to_vec2()?)
    }
}
