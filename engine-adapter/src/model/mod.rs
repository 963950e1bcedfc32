//! The reference decoder: Llama architecture (RMSNorm, grouped-query attention with
//! interleaved RoPE, SwiGLU) on candle ops, computing in f32 on the CPU.
//!
//! The model holds only weights; the KV cache is the caller's ([`KvCache`]), so kvtier can
//! fill it from the store before a forward pass and export it afterwards. A forward pass
//! computes the given tokens at positions `cache.len()..`, appends their K and V to the
//! cache and returns the logits of the last token. Prefill and decode are the same call:
//! give a whole prompt (or the part not found in the store) at once, then one token at a
//! time. Long inputs are computed in chunks of [`PREFILL_CHUNK`] tokens (see
//! [`Model::set_prefill_chunk`]) and attention in blocks of query rows, which bounds the
//! memory a pass needs without changing the result beyond rounding.
//!
//! Threads: the weight products run on OpenBLAS's threads, attention's products on
//! rayon's global pool. candle asks for the thread count on every product and, unless
//! `RAYON_NUM_THREADS` is set, recounts the CPUs from `/proc` each time (about 30 us,
//! several ms per decoded token); a binary should call [`fix_compute_threads`] before it
//! starts any thread.

mod attention;
mod batch;
mod blas;
mod config;
mod generate;
mod info;
mod layer;
mod linear;
mod overlap;
mod rope;
mod weights;

use candle_core::Tensor;
use candle_nn::ops::rms_norm;

pub use self::batch::{LayerFill, Segment};
pub use self::config::{ModelConfig, DEFAULT_RMS_EPS, DEFAULT_ROPE_BASE};
pub use self::info::{LoadedModel, ModelInfo};
use self::rope::Rope;
use self::weights::Weights;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::{KvCache, KvShape};

/// Fixes the compute threads of the process, as the module docs ask of a binary:
/// `RAYON_NUM_THREADS` is set to the available CPUs, and `CANDLE_NUM_THREADS` to 1 so
/// that candle runs elementwise operations on the calling thread instead of a pool of its
/// own whose spinning workers would compete with OpenBLAS's for the same cores (the
/// weight products, nearly all of a pass, run on OpenBLAS's threads). Either variable set
/// already is kept. Call it at the top of `main`, before any thread starts.
pub fn fix_compute_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Default for the most tokens computed in one pass through the layers.
pub const PREFILL_CHUNK: usize = 512;

/// A loaded decoder: configuration, f32 weights and RoPE tables.
pub struct Model {
    config: ModelConfig,
    weights: Weights,
    rope: Rope,
    prefill_chunk: usize,
}

impl Model {
    /// Reads the config and all weights of `gguf`, dequantizing them to f32.
    pub fn from_gguf(gguf: &mut GgufFile) -> Result<Self> {
        let config = ModelConfig::from_gguf(gguf)?;
        let weights = Weights::load(gguf, &config)?;
        let rope = Rope::new(&config)?;
        Ok(Self {
            config,
            weights,
            rope,
            prefill_chunk: PREFILL_CHUNK,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Sets the most tokens computed in one pass through the layers (at least 1). It bounds
    /// the activations of a pass: the widest is `chunk * 2 * ffn_hidden` floats.
    pub fn set_prefill_chunk(&mut self, tokens: usize) {
        self.prefill_chunk = tokens.max(1);
    }

    /// The most tokens computed in one pass through the layers.
    pub fn prefill_chunk(&self) -> usize {
        self.prefill_chunk
    }

    pub fn kv_shape(&self) -> KvShape {
        KvShape {
            n_layers: self.config.n_layers,
            n_kv_heads: self.config.n_kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// An empty cache of this model's shape.
    pub fn new_cache(&self) -> Result<KvCache> {
        KvCache::new(self.kv_shape())
    }

    /// Computes `tokens` after the cached ones and returns the last token's logits
    /// (`[vocab_size]`, f32). On error the cache keeps its previous length.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.check(tokens, cache)?;
        rollback_on_error(cache, |cache| {
            let mut last = None;
            for chunk in tokens.chunks(self.prefill_chunk) {
                last = Some(self.run_layers(chunk, cache)?);
            }
            let hidden = last.ok_or(EngineError::NoTokens)?;
            let n = hidden.dim(0)?;
            let logits = self.logits(&hidden.narrow(0, n - 1, 1)?)?;
            Ok(logits.squeeze(0)?)
        })
    }

    /// [`Model::forward`] with the logits copied into a `Vec`.
    pub fn forward_last_logits(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        Ok(self.forward(tokens, cache)?.to_vec1()?)
    }

    /// Like [`Model::forward`] but returns the logits of every given token, in order.
    /// Costs a vocabulary-sized product per token: meant for tests and scoring.
    pub fn forward_all_logits(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<Vec<f32>>> {
        self.check(tokens, cache)?;
        rollback_on_error(cache, |cache| {
            let mut all = Vec::with_capacity(tokens.len());
            for chunk in tokens.chunks(self.prefill_chunk) {
                let hidden = self.run_layers(chunk, cache)?;
                all.extend(self.logits(&hidden)?.to_vec2()?);
            }
            Ok(all)
        })
    }

    fn check(&self, tokens: &[u32], cache: &KvCache) -> Result<()> {
        if tokens.is_empty() {
            return Err(EngineError::NoTokens);
        }
        if cache.shape() != self.kv_shape() {
            return Err(EngineError::CacheShape {
                expected: self.kv_shape().to_string(),
                got: cache.shape().to_string(),
            });
        }
        let requested = cache.len() + tokens.len();
        if requested > self.config.context_length {
            return Err(EngineError::ContextOverflow {
                requested,
                limit: self.config.context_length,
            });
        }
        let vocab_size = self.config.vocab_size;
        match tokens.iter().find(|&&id| id as usize >= vocab_size) {
            Some(&id) => Err(EngineError::TokenOutOfVocab { id, vocab_size }),
            None => Ok(()),
        }
    }

    /// Runs every layer on `tokens` after the cached ones; returns the hidden states
    /// before the final norm.
    fn run_layers(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let mut segment = [Segment::after(tokens, cache)];
        self.run_segments(&mut segment, &mut [None])
    }

    /// Final norm and LM head of `hidden` (`[n, hidden]`): `[n, vocab_size]`.
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = rms_norm(hidden, &self.weights.output_norm, self.config.rms_eps)?;
        self.weights.lm_head.forward(&h)
    }
}

/// Runs `f`; if it fails, forgets the tokens it appended so the cache is as before.
fn rollback_on_error<T>(
    cache: &mut KvCache,
    f: impl FnOnce(&mut KvCache) -> Result<T>,
) -> Result<T> {
    let start = cache.len();
    let result = f(cache);
    if result.is_err() {
        cache.truncate(start);
    }
    result
}
