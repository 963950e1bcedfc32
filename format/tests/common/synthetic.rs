//! Synthetic KV that looks like a real model's: keys after RoPE with a few outlier
//! channels of large, consistent magnitude (why KIVI quantizes keys per channel), values
//! with per-token scale (and a strong first "sink" token).

use std::f32::consts::TAU;

use kvtier_format::BlockShape;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn normal(rng: &mut StdRng) -> f32 {
    let u: f32 = rng.random::<f32>().max(1e-7);
    let v: f32 = rng.random();
    (-2.0 * u.ln()).sqrt() * (TAU * v).cos()
}

/// Values in the block layout `[layer][K|V][kv_head][token][head_dim]`, for a block that
/// starts at token `position`.
pub fn kv_block(shape: &BlockShape, position: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (heads, tokens, dim) = (
        shape.n_kv_heads as usize,
        shape.block_tokens as usize,
        shape.head_dim as usize,
    );
    let mut out = Vec::with_capacity(shape.raw_bytes() / shape.dtype.size());
    for _layer in 0..shape.n_layers {
        for _head in 0..heads {
            keys(&mut rng, tokens, dim, position, &mut out);
        }
        for _head in 0..heads {
            values(&mut rng, tokens, dim, position, &mut out);
        }
    }
    out
}

fn keys(rng: &mut StdRng, tokens: usize, dim: usize, position: usize, out: &mut Vec<f32>) {
    let outliers = (dim / 16).max(1);
    let mut bias = vec![0f32; dim];
    let mut spread = vec![0f32; dim];
    for c in 0..dim {
        bias[c] = 0.5 * normal(rng);
        spread[c] = 0.6 + 0.4 * rng.random::<f32>();
    }
    for _ in 0..outliers {
        let c = rng.random_range(0..dim);
        bias[c] = if rng.random::<bool>() { 12.0 } else { -9.0 } + normal(rng);
        spread[c] *= 2.0;
    }
    let mut pre = vec![0f32; dim];
    for t in 0..tokens {
        for c in 0..dim {
            pre[c] = bias[c] + spread[c] * normal(rng);
        }
        let p = (position + t) as f32;
        for pair in 0..dim / 2 {
            let theta = p * 10000f32.powf(-2.0 * pair as f32 / dim as f32);
            let (sin, cos) = theta.sin_cos();
            let (a, b) = (pre[2 * pair], pre[2 * pair + 1]);
            pre[2 * pair] = a * cos - b * sin;
            pre[2 * pair + 1] = a * sin + b * cos;
        }
        out.extend_from_slice(&pre);
    }
}

fn values(rng: &mut StdRng, tokens: usize, dim: usize, position: usize, out: &mut Vec<f32>) {
    let channel: Vec<f32> = (0..dim).map(|_| 0.5 + rng.random::<f32>()).collect();
    for t in 0..tokens {
        let sink = if position + t == 0 { 6.0 } else { 1.0 };
        let scale = sink * (0.4 * normal(rng)).exp() * 0.3;
        out.extend(channel.iter().map(|&c| scale * c * normal(rng)));
    }
}
