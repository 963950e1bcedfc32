//! The error bounds the codecs promise, computed from the input alone, so that anyone
//! holding a block's raw values and its decoded values can check the codec kept its word.
//!
//! Lossless codecs promise equality. [`super::affine`] (int8, int4) and [`super::fp8`]
//! state their per-element bounds; [`worst`] evaluates them element by element and returns
//! the largest `|decoded - input| / bound` over a block, so a result at most 1 means every
//! element is within its bound. Values are given as f32 in the block layout
//! `[layer][K|V][kv_head][token][head_dim]`, already rounded to the block's dtype.

use super::{CodecSpec, Transform};
use crate::{BlockShape, DType};

const P10: f64 = 1.0 / 1024.0;

/// The element whose error came closest to (or furthest past) its bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Worst {
    /// `|decoded - input| / bound`; at most 1 when the codec kept its bound. For a
    /// lossless codec, 0 when every bit matches and infinity otherwise.
    pub ratio: f64,
    pub layer: usize,
    /// 0 for K, 1 for V.
    pub tensor: usize,
    /// Element index within the tensor, `(kv_head * block_tokens + token) * head_dim + c`.
    pub index: usize,
}

impl Worst {
    const NONE: Worst = Worst {
        ratio: 0.0,
        layer: 0,
        tensor: 0,
        index: 0,
    };

    fn note(&mut self, ratio: f64, tensor: usize, index: usize) {
        if ratio.is_nan() || ratio > self.ratio {
            *self = Worst {
                ratio,
                layer: tensor / 2,
                tensor: tensor % 2,
                index,
            };
        }
    }
}

/// The worst error of `output` against `input` under `codec`'s bound. Both slices hold
/// every element of a block of `shape`.
///
/// # Panics
///
/// When either slice is not exactly the block's element count.
pub fn worst(codec: &CodecSpec, shape: &BlockShape, input: &[f32], output: &[f32]) -> Worst {
    let n = shape.raw_bytes() / shape.dtype.size();
    assert!(
        input.len() == n && output.len() == n,
        "slices are not one block"
    );
    match codec.transform {
        Transform::None | Transform::Shuffle => exact_worst(shape, input, output),
        Transform::Int8 => affine_worst(shape, 8, None, input, output),
        Transform::Int4 { group } => affine_worst(shape, 4, Some(group.into()), input, output),
        Transform::Fp8 => fp8_worst(shape, input, output),
    }
}

/// Root-mean-square error relative to the root-mean-square of the input.
pub fn relative_rms(input: &[f32], output: &[f32]) -> f64 {
    let (mut err, mut sig) = (0f64, 0f64);
    for (&x, &y) in input.iter().zip(output) {
        err += (f64::from(y) - f64::from(x)).powi(2);
        sig += f64::from(x).powi(2);
    }
    (err / sig.max(f64::MIN_POSITIVE)).sqrt()
}

fn tensor_len(shape: &BlockShape) -> usize {
    shape.tensor_bytes() / shape.dtype.size()
}

fn exact_worst(shape: &BlockShape, input: &[f32], output: &[f32]) -> Worst {
    let n = tensor_len(shape);
    let mut worst = Worst::NONE;
    let differs = input
        .iter()
        .zip(output)
        .position(|(x, y)| x.to_bits() != y.to_bits());
    if let Some(e) = differs {
        worst.note(f64::INFINITY, e / n, e % n);
    }
    worst
}

/// Half an ulp of the output dtype around magnitude `mag`, subnormals included.
fn output_rounding(dtype: DType, mag: f64) -> f64 {
    match dtype {
        DType::F32 => 0.0,
        DType::F16 => mag / 2048.0 + 2f64.powi(-25),
        DType::BF16 => mag / 256.0 + 2f64.powi(-133),
    }
}

/// The int8/int4 bound of one element of a group spanning `[min, max]`.
fn affine_tolerance(bits: u32, dtype: DType, min: f64, max: f64, x: f64) -> f64 {
    let levels = f64::from((1u32 << bits) - 1);
    let r = max - min + P10 * min.abs() + 2f64.powi(-24);
    let step = if bits == 8 {
        r / levels * (1.0 + P10) + 2f64.powi(-24)
    } else {
        r / levels * (1.0 + P10) * 1.125 + 2f64.powi(-17)
    };
    let arithmetic = 2f64.powi(-20) * (min.abs() + max.abs() + levels * step);
    let err = step / 2.0 + arithmetic;
    err + output_rounding(dtype, x.abs() + err)
}

