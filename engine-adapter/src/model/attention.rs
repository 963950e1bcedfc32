//! Causal grouped-query attention over the cached keys and values.
//!
//! Query heads `j * group .. (j + 1) * group` share KV head `j`. The scores and the
//! weighted sum of values are two OpenBLAS products per KV head, reading K and V where the
//! cache holds them; the causal mask and the softmax are applied to the scores in place,
//! row by row, so no mask is ever built. A chunk of at most [`QUERY_BLOCK`] new tokens
//! stacks the queries of a head group into one product; a longer one is attended in
//! blocks of that many rows, each reading only the keys up to its last row, which skips
//! most of the work the mask would discard.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::blas::{self, with_f32, Operand};
use crate::error::{EngineError, Result};

/// Query rows attended in one block during a long prefill.
const QUERY_BLOCK: usize = 128;

/// Scores in one softmax call above which the rows are shared among the rayon threads.
const PARALLEL_SOFTMAX: usize = 1 << 16;

/// `q`: `[n_heads, n, head_dim]` after RoPE, for positions `pos .. pos + n`; `k`, `v`:
/// `[n_kv_heads, pos + n, head_dim]`, the `n` new keys last, rows contiguous. Returns
/// `[n, n_heads * head_dim]`.
pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, pos: usize) -> Result<Tensor> {
    let (n_heads, n, head_dim) = q.dims3()?;
    let (n_kv_heads, keys, _) = k.dims3()?;
    if keys != pos + n || n_kv_heads == 0 || n_heads % n_kv_heads != 0 || v.dims() != k.dims() {
        return Err(EngineError::Unsupported {
            what: "attention shapes",
            value: format!(
                "q {:?}, k {:?}, v {:?} at {pos}",
                q.dims(),
                k.dims(),
                v.dims()
            ),
        });
    }
    let q = q.contiguous()?;
    let shape = Shape {
        n_heads,
        group: n_heads / n_kv_heads,
        n,
        head_dim,
        pos,
    };
    let mut out = vec![0f32; n * n_heads * head_dim];
    with_f32(&q, |q, _| {
        with_f32(k, |k, k_strides| {
            with_f32(v, |v, v_strides| {
                let inputs = Inputs {
                    q,
                    k: Heads::new(k, k_strides, keys, head_dim)?,
                    v: Heads::new(v, v_strides, keys, head_dim)?,
                };
                (0..n_kv_heads).try_for_each(|j| shape.kv_head(j, &inputs, &mut out))
            })
        })
    })????;
    Ok(Tensor::from_vec(
        out,
        (n, n_heads * head_dim),
        &Device::Cpu,
    )?)
}

/// The dimensions one attention call works with.
struct Shape {
    n_heads: usize,
    group: usize,
    n: usize,
    head_dim: usize,
    pos: usize,
}

/// The queries (`[n_heads, n, head_dim]`, contiguous), keys and values of one call.
struct Inputs<'a> {
    q: &'a [f32],
    k: Heads<'a>,
    v: Heads<'a>,
}

/// The K or V heads of a layer as they lie in memory: `keys` rows of `head_dim` floats
/// per head, heads `head_stride` floats apart.
struct Heads<'a> {
    data: &'a [f32],
    head_stride: usize,
    keys: usize,
    head_dim: usize,
}

impl<'a> Heads<'a> {
    fn new(data: &'a [f32], strides: &[usize], keys: usize, head_dim: usize) -> Result<Self> {
        match strides {
            [head_stride, row, 1] if *row == head_dim || keys <= 1 => Ok(Heads {
                data,
                head_stride: *head_stride,
                keys,
                head_dim,
            }),
            _ => Err(EngineError::Unsupported {
                what: "kv layout",
                value: format!("strides {strides:?}"),
            }),
        }
    }

    /// The first `keys` rows of head `j`.
    fn head(&self, j: usize, keys: usize) -> Operand<'a> {
        let start = (j * self.head_stride).min(self.data.len());
        Operand::rows(&self.data[start..], keys.min(self.keys), self.head_dim)
    }
}

impl Shape {
    /// Attends the query heads of KV head `j`, writing their rows of `out`.
    fn kv_head(&self, j: usize, inputs: &Inputs<'_>, out: &mut [f32]) -> Result<()> {
        if self.n <= QUERY_BLOCK {
            return self.stacked(j, inputs, out);
        }
        for head in j * self.group..(j + 1) * self.group {
            for start in (0..self.n).step_by(QUERY_BLOCK) {
                let rows = QUERY_BLOCK.min(self.n - start);
                self.block(head, start..start + rows, inputs, out)?;
            }
        }
        Ok(())
    }

