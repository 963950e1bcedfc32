//! The model's calls into the system OpenBLAS, behind checked wrappers, and read access to
//! the floats of a CPU tensor for them.
//!
//! Matrices are row-major slices with a row stride; a wrapper refuses operands too short
//! for the shape it is asked to compute, so the unsafe calls below never read or write
//! past a slice.

use candle_core::{Storage, Tensor};

use crate::error::{EngineError, Result};

/// A row-major matrix operand: `rows` rows of `cols` floats, `stride` floats apart.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl<'a> Operand<'a> {
    /// `rows` rows of `cols` floats, one after the other at the start of `data`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Operand {
            data,
            rows,
            cols,
            stride: cols,
        }
    }

    /// Floats the matrix spans.
    fn span(&self) -> usize {
        match self.rows {
            0 => 0,
            rows => (rows - 1) * self.stride + self.cols,
        }
    }

    fn check(&self, what: &'static str) -> Result<()> {
        if self.cols > self.stride.max(1) || self.data.len() < self.span() {
            return Err(EngineError::Unsupported {
                what,
                value: format!(
                    "{} x {} (stride {}) in {} floats",
                    self.rows,
                    self.cols,
                    self.stride,
                    self.data.len()
                ),
            });
        }
        Ok(())
    }
}

/// `c = alpha * a @ b` where `b` is `a.cols` x `c_cols` or, with `b_transposed`, holds
/// the transpose (`c_cols` x `a.cols`). `c` is `a.rows` x `c_cols`, rows `ldc` apart.
pub(crate) fn sgemm(
    alpha: f32,
    a: Operand<'_>,
    b: Operand<'_>,
    b_transposed: bool,
    c: &mut [f32],
    ldc: usize,
) -> Result<()> {
    let (m, k) = (a.rows, a.cols);
    let n = if b_transposed { b.rows } else { b.cols };
    let inner = if b_transposed { b.cols } else { b.rows };
    let out = Operand {
        data: c,
        rows: m,
        cols: n,
        stride: ldc,
    };
    a.check("matrix product operand")?;
    b.check("matrix product operand")?;
    out.check("matrix product output")?;
    if inner != k {
        return Err(EngineError::Unsupported {
            what: "matrix product shapes",
            value: format!("{m} x {k} times {inner} x {n}"),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let trans_b = if b_transposed {
        cblas_sys::CblasTrans
    } else {
        cblas_sys::CblasNoTrans
    };
    // SAFETY: every operand was checked above to hold the rows and columns the call reads
    // or writes at its stride, so OpenBLAS stays inside the three slices; `c` is borrowed
    // mutably and the inputs shared, so they do not overlap.
    unsafe {
        cblas_sys::cblas_sgemm(
            cblas_sys::CblasRowMajor,
            cblas_sys::CblasNoTrans,
            trans_b,
            dim(m),
            dim(n),
            dim(k),
            alpha,
            a.data.as_ptr(),
            dim(a.stride),
            b.data.as_ptr(),
            dim(b.stride),
            0.0,
            c.as_mut_ptr(),
            dim(ldc),
        );
    }
    Ok(())
}

/// `y = x @ w` for one row `x` (`w.rows` floats) and `w` of `w.cols` columns.
pub(crate) fn sgemv(x: &[f32], w: Operand<'_>, y: &mut [f32]) -> Result<()> {
    w.check("matrix-vector operand")?;
    if x.len() < w.rows || y.len() < w.cols {
        return Err(EngineError::Unsupported {
            what: "matrix-vector shapes",
            value: format!(
                "{} and {} floats for {} x {}",
                x.len(),
                y.len(),
                w.rows,
                w.cols
            ),
        });
    }
    if w.rows == 0 || w.cols == 0 {
        return Ok(());
    }
    // SAFETY: `w` was checked to hold its rows at its stride, `x` and `y` to hold the
    // floats the product reads and writes; `y` is borrowed mutably, the others shared.
    unsafe {
        cblas_sys::cblas_sgemv(
            cblas_sys::CblasRowMajor,
            cblas_sys::CblasTrans,
            dim(w.rows),
            dim(w.cols),
            1.0,
            w.data.as_ptr(),
            dim(w.stride),
            x.as_ptr(),
            1,
            0.0,
            y.as_mut_ptr(),
            1,
        );
    }
    Ok(())
}

/// A dimension as BLAS takes it. Model dimensions are far below `i32::MAX`.
fn dim(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Runs `f` on the floats of an f32 CPU tensor, from its first element on, with the
/// tensor's strides (in floats).
pub(crate) fn with_f32<T>(x: &Tensor, f: impl FnOnce(&[f32], &[usize]) -> T) -> Result<T> {
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(EngineError::Unsupported {
            what: "tensor device",
            value: "not the CPU".into(),
        });
    };
    let values = cpu.as_slice::<f32>()?;
    let start = layout.start_offset();
    let values = values.get(start..).ok_or(EngineError::Unsupported {
        what: "tensor layout",
        value: format!("offset {start} past {} floats", values.len()),
    })?;
    Ok(f(values, layout.stride()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgemm_with_and_without_a_transposed_right_side() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2 x 3
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]; // 3 x 2
        let mut c = [0.0; 4];
        sgemm(
            1.0,
            Operand::rows(&a, 2, 3),
            Operand::rows(&b, 3, 2),
            false,
            &mut c,
            2,
        )
        .unwrap();
        assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
        let bt = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]; // the same b, as 2 x 3 transposed
        sgemm(
            2.0,
            Operand::rows(&a, 2, 3),
            Operand::rows(&bt, 2, 3),
            true,
            &mut c,
            2,
        )
        .unwrap();
        assert_eq!(c, [8.0, 10.0, 20.0, 22.0]);
    }

    #[test]
    fn operands_too_short_for_their_shape_are_refused() {
        let a = [1.0; 5];
        let b = [1.0; 6];
        let mut c = [0.0; 4];
        assert!(sgemm(
            1.0,
            Operand::rows(&a, 2, 3),
            Operand::rows(&b, 3, 2),
            false,
            &mut c,
            2
        )
        .is_err());
        let a = [1.0; 6];
        assert!(sgemm(
            1.0,
            Operand::rows(&a, 2, 3),
            Operand::rows(&b, 2, 3),
            false,
            &mut c,
            2
        )
        .is_err());
        assert!(sgemv(&[1.0; 2], Operand::rows(&b, 3, 2), &mut c).is_err());
    }
}
