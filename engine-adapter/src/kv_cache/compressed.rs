//! Decode-time compression: the tokens of a [`super::KvCache`] older than a recent window
//! are held in a lossy block codec (int8 by default) and dequantized when attention reads
//! them.
//!
//! Old tokens are compressed a group at a time: a group is `group` consecutive tokens of
//! every layer, encoded as one kvtier block, so keys are quantized per channel over the
//! group's tokens and values per token (as KIVI does). A group is compressed once every
//! one of its tokens is at least `window` tokens behind the newest, which leaves between
//! `window` and `window + group - 1` tokens exact at any time.

use kvtier_format::{encode_block_with, BlockShape, BlockView, CodecSpec, DType};

use super::{KvShape, F32_BYTES};
use crate::error::{EngineError, Result};

/// Default recent window: tokens kept exact.
pub const DEFAULT_WINDOW: usize = 256;
/// Default tokens per compressed group.
pub const DEFAULT_GROUP: usize = 32;

/// How a cache compresses the tokens behind its recent window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeCompression {
    /// Newest tokens always held exact (f32).
    pub window: usize,
    /// Tokens compressed together; keys share scales over a group. At least 1.
    pub group: usize,
    /// Codec of the compressed groups (any kvtier block codec; int8 by default).
    pub codec: CodecSpec,
}

impl Default for DecodeCompression {
    fn default() -> Self {
        DecodeCompression {
            window: DEFAULT_WINDOW,
            group: DEFAULT_GROUP,
            codec: CodecSpec::int8(),
        }
    }
}

impl DecodeCompression {
    /// Int8 beyond a window of `window` tokens, in groups of [`DEFAULT_GROUP`].
    pub fn int8(window: usize) -> Self {
        DecodeCompression {
            window,
            ..DecodeCompression::default()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.group == 0 || self.group > u32::MAX as usize {
            return Err(EngineError::Unsupported {
                what: "decode compression group",
                value: self.group.to_string(),
            });
        }
        self.codec.validate().map_err(EngineError::KvCodec)
    }
}

/// The compressed groups of one cache, oldest first.
#[derive(Clone)]
pub(super) struct Groups {
    settings: DecodeCompression,
    shape: BlockShape,
    blocks: Vec<Vec<u8>>,
    bytes: usize,
}

impl Groups {
    pub(super) fn new(shape: KvShape, settings: DecodeCompression) -> Result<Self> {
        settings.validate()?;
        let shape = BlockShape {
            n_layers: shape.n_layers as u32,
            n_kv_heads: shape.n_kv_heads as u32,
            block_tokens: settings.group as u32,
            head_dim: shape.head_dim as u32,
            dtype: DType::F32,
        };
        shape.validate().map_err(EngineError::KvCodec)?;
        Ok(Groups {
            settings,
            shape,
            blocks: Vec::new(),
            bytes: 0,
        })
    }

    pub(super) fn settings(&self) -> DecodeCompression {
        self.settings
    }

    /// Tokens held compressed.
    pub(super) fn tokens(&self) -> usize {
        self.blocks.len() * self.settings.group
    }

    /// Encoded bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Compresses one group given in the block layout of [`super::KvCache::export_block`].
    pub(super) fn push(&mut self, raw: &[u8]) -> Result<()> {
        let block = encode_block_with(&[0; 32], &self.shape, raw, &self.settings.codec)
            .map_err(EngineError::KvCodec)?;
        self.bytes += block.len();
        self.blocks.push(block);
        Ok(())
    }

    /// Keeps the first `n` groups.
    pub(super) fn truncate(&mut self, n: usize) {
        for block in self.blocks.drain(n.min(self.blocks.len())..) {
            self.bytes -= block.len();
        }
    }

    /// K and V of `layer` over groups `from..to`, each `[n_kv_heads][tokens][head_dim]`.
    pub(super) fn decode_layer(
        &self,
        layer: usize,
        from: usize,
        to: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (heads, dim) = (self.shape.n_kv_heads as usize, self.shape.head_dim as usize);
        let group = self.settings.group;
        let tokens = (to - from) * group;
        let mut k = vec![0f32; heads * tokens * dim];
        let mut v = vec![0f32; heads * tokens * dim];
        let mut raw = vec![0u8; self.shape.layer_bytes()];
        let rows = group * dim;
        for (g, block) in self.blocks[from..to].iter().enumerate() {
            let view = BlockView::parse(block).map_err(EngineError::KvCodec)?;
            view.decode_layer(layer, &mut raw)
                .map_err(EngineError::KvCodec)?;
            let (raw_k, raw_v) = raw.split_at(raw.len() / 2);
            for (out, part) in [(&mut k, raw_k), (&mut v, raw_v)] {
                for h in 0..heads {
                    let src = &part[h * rows * F32_BYTES..(h + 1) * rows * F32_BYTES];
                    let at = (h * tokens + g * group) * dim;
                    for (x, b) in out[at..at + rows].iter_mut().zip(src.chunks_exact(4)) {
                        *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
            }
        }
        Ok((k, v))
    }
}