    /// All `n` queries of the group's heads in one product: rows `g * n + i`.
    fn stacked(&self, j: usize, inputs: &Inputs<'_>, out: &mut [f32]) -> Result<()> {
        let Inputs { q, k, v } = inputs;
        let (n, d, keys) = (self.n, self.head_dim, self.pos + self.n);
        let rows = self.group * n;
        let queries = Operand::rows(&q[j * rows * d..], rows, d);
        let probs = self.weights(queries, k.head(j, keys), |row| self.pos + row % n + 1)?;
        let mut weighted = vec![0f32; rows * d];
        let probs = Operand::rows(&probs, rows, keys);
        blas::sgemm(1.0, probs, v.head(j, keys), false, &mut weighted, d)?;
        let width = self.n_heads * d;
        for (row, values) in weighted.chunks_exact(d).enumerate() {
            let (g, i) = (row / n, row % n);
            let at = i * width + (j * self.group + g) * d;
            out[at..at + d].copy_from_slice(values);
        }
        Ok(())
    }

    /// Queries `queries` of one head, over the keys up to the last of them.
    fn block(
        &self,
        head: usize,
        queries: std::ops::Range<usize>,
        inputs: &Inputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let Inputs { q, k, v } = inputs;
        let (start, rows) = (queries.start, queries.len());
        let d = self.head_dim;
        let keys = self.pos + start + rows;
        let j = head / self.group;
        let queries = Operand::rows(&q[(head * self.n + start) * d..], rows, d);
        let probs = self.weights(queries, k.head(j, keys), |row| self.pos + start + row + 1)?;
        let probs = Operand::rows(&probs, rows, keys);
        let width = self.n_heads * d;
        let at = start * width + head * d;
        blas::sgemm(1.0, probs, v.head(j, keys), false, &mut out[at..], width)
    }

    /// The attention weights of `queries` over the rows of `keys`: scaled products, each
    /// row's softmax over its first `visible(row)` keys, zero after them.
    fn weights(
        &self,
        queries: Operand<'_>,
        keys: Operand<'_>,
        visible: impl Fn(usize) -> usize + Sync,
    ) -> Result<Vec<f32>> {
        let width = keys.rows;
        let mut scores = vec![0f32; queries.rows * width];
        blas::sgemm(self.scale(), queries, keys, true, &mut scores, width)?;
        softmax_causal(&mut scores, width, visible);
        Ok(scores)
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// Softmax of each row of `scores` (`width` floats a row) over its first `visible(row)`
/// entries; the entries after them (keys in the row's future) become zero.
fn softmax_causal(scores: &mut [f32], width: usize, visible: impl Fn(usize) -> usize + Sync) {
    let row = |(r, values): (usize, &mut [f32])| {
        let (seen, future) = values.split_at_mut(visible(r).min(width));
        future.fill(0.0);
        let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in seen.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        seen.iter_mut().for_each(|x| *x *= inv);
    };
    if scores.len() >= PARALLEL_SOFTMAX {
        scores.par_chunks_mut(width).enumerate().for_each(row);
    } else {
        scores.chunks_mut(width).enumerate().for_each(row);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// Attention as the textbook writes it, with repeated KV heads and a built mask.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, pos: usize) -> Tensor {
        let (n_heads, n, d) = q.dims3().unwrap();
        let (n_kv, t, _) = k.dims3().unwrap();
        let group = n_heads / n_kv;
        let repeat = |x: &Tensor| {
            let heads: Vec<Tensor> = (0..n_heads).map(|h| x.get(h / group).unwrap()).collect();
            Tensor::stack(&heads, 0).unwrap()
        };
        let (k, v) = (repeat(k), repeat(v));
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..t).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (n, t), &Device::Cpu).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let probs =
            candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
        probs
            .matmul(&v)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .reshape((n, n_heads * d))
            .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar().unwrap()
    }

    fn check(n: usize, pos: usize) {
        let (n_heads, n_kv_heads, head_dim) = (6, 2, 16);
        let rand = |dims: (usize, usize, usize)| Tensor::randn(0f32, 1.0, dims, &Device::Cpu);
        let q = rand((n_heads, n, head_dim)).unwrap();
        // K and V as the cache holds them: a view of the first rows of a larger buffer.
        let capacity = pos + n + 9;
        let k_all = rand((n_kv_heads, capacity, head_dim)).unwrap();
        let v_all = rand((n_kv_heads, capacity, head_dim)).unwrap();
        let k = k_all.narrow(1, 0, pos + n).unwrap();
        let v = v_all.narrow(1, 0, pos + n).unwrap();
        let got = attend(&q, &k, &v, pos).unwrap();
        let expected = reference(&q, &k.contiguous().unwrap(), &v.contiguous().unwrap(), pos);
        assert_eq!(got.dims(), &[n, n_heads * head_dim]);
        let diff = max_diff(&got, &expected);
        assert!(diff < 1e-4, "n {n} after {pos}: differs by {diff}");
    }

    #[test]
    fn one_query_attends_to_every_key() {
        check(1, 40);
    }

    #[test]
    fn a_short_chunk_attends_causally_after_a_cached_prefix() {
        check(7, 50);
        check(5, 0);
    }

    #[test]
    fn a_chunk_longer_than_a_query_block_equals_the_textbook_attention() {
        check(2 * QUERY_BLOCK + 7, 30);
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let q = Tensor::zeros((4, 3, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let k = Tensor::zeros((2, 5, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(
            attend(&q, &k, &k, 1).is_err(),
            "5 keys for 3 queries after 1"
        );
    }
}
