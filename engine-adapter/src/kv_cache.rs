//! The attention KV cache, held outside the model so that kvtier can fill and drain it.
//!
//! Per layer the cache keeps K (after RoPE) and V as f32 tensors laid out
//! `[n_kv_heads][capacity][head_dim]`; the first [`KvCache::len`] token slots are valid.
//! Capacity grows geometrically, so appending a token does not copy the whole cache.
//!
//! Protocol for a caller:
//! - A fresh cache comes from [`KvCache::new`] with the model's [`KvShape`]
//!   (`Model::new_cache` does this).
//! - `Model::forward` appends the tokens it computes; [`KvCache::append_block`] appends
//!   tokens fetched from the store. Both add at position `len()`, so a caller appends
//!   blocks in chain order, before computing the rest of the prompt.
//! - [`KvCache::export_block`] copies out tokens `start..start + n` of every layer in the
//!   block layout of DESIGN.md: `[layer][K then V][kv_head][token][head_dim]`,
//!   little-endian f32. Appending an exported block into another cache of the same shape
//!   reproduces it bit for bit.
//! - [`KvCache::truncate`] forgets a tail (for example the tokens of a turn that is
//!   recomputed); memory is kept for reuse.
//!
//! A `KvCache` is not `Clone`: its tensors are written in place, so a shallow copy would
//! alias; [`KvCache::try_clone`] makes a deep copy.

use candle_core::{DType, Device, Storage, Tensor};

use crate::error::{EngineError, Result};

/// Capacity (tokens) of the first allocation; later growth doubles.
const MIN_CAPACITY: usize = 256;

const F32_BYTES: usize = 4;

/// The dimensions of a model's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Bytes of K and V for one token across all layers.
    pub fn token_bytes(&self) -> usize {
        self.n_layers * 2 * self.n_kv_heads * self.head_dim * F32_BYTES
    }

    /// Bytes of an exported block of `n_tokens` tokens.
    pub fn block_bytes(&self, n_tokens: usize) -> usize {
        self.token_bytes() * n_tokens
    }
}

impl std::fmt::Display for KvShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            n_layers,
            n_kv_heads,
            head_dim,
        } = self;
        write!(f, "{n_layers} layers x {n_kv_heads} kv heads x {head_dim}")
    }
}

struct LayerKv {
    k: Tensor,
    v: Tensor,
}

/// Per-layer K and V of the tokens computed so far for one sequence.
pub struct KvCache {
    shape: KvShape,
    len: usize,
    capacity: usize,
    layers: Vec<LayerKv>,
}

impl KvCache {
    /// An empty cache; nothing is allocated until the first token arrives.
    pub fn new(shape: KvShape) -> Result<Self> {
        Self::with_capacity(shape, 0)
    }

