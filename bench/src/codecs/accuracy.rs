//! Accuracy against the uncompressed KV: the next-token distribution at every position of
//! a real text, teacher-forced in batched forwards.
//!
//! Block codecs: the prefix's KV is round-tripped through the codec into a fresh cache and
//! the continuation is computed in one batched pass over it; the continuation's own KV
//! stays exact, as it would in an engine that fetched the prefix from the store.
//! Decode-time compression: the cache compresses as the engine's would, and the
//! continuation is computed `STEP` tokens per forward, so each position sees the window
//! an engine decoding there would (between `W` and `W + group + STEP` exact tokens).

use kvtier_engine::kv_cache::DecodeCompression;
use kvtier_engine::{KvCache, Model};

/// Tokens per forward when the cache compresses as it goes.
pub const STEP: usize = 16;

/// Log-probabilities of the next token at each position, and their argmax.
pub struct Reference {
    log_probs: Vec<Vec<f32>>,
    top: Vec<usize>,
}

/// Top-1 agreement and mean KL divergence over the positions of a [`Reference`].
#[derive(Debug, Clone, Copy)]
pub struct Agreement {
    pub positions: usize,
    pub top1: f64,
    pub mean_kl: f64,
}

impl Reference {
    pub fn new(logits: &[Vec<f32>]) -> Self {
        let log_probs: Vec<Vec<f32>> = logits.iter().map(|l| log_softmax(l)).collect();
        let top = log_probs.iter().map(|l| argmax(l)).collect();
        Reference { log_probs, top }
    }

    pub fn len(&self) -> usize {
        self.top.len()
    }

    /// How close `logits` (one row per position, in order) are to the reference.
    pub fn compare(&self, logits: &[Vec<f32>]) -> Agreement {
        let n = self.len().min(logits.len());
        let (mut agree, mut kl) = (0usize, 0f64);
        for (i, row) in logits.iter().take(n).enumerate() {
            let q = log_softmax(row);
            agree += (argmax(&q) == self.top[i]) as usize;
            kl += self.log_probs[i]
                .iter()
                .zip(&q)
                .map(|(&p, &q)| f64::from(p).exp() * (f64::from(p) - f64::from(q)))
                .sum::<f64>();
        }
        Agreement {
            positions: n,
            top1: agree as f64 / n.max(1) as f64,
            mean_kl: kl / n.max(1) as f64,
        }
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    let log_sum = sum.ln() as f32 + max;
    logits.iter().map(|&x| x - log_sum).collect()
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |best, i| if x[i] > x[best] { i } else { best })
}

/// Logits of every token of `continuation` after `prefix` raw f32 blocks of
/// `block_tokens` tokens appended into a fresh cache.
pub fn after_blocks(
    model: &Model,
    prefix: &[Vec<u8>],
    block_tokens: usize,
    continuation: &[u32],
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut cache = model.new_cache()?;
    cache.reserve(prefix.len() * block_tokens + continuation.len())?;
    for block in prefix {
        cache.append_block(block, block_tokens)?;
    }
    Ok(model.forward_all_logits(continuation, &mut cache)?)
}

/// What a compressing cache computed over `prefix` then `continuation`.
pub struct Compressed {
    pub logits: Vec<Vec<f32>>,
    /// Bytes held, exact and compressed, after the prefix and at the end.
    pub held_after_prefix: usize,
    pub held_at_end: usize,
    pub exact_after_prefix: usize,
    pub exact_at_end: usize,
}

/// Prefills `prefix` in one call and decodes `continuation` [`STEP`] tokens at a time on a
/// cache compressing with `settings`.
pub fn with_decode_compression(
    model: &Model,
    settings: DecodeCompression,
    prefix: &[u32],
    continuation: &[u32],
) -> anyhow::Result<Compressed> {
    let mut cache = model.new_cache()?;
    cache.set_compression(Some(settings))?;
    model.forward(prefix, &mut cache)?;
    compress_now(&mut cache)?;
    let held_after_prefix = cache.held_bytes();
    let exact_after_prefix = cache.len() * cache.shape().token_bytes();
    let mut logits = Vec::with_capacity(continuation.len());
    for chunk in continuation.chunks(STEP) {
        logits.extend(model.forward_all_logits(chunk, &mut cache)?);
    }
    compress_now(&mut cache)?;
    Ok(Compressed {
        logits,
        held_after_prefix,
        held_at_end: cache.held_bytes(),
        exact_after_prefix,
        exact_at_end: cache.len() * cache.shape().token_bytes(),
    })
}

/// The cache compresses when it makes room; make room for nothing to see the bytes an
/// engine would hold before its next step.
fn compress_now(cache: &mut KvCache) -> anyhow::Result<()> {
    Ok(cache.reserve(cache.len())?)
}
