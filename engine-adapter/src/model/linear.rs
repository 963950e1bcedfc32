//! Linear layers: `x @ w^T` for a checkpoint weight `w` of shape `[out, in]`, computed by
//! the system's OpenBLAS.
//!
//! The weight products are nearly all of a forward pass, and the work kvtier leaves has
//! few rows: a decode step, or the few tokens of a new user message after a cached
//! prefix. candle's own CPU product reaches 40-60 GFLOP/s on those shapes on the
//! reference two-core machine; OpenBLAS's reaches 80-150 and streams a single row (a
//! decode step) at memory speed, so a layer's four products go through it. The weight is
//! held transposed, `[in, out]` row-major, once at load time, and a single row is a
//! matrix-vector product. Several rows are padded with zero rows to a multiple of
//! [`ROW_MULTIPLE`]: OpenBLAS computes the rows past one with slower edge kernels
//! (measured with Debian's 0.3.21 on the reference machine, a 576 x 3072 product: 4 rows
//! 0.90 ms, 16 rows 0.67 ms, 28 rows 1.86 ms, 32 rows 1.06 ms).

use candle_core::{Device, Tensor};

use super::blas::{self, with_f32, Operand};
use crate::error::{EngineError, Result};

/// Products of several rows are computed on a multiple of this many.
const ROW_MULTIPLE: usize = 16;
/// Products of up to this many rows are a matrix-vector product a row: two of those
/// stream the weights twice, and still beat one padded product.
const GEMV_ROWS: usize = 2;

/// A weight held as `[in, out]`, ready to be the right-hand side of a product.
pub(crate) struct Linear {
    /// `in * out` floats, row `i` holding the weights that input `i` contributes.
    wt: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Linear {
    /// From a checkpoint weight `w` of shape `[out, in]`.
    pub fn new(w: &Tensor) -> Result<Self> {
        let (outputs, inputs) = w.dims2()?;
        let wt = w.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Linear {
            wt,
            inputs,
            outputs,
        })
    }

    /// `x` (`[n, in]`, f32) times the weight: `[n, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, inputs) = x.dims2()?;
        if inputs != self.inputs {
            return Err(EngineError::Unsupported {
                what: "linear input width",
                value: format!("{inputs}, the weight takes {}", self.inputs),
            });
        }
        let x = x.contiguous()?;
        let computed = match rows {
            0..=GEMV_ROWS => rows,
            _ => rows.next_multiple_of(ROW_MULTIPLE),
        };
        let mut out = vec![0f32; computed * self.outputs];
        with_f32(&x, |xs, _| {
            let xs = &xs[..(rows * inputs).min(xs.len())];
            if computed == rows {
                return self.product(rows, xs, &mut out);
            }
            let mut padded = vec![0f32; computed * inputs];
            padded[..xs.len()].copy_from_slice(xs);
            self.product(computed, &padded, &mut out)
        })??;
        // The rows asked for come first; the padding rows' products are dropped.
        out.truncate(rows * self.outputs);
        Ok(Tensor::from_vec(out, (rows, self.outputs), &Device::Cpu)?)
    }

    /// `out = x @ wt` for `rows` rows of `x`.
    fn product(&self, rows: usize, x: &[f32], out: &mut [f32]) -> Result<()> {
        let w = Operand::rows(&self.wt, self.inputs, self.outputs);
        if rows <= GEMV_ROWS {
            let rows = x.chunks(self.inputs).zip(out.chunks_mut(self.outputs));
            return rows
                .take(GEMV_ROWS)
                .try_for_each(|(x, y)| blas::sgemv(x, w, y));
        }
        let x = Operand::rows(x, rows, self.inputs);
        blas::sgemm(1.0, x, w, false, out, self.outputs)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn worst_difference(got: &[f32], expected: &[f32]) -> f32 {
        assert_eq!(got.len(), expected.len());
        got.iter()
            .zip(expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn forward_computes_x_times_w_transposed() {
        for rows in [1, 2, 5, 64] {
            let x = Tensor::randn(0f32, 1.0, (rows, 32), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (48, 32), &Device::Cpu).unwrap();
            let expected = flat(&x.matmul(&w.t().unwrap()).unwrap());
            let got = flat(&Linear::new(&w).unwrap().forward(&x).unwrap());
            let worst = worst_difference(&got, &expected);
            assert!(worst < 1e-4, "{rows} rows: worst difference {worst}");
        }
    }

    #[test]
    fn a_row_taken_out_of_a_wider_tensor_is_read_where_it_lies() {
        let x = Tensor::randn(0f32, 1.0, (4, 16), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (8, 16), &Device::Cpu).unwrap();
        let linear = Linear::new(&w).unwrap();
        let row = x.narrow(0, 2, 1).unwrap();
        let expected = flat(&row.matmul(&w.t().unwrap()).unwrap());
        let got = flat(&linear.forward(&row).unwrap());
        assert!(worst_difference(&got, &expected) < 1e-4);
    }

    #[test]
    fn an_input_of_the_wrong_width_is_refused() {
        let w = Tensor::randn(0f32, 1.0, (8, 16), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 15), &Device::Cpu).unwrap();
        assert!(Linear::new(&w).unwrap().forward(&x).is_err());
    }
}
