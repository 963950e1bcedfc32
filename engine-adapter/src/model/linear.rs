//! `x @ w^T` for a weight `w` stored `[out, in]`, split across threads when it is a
//! matrix-vector product.
//!
//! A decode step multiplies one row by every weight matrix, so it streams all weights
//! from memory once per token. candle's gemm runs such a product on a single thread,
//! which leaves memory bandwidth unused; splitting the output rows between the rayon
//! threads reads the weights in parallel. The result is the same dot products, so it
//! matches the unsplit product bit for bit.

use candle_core::Tensor;

use crate::error::Result;

/// Fewest output rows per task: below this the split costs more than it saves.
const MIN_ROWS_PER_TASK: usize = 256;

/// `x` (`[n, in]`) times `w` (`[out, in]`) transposed: `[n, out]`.
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let out = w.dim(0)?;
    let tasks = rayon::current_num_threads().min(out / MIN_ROWS_PER_TASK);
    if x.dim(0)? != 1 || tasks < 2 {
        return Ok(x.matmul(&w.t()?)?);
    }
    let parts = split_rows(x, w, 0, out, tasks)?;
    Ok(Tensor::cat(&parts, 1)?)
}

/// Products of `x` with rows `start..start + len` of `w`, computed by `tasks` rayon tasks,
/// in row order.
fn split_rows(
    x: &Tensor,
    w: &Tensor,
    start: usize,
    len: usize,
    tasks: usize,
) -> Result<Vec<Tensor>> {
    if tasks <= 1 {
        return Ok(vec![x.matmul(&w.narrow(0, start, len)?.t()?)?]);
    }
    let left_tasks = tasks / 2;
    let left_len = len * left_tasks / tasks;
    let (left, right) = rayon::join(
        || split_rows(x, w, start, left_len, left_tasks),
        || split_rows(x, w, start + left_len, len - left_len, tasks - left_tasks),
    );
    let mut parts = left?;
    parts.extend(right?);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    #[test]
    fn split_product_equals_one_matmul() {
        let x = Tensor::randn(0f32, 1.0, (1, 96), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (1000, 96), &Device::Cpu).unwrap();
        let parts = split_rows(&x, &w, 0, 1000, 3).unwrap();
        assert_eq!(parts.len(), 3);
        let split: Vec<f32> = Tensor::cat(&parts, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let whole: Vec<f32> = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(split, whole);
        let via_linear: Vec<f32> = linear(&x, &w)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(via_linear, whole);
    }
}
