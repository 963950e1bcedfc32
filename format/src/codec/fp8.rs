//! FP8 E4M3 (the "fn" variant: no infinities, largest finite 448) with one f32 scale per
//! K or V tensor of a layer, `scale = max|x| / 448`, so each layer decodes on its own.
//!
//! Layer layout: for K then V, the scale (f32) followed by one code per element in the
//! tensor's order.
//!
//! Error bound, for every element `x` of a tensor with scale `s`: the code rounds `x / s`
//! to nearest (ties to even), so `|decoded - x| <= max(2^-4 * |x|, 2^-10 * s)` (three
//! mantissa bits for normal codes, a 2^-9 quantum below 2^-6), plus f32 arithmetic
//! (relative 2^-22) and the rounding of the result to the block's dtype (half an ulp).

use super::elements::Elements;
use super::LayerTransform;
use crate::{BlockShape, FormatError};

pub(crate) struct Fp8;

/// Largest finite E4M3 value.
const MAX: f32 = 448.0;
/// Elements converted per run when decoding.
const RUN: usize = 1024;

static DECODE: [f32; 256] = decode_table();

const fn decode_table() -> [f32; 256] {
    let mut table = [0f32; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = e4m3_value(code as u8);
        code += 1;
    }
    table
}

const fn e4m3_value(code: u8) -> f32 {
    let exponent = (code >> 3) & 0x0f;
    let mantissa = code & 0x07;
    let magnitude = if code & 0x7f == 0x7f {
        f32::NAN
    } else if exponent == 0 {
        mantissa as f32 / 512.0
    } else {
        f32::from_bits(((exponent as u32 + 120) << 23) | ((mantissa as u32) << 20))
    };
    if code & 0x80 == 0 {
        magnitude
    } else {
        -magnitude
    }
}

/// The nearest E4M3 code to a finite `v`, ties to even, saturating at +-448.
fn e4m3_code(v: f32) -> u8 {
    let sign = ((v.to_bits() >> 24) & 0x80) as u8;
    let a = v.abs().min(MAX);
    let magnitude = if a < 1.0 / 64.0 {
        // Adding and removing 2^23 rounds to an integer, ties to even, in the FPU.
        const SHIFTER: f32 = 8_388_608.0;
        ((a * 512.0 + SHIFTER) - SHIFTER) as u8
    } else {
        let bits = a.to_bits();
        let rounded = bits + 0x7ffff + ((bits >> 20) & 1);
        ((rounded >> 20) - (120 << 3)) as u8
    };
    sign | magnitude
}

fn tensor_scale(values: &[f32]) -> f32 {
    let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let needed = f64::from(amax) / f64::from(MAX);
    let scale = needed as f32;
    let scale = if f64::from(scale) < needed {
        f32::from_bits(scale.to_bits() + 1)
    } else {
        scale
    };
    scale.max(f32::MIN_POSITIVE)
}

impl LayerTransform for Fp8 {
    fn encoded_len(&self, shape: &BlockShape) -> usize {
        2 * (4 + shape.tensor_bytes() / shape.dtype.size())
    }

    fn encode(&self, shape: &BlockShape, raw: &[u8], out: &mut Vec<u8>) -> Result<(), FormatError> {
        let mut elements = Elements::new(shape.dtype);
        let mut values = vec![0f32; shape.tensor_bytes() / shape.dtype.size()];
        for tensor in raw.chunks_exact(shape.tensor_bytes()) {
            elements.load(tensor, &mut values);
            let scale = tensor_scale(&values);
            let inverse = 1.0 / scale;
            out.extend_from_slice(&scale.to_le_bytes());
            out.extend(values.iter().map(|&v| e4m3_code(v * inverse)));
        }
        Ok(())
    }

    fn decode(&self, shape: &BlockShape, encoded: &[u8], raw: &mut [u8]) {
        let mut elements = Elements::new(shape.dtype);
        let mut run = [0f32; RUN];
        let width = shape.dtype.size();
        let (k_enc, v_enc) = encoded.split_at(encoded.len() / 2);
        let (k_raw, v_raw) = raw.split_at_mut(raw.len() / 2);
        for (enc, tensor) in [(k_enc, k_raw), (v_enc, v_raw)] {
            let (scale, codes) = enc.split_at(4);
            let scale = f32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]);
            for (chunk, out) in codes.chunks(RUN).zip(tensor.chunks_mut(RUN * width)) {
                let run = &mut run[..chunk.len()];
                for (value, &code) in run.iter_mut().zip(chunk) {
                    *value = DECODE[usize::from(code)] * scale;
                }
                elements.store(run, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nearest_code_by_search(v: f32) -> u8 {
        let a = v.abs().min(MAX);
        let mut best = 0u8;
        for code in 1..=0x7eu8 {
            let d = (DECODE[usize::from(code)] - a).abs();
            let b = (DECODE[usize::from(best)] - a).abs();
            if d < b || (d == b && code & 1 == 0) {
                best = code;
            }
        }
        best
    }

    #[test]
    fn table_matches_the_e4m3_definition() {
        assert_eq!(DECODE[0x7e], 448.0);
        assert_eq!(DECODE[0x08], 1.0 / 64.0);
        assert_eq!(DECODE[0x01], 1.0 / 512.0);
        assert_eq!(DECODE[0x38], 1.0);
        assert_eq!(DECODE[0xb8], -1.0);
        assert!(DECODE[0x7f].is_nan() && DECODE[0xff].is_nan());
    }

    #[test]
    fn every_code_decodes_to_itself() {
        for code in (0..=255u8).filter(|c| c & 0x7f != 0x7f) {
            assert_eq!(e4m3_code(DECODE[usize::from(code)]), code, "{code:#04x}");
        }
    }

    #[test]
    fn encoding_picks_the_nearest_code() {
        let mut v = 1e-4f32;
        while v < 600.0 {
            for x in [v, -v, v * 1.0001, v * 0.9999] {
                assert_eq!(e4m3_code(x) & 0x7f, nearest_code_by_search(x), "{x}");
            }
            v *= 1.0137;
        }
    }
}
