//! The parts of one decoder layer that a forward pass (`batch.rs`) puts together:
//! attention of projected tokens over their cache, and the SwiGLU MLP. A layer is pre-norm
//! attention and pre-norm SwiGLU, each with a residual add.

use candle_core::Tensor;
use candle_nn::ops::silu;

use super::attention::attend;
use super::config::ModelConfig;
use super::rope::Rope;
use super::weights::LayerWeights;
use crate::error::Result;
use crate::kv_cache::KvCache;

/// What every layer of one forward step shares.
pub(crate) struct Step<'a> {
    pub cfg: &'a ModelConfig,
    pub rope: &'a Rope,
    /// Position of the first new token (the cache length before the step).
    pub pos: usize,
}

impl LayerWeights {
    /// Attention of new tokens whose Q, K and V projections are `qkv` (`[n, q + 2 kv]`),
    /// at `step.pos` of `cache`: writes their K and V, returns `[n, n_heads * head_dim]`.
    pub(super) fn attend_projected(
        &self,
        index: usize,
        qkv: &Tensor,
        step: &Step<'_>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (q, k, v) = split_heads(qkv, step.cfg)?;
        let q = step.rope.apply(&q, step.pos)?;
        let k = step.rope.apply(&k, step.pos)?;

        let n = qkv.dim(0)?;
        cache.write(index, step.pos, &k, &v)?;
        let (k_all, v_all) = cache.view(index, step.pos + n)?;
        attend(&q, &k_all, &v_all, step.pos)
    }

    pub(super) fn mlp(&self, h: &Tensor, ffn_hidden: usize) -> Result<Tensor> {
        let gate_up = self.w_gate_up.forward(h)?;
        let gate = silu(&gate_up.narrow(1, 0, ffn_hidden)?)?;
        let up = gate_up.narrow(1, ffn_hidden, ffn_hidden)?;
        self.w_down.forward(&(gate * up)?)
    }
}

/// Q, K and V of `qkv` (`[n, q + 2 kv]`), each as contiguous `[heads, n, head_dim]`.
fn split_heads(qkv: &Tensor, cfg: &ModelConfig) -> Result<(Tensor, Tensor, Tensor)> {
    let q_dim = cfg.n_heads * cfg.head_dim;
    let kv_dim = cfg.n_kv_heads * cfg.head_dim;
    let q = heads_first(&qkv.narrow(1, 0, q_dim)?, cfg.n_heads, cfg.head_dim)?;
    let k = heads_first(&qkv.narrow(1, q_dim, kv_dim)?, cfg.n_kv_heads, cfg.head_dim)?;
    let v = heads_first(
        &qkv.narrow(1, q_dim + kv_dim, kv_dim)?,
        cfg.n_kv_heads,
        cfg.head_dim,
    )?;
    Ok((q, k, v))
}

/// `[n, heads * head_dim]` to contiguous `[heads, n, head_dim]`.
fn heads_first(x: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let n = x.dim(0)?;
    Ok(x.reshape((n, heads, head_dim))?
        .transpose(0, 1)?
        .contiguous()?)
}
