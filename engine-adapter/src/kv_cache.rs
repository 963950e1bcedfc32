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
//! - [`KvCache::set_compression`] turns on decode-time compression (off by default): tokens
//!   behind a recent window are held in a lossy codec (see [`compressed`]) and dequantized
//!   when attention reads them, so exported and attended values of those tokens are
//!   within the codec's error bound rather than exact. [`KvCache::bytes`] counts what is
//!   held, compressed groups included.
//!
//! A `KvCache` is not `Clone`: its tensors are written in place, so a shallow copy would
//! alias; [`KvCache::try_clone`] makes a deep copy.

pub mod compressed;

use candle_core::{DType, Device, Storage, Tensor};

pub use self::compressed::DecodeCompression;
use self::compressed::Groups;
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
///
/// Tokens `0..base` are held compressed in `groups` (none unless compression is on); the
/// f32 tensors hold tokens `base..base + capacity`, token `t` at row `t - base`.
pub struct KvCache {
    shape: KvShape,
    len: usize,
    capacity: usize,
    layers: Vec<LayerKv>,
    groups: Option<Groups>,
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
            groups: None,
        })
    }

    /// Turns decode-time compression on (`Some`) or off (`None`); only while the cache is
    /// empty. Compression happens when the cache next makes room for tokens.
    pub fn set_compression(&mut self, settings: Option<DecodeCompression>) -> Result<()> {
        if !self.is_empty() {
            return Err(EngineError::Unsupported {
                what: "changing compression of a non-empty cache",
                value: format!("{} tokens", self.len),
            });
        }
        self.groups = settings.map(|s| Groups::new(self.shape, s)).transpose()?;
        Ok(())
    }

    /// The decode-time compression in force, if any.
    pub fn compression(&self) -> Option<DecodeCompression> {
        self.groups.as_ref().map(Groups::settings)
    }

    /// Tokens held compressed (the oldest ones).
    pub fn compressed_len(&self) -> usize {
        self.base()
    }

    fn base(&self) -> usize {
        self.groups.as_ref().map_or(0, Groups::tokens)
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

    /// Keeps the first `n` tokens (no-op when `n >= len()`); memory is kept. Compressed
    /// tokens kept past the last whole group come back as their dequantized values.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.base() || self.groups.is_none() {
            self.len = self.len.min(n);
        } else if self.restore(n).is_err() {
            // Dequantizing a group the cache encoded itself does not fail; if it ever
            // did, dropping the whole group is still a valid (shorter) cache.
            let group = self.compression().map_or(1, |c| c.group);
            if let Some(groups) = &mut self.groups {
                groups.truncate(n / group);
            }
            self.len = self.base();
        }
    }

    /// Bytes of memory held: allocated f32 capacity plus compressed groups.
    pub fn bytes(&self) -> usize {
        self.shape.token_bytes() * self.capacity + self.groups.as_ref().map_or(0, Groups::bytes)
    }

    /// Bytes the valid tokens occupy as held: compressed groups plus f32 rows of the rest.
    /// Without compression, `len() * shape().token_bytes()`.
    pub fn held_bytes(&self) -> usize {
        let exact = (self.len - self.base()) * self.shape.token_bytes();
        exact + self.groups.as_ref().map_or(0, Groups::bytes)
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
            groups: self.groups.clone(),
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
        let base = self.base();
        for (i, layer) in self.layers.iter().enumerate() {
            if start >= base {
                for t in [&layer.k, &layer.v] {
                    self.export_rows(t, start - base, n_tokens, &mut out)?;
                }
                continue;
            }
            let (k, v) = self.view(i, end.max(base))?;
            for t in [k, v] {
                let part = t.narrow(1, start, n_tokens)?.flatten_all()?;
                for x in part.to_vec1::<f32>()? {
                    out.extend_from_slice(&x.to_le_bytes());
                }
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

    /// Makes room for `total` tokens, doubling the capacity as needed. With compression
    /// on, first compresses every group of tokens that has left the recent window.
    pub fn reserve(&mut self, total: usize) -> Result<()> {
        self.compress_old()?;
        let needed = total.saturating_sub(self.base());
        if needed <= self.capacity {
            return Ok(());
        }
        let floor = match self.compression() {
            Some(c) => c.window + 2 * c.group,
            None => MIN_CAPACITY,
        };
        let capacity = needed.max(self.capacity * 2).max(floor);
        self.resize(0, capacity)
    }

    /// Writes `k` and `v` (`[n_kv_heads, n, head_dim]`, contiguous) of `layer` at token
    /// position `pos`; the caller has reserved room and advances `len` afterwards.
    pub(crate) fn write(&mut self, layer: usize, pos: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let base = self.base();
        if pos < base {
            return Err(EngineError::BlockRange {
                start: pos,
                end: pos + k.dim(1)?,
                len: base,
            });
        }
        let l = &self.layers[layer];
        l.k.slice_set(k, 1, pos - base)?;
        l.v.slice_set(v, 1, pos - base)?;
        Ok(())
    }

    /// The first `n` token slots of `layer` (`[n_kv_heads, n, head_dim]`). Without
    /// compressed tokens these are strided views of the cache's memory; otherwise the
    /// compressed tokens are dequantized in front of a view of the rest.
    pub(crate) fn view(&self, layer: usize, n: usize) -> Result<(Tensor, Tensor)> {
        let l = &self.layers[layer];
        let base = self.base();
        let Some(groups) = self.groups.as_ref().filter(|_| base > 0) else {
            return Ok((l.k.narrow(1, 0, n)?, l.v.narrow(1, 0, n)?));
        };
        let (k, v) = groups.decode_layer(layer, 0, base / groups.settings().group)?;
        let dims = (self.shape.n_kv_heads, base, self.shape.head_dim);
        let old_k = Tensor::from_vec(k, dims, &Device::Cpu)?;
        let old_v = Tensor::from_vec(v, dims, &Device::Cpu)?;
        if n <= base {
            return Ok((old_k.narrow(1, 0, n)?, old_v.narrow(1, 0, n)?));
        }
        let k = Tensor::cat(&[&old_k, &l.k.narrow(1, 0, n - base)?], 1)?;
        let v = Tensor::cat(&[&old_v, &l.v.narrow(1, 0, n - base)?], 1)?;
        Ok((k, v))
    }

    /// Compresses each group of tokens that lies wholly behind the recent window, then
    /// moves the exact tokens left to the front of the f32 tensors.
    fn compress_old(&mut self) -> Result<()> {
        let Some(settings) = self.compression() else {
            return Ok(());
        };
        let base = self.base();
        let exact = self.len - base;
        let n_groups = exact.saturating_sub(settings.window) / settings.group;
        if n_groups == 0 {
            return Ok(());
        }
        let raws = (0..n_groups)
            .map(|g| self.export_block(base + g * settings.group, settings.group))
            .collect::<Result<Vec<_>>>()?;
        if let Some(groups) = &mut self.groups {
            let before = groups.tokens() / settings.group;
            if let Err(error) = raws.iter().try_for_each(|raw| groups.push(raw)) {
                groups.truncate(before);
                return Err(error);
            }
        }
        let moved = n_groups * settings.group;
        let keep = exact - moved;
        self.resize(
            moved,
            (keep + settings.group).max(settings.window + 2 * settings.group),
        )
    }

    /// Replaces the f32 tensors with ones of `capacity` rows holding rows `from..` of the
    /// valid exact tokens.
    fn resize(&mut self, from: usize, capacity: usize) -> Result<()> {
        let rows = (self.len.saturating_sub(self.base())).min(self.capacity.saturating_sub(from));
        let rows = rows.min(capacity);
        for layer in &mut self.layers {
            layer.k = moved(&layer.k, self.shape, from, rows, capacity)?;
            layer.v = moved(&layer.v, self.shape, from, rows, capacity)?;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Truncates to `n` tokens inside the compressed part: whole groups before `n` stay
    /// compressed, the tokens of the group `n` falls in are dequantized back to f32.
    fn restore(&mut self, n: usize) -> Result<()> {
        let Some(groups) = &mut self.groups else {
            return Ok(());
        };
        let group = groups.settings().group;
        let keep_groups = n / group;
        let tail = n - keep_groups * group;
        let mut rows = Vec::with_capacity(self.layers.len());
        for layer in 0..self.layers.len() {
            rows.push(groups.decode_layer(layer, keep_groups, keep_groups + 1)?);
        }
        groups.truncate(keep_groups);
        self.len = n;
        let capacity = self.capacity.max(group);
        let dims = (self.shape.n_kv_heads, group, self.shape.head_dim);
        for (layer, (k, v)) in self.layers.iter_mut().zip(rows) {
            layer.k = zeros(self.shape, capacity)?;
            layer.v = zeros(self.shape, capacity)?;
            let k = Tensor::from_vec(k, dims, &Device::Cpu)?.narrow(1, 0, tail)?;
            let v = Tensor::from_vec(v, dims, &Device::Cpu)?.narrow(1, 0, tail)?;
            layer.k.slice_set(&k.contiguous()?, 1, 0)?;
            layer.v.slice_set(&v.contiguous()?, 1, 0)?;
        }
        self.capacity = capacity;
        Ok(())
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

/// A tensor of `capacity` rows whose first `rows` are rows `from..from + rows` of `old`.
fn moved(
    old: &Tensor,
    shape: KvShape,
    from: usize,
    rows: usize,
    capacity: usize,
) -> Result<Tensor> {
    let new = zeros(shape, capacity)?;
    if rows > 0 {
        new.slice_set(&old.narrow(1, from, rows)?.contiguous()?, 1, 0)?;
    }
    Ok(new)
}

fn part_tensor(bytes: Option<&[u8]>, shape: KvShape, n_tokens: usize) -> Result<Tensor> {
    raw_tensor(bytes.unwrap_or_default(), shape, n_tokens)
}

/// K or V of `n_tokens` tokens in the block layout (`[kv_head][token][head_dim]`,
/// little-endian f32) as a tensor, in one copy: the layout is the host's own f32 layout on
/// the little-endian machines kvtier runs on.
pub(crate) fn raw_tensor(bytes: &[u8], shape: KvShape, n_tokens: usize) -> Result<Tensor> {
    let dims = [shape.n_kv_heads, n_tokens, shape.head_dim];
    Ok(Tensor::from_raw_buffer(
        bytes,
        DType::F32,
        &dims,
        &Device::Cpu,
    )?)
}