    /// An empty cache with room for `tokens` tokens before it has to grow.
    pub fn with_capacity(shape: KvShape, tokens: usize) -> Result<Self> {
        let layers = (0..shape.n_layers)
            .map(|_| {
                Ok(LayerKv {
                    k: zeros(shape, tokens)?,
                    v: zeros(shape, tokens)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            shape,
            len: 0,
            capacity: tokens,
            layers,
        })
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }

    /// Number of valid token positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `n` tokens (no-op when `n >= len()`); memory is kept.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// Bytes of memory held (allocated capacity, not only the valid tokens).
    pub fn bytes(&self) -> usize {
        self.shape.token_bytes() * self.capacity
    }

    /// A deep copy that shares no memory with `self`.
    pub fn try_clone(&self) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(LayerKv {
                    k: l.k.copy()?,
                    v: l.v.copy()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            shape: self.shape,
            len: self.len,
            capacity: self.capacity,
            layers,
        })
    }

    /// Copies tokens `start..start + n_tokens` out in the block layout (module docs).
    pub fn export_block(&self, start: usize, n_tokens: usize) -> Result<Vec<u8>> {
        let end = start.saturating_add(n_tokens);
        if end > self.len {
            return Err(EngineError::BlockRange {
                start,
                end,
                len: self.len,
            });
        }
        let mut out = Vec::with_capacity(self.shape.block_bytes(n_tokens));
        for layer in &self.layers {
            for t in [&layer.k, &layer.v] {
                self.export_rows(t, start, n_tokens, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Appends `n_tokens` tokens given in the block layout at position `len()`.
    pub fn append_block(&mut self, bytes: &[u8], n_tokens: usize) -> Result<()> {
        let expected = self.shape.block_bytes(n_tokens);
        if bytes.len() != expected {
            return Err(EngineError::BlockSize {
                n_tokens,
                expected,
                got: bytes.len(),
            });
        }
        self.reserve(self.len + n_tokens)?;
        let KvShape {
            n_kv_heads,
            head_dim,
            ..
        } = self.shape;
        let part_bytes = n_kv_heads * n_tokens * head_dim * F32_BYTES;
        let mut parts = bytes.chunks_exact(part_bytes.max(1));
        for i in 0..self.layers.len() {
            let k = part_tensor(parts.next(), self.shape, n_tokens)?;
            let v = part_tensor(parts.next(), self.shape, n_tokens)?;
            self.write(i, self.len, &k, &v)?;
        }
        self.len += n_tokens;
        Ok(())
    }

    /// Makes room for `total` tokens, doubling the capacity as needed.
    pub fn reserve(&mut self, total: usize) -> Result<()> {
        if total <= self.capacity {
            return Ok(());
        }
        let capacity = total.max(self.capacity * 2).max(MIN_CAPACITY);
        for layer in &mut self.layers {
            layer.k = grown(&layer.k, self.shape, capacity)?;
            layer.v = grown(&layer.v, self.shape, capacity)?;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Writes `k` and `v` (`[n_kv_heads, n, head_dim]`, contiguous) of `layer` at token
    /// position `pos`; the caller has reserved room and advances `len` afterwards.
    pub(crate) fn write(&mut self, layer: usize, pos: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let l = &self.layers[layer];
        l.k.slice_set(k, 1, pos)?;
        l.v.slice_set(v, 1, pos)?;
        Ok(())
    }

    /// Views of the first `n` token slots of `layer` (`[n_kv_heads, n, head_dim]`,
    /// strided: they share the cache's memory).
    pub(crate) fn view(&self, layer: usize, n: usize) -> Result<(Tensor, Tensor)> {
        let l = &self.layers[layer];
        Ok((l.k.narrow(1, 0, n)?, l.v.narrow(1, 0, n)?))
    }

    /// Marks `n` more token slots valid after a forward pass wrote them in every layer.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    fn export_rows(&self, t: &Tensor, start: usize, n: usize, out: &mut Vec<u8>) -> Result<()> {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Err(EngineError::Unsupported {
                what: "kv cache device",
                value: format!("{:?}", t.device().location()),
            });
        };
        let data = cpu.as_slice::<f32>()?;
        let hd = self.shape.head_dim;
        for h in 0..self.shape.n_kv_heads {
            let from = layout.start_offset() + (h * self.capacity + start) * hd;
            for x in &data[from..from + n * hd] {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        Ok(())
    }
}

fn zeros(shape: KvShape, tokens: usize) -> Result<Tensor> {
    let dims = (shape.n_kv_heads, tokens, shape.head_dim);
    Ok(Tensor::zeros(dims, DType::F32, &Device::Cpu)?)
}

fn grown(old: &Tensor, shape: KvShape, capacity: usize) -> Result<Tensor> {
    let new = zeros(shape, capacity)?;
    if old.dim(1)? > 0 {
        new.slice_set(old, 1, 0)?;
    }
    Ok(new)
}

fn part_tensor(bytes: Option<&[u8]>, shape: KvShape, n_tokens: usize) -> Result<Tensor> {
    let values: Vec<f32> = bytes
        .unwrap_or_default()
        .chunks_exact(F32_BYTES)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let dims = (shape.n_kv_heads, n_tokens, shape.head_dim);
    Ok(Tensor::from_vec(values, dims, &Device::Cpu)?)
}
