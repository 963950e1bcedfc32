//! Hyper-parameters of a Llama-architecture decoder, read from `llama.*` GGUF metadata.

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// RoPE base used when the file has no `llama.rope.freq_base` (stories260K has none).
pub const DEFAULT_ROPE_BASE: f32 = 10_000.0;

/// RMSNorm epsilon used when the file has no `llama.attention.layer_norm_rms_epsilon`.
pub const DEFAULT_RMS_EPS: f32 = 1e-5;

/// The shape of the network; everything the forward pass and the KV cache depend on.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub n_layers: usize,
    /// Width of the residual stream (`embedding_length`).
    pub hidden: usize,
    /// Width of the SwiGLU inner layer (`feed_forward_length`).
    pub ffn_hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// Longest sequence (prompt plus generated tokens) the model was trained for.
    pub context_length: usize,
    pub vocab_size: usize,
}

impl ModelConfig {
    /// Reads the config of a `general.architecture == "llama"` file.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.str("general.architecture")?;
        if arch != "llama" {
            return Err(EngineError::Unsupported {
                what: "architecture",
                value: arch.into(),
            });
        }
        let hidden = gguf.usize("llama.embedding_length")?;
        let n_heads = gguf.usize("llama.attention.head_count")?;
        let n_kv_heads = match gguf.u64_opt("llama.attention.head_count_kv")? {
            Some(n) => n as usize,
            None => n_heads,
        };
        let vocab_size = match gguf.u64_opt("llama.vocab_size")? {
            Some(n) => n as usize,
            None => gguf.array("tokenizer.ggml.tokens")?.len(),
        };
        let config = Self {
            n_layers: gguf.usize("llama.block_count")?,
            hidden,
            ffn_hidden: gguf.usize("llama.feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim: hidden.checked_div(n_heads).unwrap_or(0),
            rope_base: gguf
                .f32_opt("llama.rope.freq_base")?
                .unwrap_or(DEFAULT_ROPE_BASE),
            rms_eps: gguf
                .f32_opt("llama.attention.layer_norm_rms_epsilon")?
                .unwrap_or(DEFAULT_RMS_EPS),
            context_length: gguf.usize("llama.context_length")?,
            vocab_size,
        };
        config.validate()?;
        Ok(config)
    }

    /// Query heads that share one KV head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, expected| EngineError::BadMetadata {
            key: key.into(),
            expected,
        };
        if self.n_heads == 0 || self.n_heads * self.head_dim != self.hidden {
            return Err(bad(
                "llama.attention.head_count",
                "a non-zero divisor of embedding_length",
            ));
        }
        if self.n_kv_heads == 0 || self.group_size() * self.n_kv_heads != self.n_heads {
            return Err(bad(
                "llama.attention.head_count_kv",
                "a non-zero divisor of head_count",
            ));
        }
        if self.head_dim / 2 * 2 != self.head_dim {
            return Err(bad("llama.embedding_length", "an even head dimension"));
        }
        if self.n_layers == 0 || self.context_length == 0 || self.vocab_size == 0 {
            return Err(bad("llama.block_count", "a non-empty model"));
        }
        Ok(())
    }
}