/// The fp8 bound of one element of a tensor whose largest magnitude is `amax`.
fn fp8_tolerance(dtype: DType, amax: f64, x: f64) -> f64 {
    let scale = (amax / 448.0).max(f64::from(f32::MIN_POSITIVE));
    let err =
        (x.abs() / 16.0).max(scale / 1024.0) * (1.0 + 2f64.powi(-20)) + 2f64.powi(-22) * x.abs();
    err + output_rounding(dtype, x.abs() + err)
}

/// The quantization group of element `e` of a K (`keys`) or V tensor, numbered from 0.
fn group_of(shape: &BlockShape, group: Option<usize>, keys: bool, e: usize) -> usize {
    let (tokens, dim) = (shape.block_tokens as usize, shape.head_dim as usize);
    let (h, t, c) = (e / (tokens * dim), e / dim % tokens, e % dim);
    if keys {
        let g = group.unwrap_or(tokens).clamp(1, tokens);
        (h * tokens.div_ceil(g) + t / g) * dim + c
    } else {
        let g = group.unwrap_or(dim).clamp(1, dim);
        (h * tokens + t) * dim.div_ceil(g) + c / g
    }
}

fn affine_worst(
    shape: &BlockShape,
    bits: u32,
    group: Option<usize>,
    input: &[f32],
    output: &[f32],
) -> Worst {
    let n = tensor_len(shape);
    let mut worst = Worst::NONE;
    for (i, (x, y)) in input
        .chunks_exact(n)
        .zip(output.chunks_exact(n))
        .enumerate()
    {
        let keys = i % 2 == 0;
        let groups = group_of(shape, group, keys, n - 1) + 1;
        let mut range = vec![(f64::INFINITY, f64::NEG_INFINITY); groups];
        for (e, &v) in x.iter().enumerate() {
            let r = &mut range[group_of(shape, group, keys, e)];
            *r = (r.0.min(f64::from(v)), r.1.max(f64::from(v)));
        }
        for (e, (&v, &d)) in x.iter().zip(y).enumerate() {
            let (min, max) = range[group_of(shape, group, keys, e)];
            let tol = affine_tolerance(bits, shape.dtype, min, max, f64::from(v));
            worst.note((f64::from(d) - f64::from(v)).abs() / tol, i, e);
        }
    }
    worst
}

fn fp8_worst(shape: &BlockShape, input: &[f32], output: &[f32]) -> Worst {
    let n = tensor_len(shape);
    let mut worst = Worst::NONE;
    for (i, (x, y)) in input
        .chunks_exact(n)
        .zip(output.chunks_exact(n))
        .enumerate()
    {
        let amax = x.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
        for (e, (&v, &d)) in x.iter().zip(y).enumerate() {
            let tol = fp8_tolerance(shape.dtype, amax, f64::from(v));
            worst.note((f64::from(d) - f64::from(v)).abs() / tol, i, e);
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> BlockShape {
        BlockShape {
            n_layers: 2,
            n_kv_heads: 1,
            block_tokens: 4,
            head_dim: 2,
            dtype: DType::F32,
        }
    }

    #[test]
    fn lossless_codecs_allow_no_difference() {
        let input = vec![1.0f32; 32];
        let mut output = input.clone();
        assert_eq!(
            worst(&CodecSpec::lz4(), &shape(), &input, &output).ratio,
            0.0
        );
        output[21] = 1.0 + f32::EPSILON;
        let w = worst(&CodecSpec::lz4(), &shape(), &input, &output);
        assert_eq!(
            (w.ratio, w.layer, w.tensor, w.index),
            (f64::INFINITY, 1, 0, 5)
        );
    }

    #[test]
    fn an_error_past_half_a_step_breaks_the_int8_bound() {
        // Keys of channel 0 span 0..=255, so an int8 step is about 1.
        let mut input = vec![0f32; 32];
        for t in 0..4 {
            input[2 * t] = [0.0, 85.0, 170.0, 255.0][t];
        }
        let mut output = input.clone();
        output[2] += 0.45;
        assert!(worst(&CodecSpec::int8(), &shape(), &input, &output).ratio <= 1.0);
        output[2] += 0.2;
        assert!(worst(&CodecSpec::int8(), &shape(), &input, &output).ratio > 1.0);
    }
}
