//! Rotary position embedding, interleaved (GGML "normal") form.
//!
//! Dimension pairs `(2i, 2i + 1)` of a head rotate by `pos * base^(-2i / head_dim)`.
//! Angles are tabulated once for every position of the context.

use candle_core::{Device, Tensor};

use super::config::ModelConfig;
use crate::error::Result;

pub(crate) struct Rope {
    /// `[context_length, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| (cfg.rope_base as f64).powf(-2.0 * i as f64 / cfg.head_dim as f64))
            .collect();
        let n = cfg.context_length;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for pos in 0..n {
            for f in &inv_freq {
                let angle = pos as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (n, half), &Device::Cpu)?,
            sin: Tensor::from_vec(sin, (n, half), &Device::Cpu)?,
        })
    }

    /// Rotates `x` (`[heads, n, head_dim]`, contiguous) holding positions `pos..pos + n`.
    pub fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let n = x.dim(1)?;
        let cos = self.cos.narrow(0, pos, n)?;
        let sin = self.sin.narrow(0, pos, n)?;
        let rotated = candle_nn::rotary_emb::rope_i(&x.unsqueeze(0)?, &cos, &sin)?;
        Ok(rotated.squeeze(0)?)
    }
}
