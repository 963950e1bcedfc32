//! Linear layers: `x @ w^T` for a checkpoint weight `w` of shape `[out, in]`, computed by
//! the system's OpenBLAS.
//!
//! The weight products are nearly all of a forward pass, and the work kvtier leaves has
//! few rows: a decode step, or the few tokens of a new user message after a cached
//! prefix. candle's own CPU product reaches 40-60 GFLOP/s on those shapes on the
//! reference two-core machine; OpenBLAS's reaches 80-150 and streams a single row (a
//! decode step) at memory speed, so a layer's four products go through it. The weight is
//! held transposed, `[in, out]` row-major, once at load time, and a single row is a
//! matrix-vector product.

use candle_core::{Device, Storage, Tensor};

use crate::error::{EngineError, Result};

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
        let mut out = vec![0f32; rows * self.outputs];
        with_f32(&x, |xs| self.product(rows, xs, &mut out))?;
        Ok(Tensor::from_vec(out, (rows, self.outputs), &Device::Cpu)?)
    }

    /// `out = x @ wt` for `rows` rows of `x`.
    fn product(&self, rows: usize, x: &[f32], out: &mut [f32]) {
        let (k, n) = (self.inputs, self.outputs);
        assert!(x.len() >= rows * k && out.len() >= rows * n && self.wt.len() == k * n);
        let (m, k, n) = (blas_int(rows), blas_int(k), blas_int(n));
        if rows == 1 {
            // SAFETY: `wt` holds k * n floats (row stride n), `x` at least k and `out` at
            // least n, as asserted above; OpenBLAS reads and writes only those.
            unsafe {
                cblas_sys::cblas_sgemv(
                    cblas_sys::CblasRowMajor,
                    cblas_sys::CblasTrans,
                    k,
                    n,
                    1.0,
                    self.wt.as_ptr(),
                    n,
                    x.as_ptr(),
                    1,
                    0.0,
                    out.as_mut_ptr(),
                    1,
                );
            }
            return;
        }
        // SAFETY: `x` holds rows * k floats (row stride k), `wt` k * n (stride n) and
        // `out` rows * n (stride n), as asserted above; OpenBLAS reads and writes only
        // those.
        unsafe {
            cblas_sys::cblas_sgemm(
                cblas_sys::CblasRowMajor,
                cblas_sys::CblasNoTrans,
                cblas_sys::CblasNoTrans,
                m,
                n,
                k,
                1.0,
                x.as_ptr(),
                k,
                self.wt.as_ptr(),
                n,
                0.0,
                out.as_mut_ptr(),
                n,
            );
        }
    }
}

/// A dimension as BLAS takes it. Model dimensions are far below `i32::MAX`.
fn blas_int(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Runs `f` on the floats of a contiguous f32 CPU tensor.
fn with_f32<T>(x: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(EngineError::Unsupported {
            what: "linear input device",
            value: "not the CPU".into(),
        });
    };
    let values = cpu.as_slice::<f32>()?;
    let start = layout.start_offset();
    let end = start + layout.shape().elem_count();
    Ok(f(&values[start..end]))
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
