//! The error bounds the lossy codecs document, computed from the input alone.

use kvtier_format::{BlockShape, DType};

const P10: f64 = 1.0 / 1024.0;

/// Half an ulp of the output dtype around magnitude `mag`, subnormals included.
fn output_rounding(dtype: DType, mag: f64) -> f64 {
    match dtype {
        DType::F32 => 0.0,
        DType::F16 => mag / 2048.0 + 2f64.powi(-25),
        DType::BF16 => mag / 256.0 + 2f64.powi(-133),
    }
}

/// How a tensor is cut into quantization groups, for int8 (`group: None`) or int4.
#[derive(Clone, Copy)]
pub struct Affine {
    pub bits: u32,
    pub group: Option<usize>,
}

/// Where an element of a tensor falls: its group's index and the number of groups.
fn group_of(shape: &BlockShape, a: Affine, keys: bool, h: usize, t: usize, c: usize) -> usize {
    let (tokens, dim) = (shape.block_tokens as usize, shape.head_dim as usize);
    if keys {
        let g = a.group.unwrap_or(tokens).min(tokens);
        (h * tokens.div_ceil(g) + t / g) * dim + c
    } else {
        let g = a.group.unwrap_or(dim).min(dim);
        (h * tokens + t) * dim.div_ceil(g) + c / g
    }
}

/// The bound of `codec::affine` for one element.
pub fn affine_tolerance(a: Affine, dtype: DType, min: f64, max: f64, x: f64) -> f64 {
    let levels = f64::from((1u32 << a.bits) - 1);
    let r = max - min + P10 * min.abs() + 2f64.powi(-24);
    let step = if a.bits == 8 {
        r / levels * (1.0 + P10) + 2f64.powi(-24)
    } else {
        r / levels * (1.0 + P10) * 1.125 + 2f64.powi(-17)
    };
    let arithmetic = 2f64.powi(-20) * (min.abs() + max.abs() + levels * step);
    let err = step / 2.0 + arithmetic;
    err + output_rounding(dtype, x.abs() + err)
}

/// The bound of `codec::fp8` for one element of a tensor whose largest magnitude is `amax`.
pub fn fp8_tolerance(dtype: DType, amax: f64, x: f64) -> f64 {
    let scale = (amax / 448.0).max(f64::from(f32::MIN_POSITIVE));
    let err =
        (x.abs() / 16.0).max(scale / 1024.0) * (1.0 + 2f64.powi(-20)) + 2f64.powi(-22) * x.abs();
    err + output_rounding(dtype, x.abs() + err)
}

/// The worst `|error| / bound` over a block, and where it was (layer, tensor, index).
pub struct Worst {
    pub ratio: f64,
    pub at: (usize, usize, usize),
}

/// Compares decoded values against the int8/int4 bound, tensor by tensor.
pub fn affine_worst(shape: &BlockShape, a: Affine, input: &[f32], output: &[f32]) -> Worst {
    let (heads, tokens, dim) = (
        shape.n_kv_heads as usize,
        shape.block_tokens as usize,
        shape.head_dim as usize,
    );
    let n = heads * tokens * dim;
    let mut worst = Worst {
        ratio: 0.0,
        at: (0, 0, 0),
    };
    for (i, (x, y)) in input
        .chunks_exact(n)
        .zip(output.chunks_exact(n))
        .enumerate()
    {
        let keys = i % 2 == 0;
        let index = |e: usize| {
            group_of(
                shape,
                a,
                keys,
                e / (tokens * dim),
                e / dim % tokens,
                e % dim,
            )
        };
        let groups = (0..n).map(index).max().unwrap_or(0) + 1;
        let mut range = vec![(f64::INFINITY, f64::NEG_INFINITY); groups];
        for (e, &v) in x.iter().enumerate() {
            let r = &mut range[index(e)];
            *r = (r.0.min(f64::from(v)), r.1.max(f64::from(v)));
        }
        for (e, (&v, &d)) in x.iter().zip(y).enumerate() {
            let (min, max) = range[index(e)];
            let tol = affine_tolerance(a, shape.dtype, min, max, f64::from(v));
            let ratio = (f64::from(d) - f64::from(v)).abs() / tol;
            if ratio.is_nan() || ratio > worst.ratio {
                worst = Worst {
                    ratio,
                    at: (i / 2, i % 2, e),
                };
            }
        }
    }
    worst
}

/// Compares decoded values against the fp8 bound, tensor by tensor.
pub fn fp8_worst(shape: &BlockShape, input: &[f32], output: &[f32]) -> Worst {
    let n = shape.tensor_bytes() / shape.dtype.size();
    let mut worst = Worst {
        ratio: 0.0,
        at: (0, 0, 0),
    };
    for (i, (x, y)) in input
        .chunks_exact(n)
        .zip(output.chunks_exact(n))
        .enumerate()
    {
        let amax = x.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
        for (e, (&v, &d)) in x.iter().zip(y).enumerate() {
            let tol = fp8_tolerance(shape.dtype, amax, f64::from(v));
            let ratio = (f64::from(d) - f64::from(v)).abs() / tol;
            if ratio.is_nan() || ratio > worst.ratio {
                worst = Worst {
                    ratio,
                    at: (i / 2, i % 2, e),
                };
            }
        }
    }
    worst
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
