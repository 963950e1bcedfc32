//! A plain generation loop: one batched forward for the prompt, then one token a step.

use super::Model;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::sampling::Sampler;

impl Model {
    /// Computes `prompt` after the cached tokens, then samples up to `max_new_tokens`
    /// tokens. Stops early after a token in `stop` (which is returned too) or when the
    /// context is full. On return the cache holds the prompt and every returned token but
    /// the last, which has not been fed back yet.
    pub fn generate(
        &self,
        prompt: &[u32],
        cache: &mut KvCache,
        sampler: &mut Sampler,
        max_new_tokens: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if max_new_tokens == 0 {
            return Ok(out);
        }
        let mut logits = self.forward_last_logits(prompt, cache)?;
        loop {
            let next = sampler.sample(&logits);
            out.push(next);
            let full = cache.len() >= self.config.context_length;
            if out.len() >= max_new_tokens || stop.contains(&next) || full {
                return Ok(out);
            }
            logits = self.forward_last_logits(&[next], cache)?;
        }
    }
}
