//! Loading the decoder's weights from GGUF tensors, dequantized to f32.
//!
//! Projections that read the same input are fused at load time (Q, K and V into one
//! matrix; gate and up into another), so each layer runs four matrix products. Linear
//! weights are held transposed (see [`Linear`]). GGUF files of the llama architecture
//! store Q and K rows permuted for interleaved RoPE, which is what `rope_i` expects.

use candle_core::Tensor;

use super::config::ModelConfig;
use super::linear::Linear;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

pub(crate) struct LayerWeights {
    pub attn_norm: Tensor,
    /// Rows: Q (`n_heads * head_dim`), then K and V (`n_kv_heads * head_dim` each).
    pub wqkv: Linear,
    pub wo: Linear,
    pub ffn_norm: Tensor,
    /// Rows: gate (`ffn_hidden`), then up (`ffn_hidden`).
    pub w_gate_up: Linear,
    pub w_down: Linear,
}

pub(crate) struct Weights {
    /// `[vocab, hidden]`.
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Tensor,
    /// The output projection; a transposed copy of the embedding when the file ties them.
    pub lm_head: Linear,
}

impl Weights {
    pub fn load(gguf: &mut GgufFile, cfg: &ModelConfig) -> Result<Self> {
        let embed = load(gguf, "token_embd.weight", &[cfg.vocab_size, cfg.hidden])?;
        let lm_head = if gguf.has_tensor("output.weight") {
            Linear::new(&load(gguf, "output.weight", &[cfg.vocab_size, cfg.hidden])?)?
        } else {
            Linear::new(&embed)?
        };
        let layers = (0..cfg.n_layers)
            .map(|i| load_layer(gguf, cfg, i))
            .collect::<Result<_>>()?;
        Ok(Self {
            embed,
            layers,
            output_norm: load(gguf, "output_norm.weight", &[cfg.hidden])?,
            lm_head,
        })
    }
}

fn load_layer(gguf: &mut GgufFile, cfg: &ModelConfig, i: usize) -> Result<LayerWeights> {
    let d = cfg.hidden;
    let q_dim = cfg.n_heads * cfg.head_dim;
    let kv_dim = cfg.n_kv_heads * cfg.head_dim;
    let f = cfg.ffn_hidden;
    let mut get = |name: &str, dims: &[usize]| load(gguf, &format!("blk.{i}.{name}"), dims);

    let wq = get("attn_q.weight", &[q_dim, d])?;
    let wk = get("attn_k.weight", &[kv_dim, d])?;
    let wv = get("attn_v.weight", &[kv_dim, d])?;
    let gate = get("ffn_gate.weight", &[f, d])?;
    let up = get("ffn_up.weight", &[f, d])?;
    Ok(LayerWeights {
        attn_norm: get("attn_norm.weight", &[d])?,
        wqkv: Linear::new(&Tensor::cat(&[&wq, &wk, &wv], 0)?)?,
        wo: Linear::new(&get("attn_output.weight", &[d, q_dim])?)?,
        ffn_norm: get("ffn_norm.weight", &[d])?,
        w_gate_up: Linear::new(&Tensor::cat(&[&gate, &up], 0)?)?,
        w_down: Linear::new(&get("ffn_down.weight", &[d, f])?)?,
    })
}

fn load(gguf: &mut GgufFile, name: &str, dims: &[usize]) -> Result<Tensor> {
    let t = gguf.tensor_f32(name)?;
    if t.dims() != dims {
        return Err(EngineError::TensorShape {
            name: name.into(),
            expected: dims.to_vec(),
            got: t.dims().to_vec(),
        });
    }
    Ok(t)
}
