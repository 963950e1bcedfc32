//! Linear layers: `x @ w^T` for a checkpoint weight `w` of shape `[out, in]`.
//!
//! [`Linear::new`] stores the weight transposed, `[in, out]` and contiguous, once at load
//! time. candle's CPU product is several times slower on a strided (transposed) right-hand
//! side when the left one has few rows, which is exactly the shape of the work kvtier
//! leaves: a decode step, or the few tokens of a new user message after a cached prefix.
//!
//! A product with a single row (a decode step, the LM head of a prefill) runs on one
//! thread in candle's gemm and leaves memory bandwidth unused; it is split into column
//! ranges computed by the rayon threads, which are the same dot products, so the result
//! matches the unsplit product bit for bit.

use candle_core::Tensor;

use crate::error::Result;

/// Fewest output columns per task: below this the split costs more than it saves.
const MIN_COLUMNS_PER_TASK: usize = 4096;

/// A weight held as `[in, out]`, ready to be the right-hand side of a product.
pub(crate) struct Linear {
    wt: Tensor,
}

impl Linear {
    /// From a checkpoint weight `w` of shape `[out, in]`.
    pub fn new(w: &Tensor) -> Result<Self> {
        Ok(Linear {
            wt: w.t()?.contiguous()?,
        })
    }

    /// `x` (`[n, in]`) times the weight: `[n, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.wt.dim(1)?;
        let tasks = rayon::current_num_threads().min(out / MIN_COLUMNS_PER_TASK);
        if x.dim(0)? != 1 || tasks < 2 {
            return Ok(x.matmul(&self.wt)?);
        }
        let parts = self.split_columns(x, 0, out, tasks)?;
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// Products of `x` with columns `start..start + len`, by `tasks` rayon tasks, in order.
    fn split_columns(
        &self,
        x: &Tensor,
        start: usize,
        len: usize,
        tasks: usize,
    ) -> Result<Vec<Tensor>> {
        if tasks <= 1 {
            return Ok(vec![x.matmul(&self.wt.narrow(1, start, len)?)?]);
        }
        let left_tasks = tasks / 2;
        let left_len = len * left_tasks / tasks;
        let (left, right) = rayon::join(
            || self.split_columns(x, start, left_len, left_tasks),
            || self.split_columns(x, start + left_len, len - left_len, tasks - left_tasks),
        );
        let mut parts = left?;
        parts.extend(right?);
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn split_product_equals_one_matmul() {
        let x = Tensor::randn(0f32, 1.0, (1, 96), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (10_000, 96), &Device::Cpu).unwrap();
        let linear = Linear::new(&w).unwrap();
        let parts = linear.split_columns(&x, 0, 10_000, 3).unwrap();
        assert_eq!(parts.len(), 3);
        let whole = x.matmul(&linear.wt).unwrap();
        assert_eq!(flat(&Tensor::cat(&parts, 1).unwrap()), flat(&whole));
        assert_eq!(flat(&linear.forward(&x).unwrap()), flat(&whole));
    }

    #[test]
    fn forward_computes_x_times_w_transposed() {
        let x = Tensor::randn(0f32, 1.0, (5, 32), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (48, 32), &Device::Cpu).unwrap();
        let expected = flat(&x.matmul(&w.t().unwrap()).unwrap());
        let got = flat(&Linear::new(&w).unwrap().forward(&x).unwrap());
        assert_eq!(got.len(), expected.len());
        let worst = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-4, "worst difference {worst}");
    }
}
