//! Conversion between a tensor's little-endian element bytes and f32, in runs.
//!
//! f16 goes through half's slice conversions (F16C when the CPU has it), straight on the
//! bytes when they are aligned; bf16 widens by a shift and narrows with round-to-nearest-
//! even; f32 is a copy.

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};

use crate::DType;

/// A converter holding the scratch a run of f16 needs when the bytes are not aligned.
pub(crate) struct Elements {
    dtype: DType,
    halves: Vec<f16>,
}

impl Elements {
    pub(crate) fn new(dtype: DType) -> Self {
        Elements {
            dtype,
            halves: Vec::new(),
        }
    }

    /// Reads `dst.len()` elements from `src` (exactly `dst.len()` elements long).
    pub(crate) fn load(&mut self, src: &[u8], dst: &mut [f32]) {
        debug_assert_eq!(src.len(), dst.len() * self.dtype.size());
        match self.dtype {
            DType::F32 => {
                for (value, word) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *value = f32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                }
            }
            DType::F16 => match as_u16s(src) {
                Some(bits) => bits.reinterpret_cast::<f16>().convert_to_f32_slice(dst),
                None => {
                    self.halves.clear();
                    self.halves.extend(
                        src.chunks_exact(2)
                            .map(|pair| f16::from_le_bytes([pair[0], pair[1]])),
                    );
                    self.halves.convert_to_f32_slice(dst);
                }
            },
            DType::BF16 => {
                for (value, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    let bits = u16::from_le_bytes([pair[0], pair[1]]);
                    *value = f32::from_bits(u32::from(bits) << 16);
                }
            }
        }
    }

    /// Writes `src` as elements into `dst` (exactly `src.len()` elements long), rounding to
    /// nearest, ties to even.
    pub(crate) fn store(&mut self, src: &[f32], dst: &mut [u8]) {
        debug_assert_eq!(dst.len(), src.len() * self.dtype.size());
        match self.dtype {
            DType::F32 => match as_f32s_mut(dst) {
                Some(words) => words.copy_from_slice(src),
                None => {
                    for (word, value) in dst.chunks_exact_mut(4).zip(src) {
                        put_bytes(word, &value.to_le_bytes());
                    }
                }
            },
            DType::F16 => match as_u16s_mut(dst) {
                Some(bits) => bits
                    .reinterpret_cast_mut::<f16>()
                    .convert_from_f32_slice(src),
                None => {
                    self.halves.clear();
                    self.halves.resize(src.len(), f16::ZERO);
                    self.halves.convert_from_f32_slice(src);
                    for (pair, half) in dst.chunks_exact_mut(2).zip(&self.halves) {
                        put_bytes(pair, &half.to_le_bytes());
                    }
                }
            },
            DType::BF16 => {
                for (pair, &value) in dst.chunks_exact_mut(2).zip(src) {
                    put_bytes(pair, &bf16::from_f32(value).to_le_bytes());
                }
            }
        }
    }
}

/// Byte by byte: a `copy_from_slice` of two or four bytes becomes a `memmove` call when
/// this crate is built with little optimization.
fn put_bytes(dst: &mut [u8], src: &[u8]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s;
    }
}

/// `bytes` as u16 words when they are aligned for it and the machine is little-endian.
fn as_u16s(bytes: &[u8]) -> Option<&[u16]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every bit pattern is a valid u16, and `align_to` only yields a middle part
    // that is correctly aligned for u16.
    let (head, words, tail) = unsafe { bytes.align_to::<u16>() };
    (head.is_empty() && tail.is_empty()).then_some(words)
}

fn as_u16s_mut(bytes: &mut [u8]) -> Option<&mut [u16]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every bit pattern is a valid u16 and every u16 a valid pair of bytes, and
    // `align_to_mut` only yields a middle part that is correctly aligned for u16.
    let (head, words, tail) = unsafe { bytes.align_to_mut::<u16>() };
    (head.is_empty() && tail.is_empty()).then_some(words)
}

fn as_f32s_mut(bytes: &mut [u8]) -> Option<&mut [f32]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every bit pattern is a valid f32 and every f32 four valid bytes, and
    // `align_to_mut` only yields a middle part that is correctly aligned for f32.
    let (head, words, tail) = unsafe { bytes.align_to_mut::<f32>() };
    (head.is_empty() && tail.is_empty()).then_some(words)
}

/// The largest magnitude among the elements of `raw`, or `None` when one is NaN or
/// infinite.
pub(crate) fn max_abs(dtype: DType, raw: &[u8]) -> Option<f32> {
    const RUN: usize = 4096;
    let mut elements = Elements::new(dtype);
    let mut run = [0f32; RUN];
    let mut max = 0f32;
    for chunk in raw.chunks(RUN * dtype.size()) {
        let run = &mut run[..chunk.len() / dtype.size()];
        elements.load(chunk, run);
        for &v in run.iter() {
            if !v.is_finite() {
                return None;
            }
            max = max.max(v.abs());
        }
    }
    Some(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_round_trips_representable_values() {
        let values = [0.0f32, -0.0, 1.5, -2.25, 1024.0, 0.0078125, -32768.0];
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let mut elements = Elements::new(dtype);
            let mut bytes = vec![0u8; values.len() * dtype.size()];
            elements.store(&values, &mut bytes);
            let mut back = vec![0f32; values.len()];
            elements.load(&bytes, &mut back);
            assert_eq!(back, values, "{dtype:?}");
        }
    }

    #[test]
    fn narrowing_rounds_to_nearest() {
        let mut elements = Elements::new(DType::F16);
        let mut bytes = [0u8; 2];
        elements.store(&[1.0 + 1.0 / 1024.0 + 1e-6], &mut bytes);
        assert_eq!(f16::from_le_bytes(bytes).to_f32(), 1.0 + 1.0 / 1024.0);
    }
}
