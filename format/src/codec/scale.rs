//! How the offset and step of an asymmetric quantization group are stored.
//!
//! The encoder rounds the offset down and the step up to what storage holds, then
//! quantizes against the stored values, so the bound "error at most half a step" holds for
//! the step a reader sees. Narrow storage (f16 offsets) applies when every value of the
//! block lies within [`NARROW_LIMIT`]; wider blocks store both in f32.

use half::f16;

/// Largest magnitude for which narrow (f16) offsets and steps are used.
pub(crate) const NARROW_LIMIT: f32 = 32768.0;

/// The storage of one group's offset and step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScaleFormat {
    /// f16 offset, f16 step.
    Half,
    /// f16 offset, step as the top 8 bits of a positive f16 (5 exponent, 3 mantissa bits),
    /// so within 12.5% above the step needed.
    HalfCoarse,
    /// f32 offset, f32 step.
    Wide,
}

impl ScaleFormat {
    pub(crate) fn offset_bytes(self) -> usize {
        match self {
            ScaleFormat::Half | ScaleFormat::HalfCoarse => 2,
            ScaleFormat::Wide => 4,
        }
    }

    pub(crate) fn step_bytes(self) -> usize {
        match self {
            ScaleFormat::Half => 2,
            ScaleFormat::HalfCoarse => 1,
            ScaleFormat::Wide => 4,
        }
    }

    /// The stored offset and step for values in `[min, max]` quantized to `levels + 1`
    /// codes, as the decoder will read them back: `offset <= min` and
    /// `offset + levels * step >= max`.
    pub(crate) fn fit(self, min: f32, max: f32, levels: u32) -> (f32, f32) {
        let offset = match self {
            ScaleFormat::Half | ScaleFormat::HalfCoarse => f16_floor(min).to_f32(),
            ScaleFormat::Wide => min,
        };
        let needed = (f64::from(max) - f64::from(offset)) / f64::from(levels);
        let step = match self {
            ScaleFormat::Half => f16_ceil(needed).to_f32(),
            ScaleFormat::HalfCoarse => coarse_to_f32(coarse_ceil(needed)),
            ScaleFormat::Wide => f32_ceil(needed),
        };
        (offset, step)
    }

    /// Appends the stored form of an offset returned by [`ScaleFormat::fit`].
    pub(crate) fn put_offset(self, offset: f32, out: &mut Vec<u8>) {
        match self {
            ScaleFormat::Half | ScaleFormat::HalfCoarse => {
                out.extend_from_slice(&f16::from_f32(offset).to_le_bytes())
            }
            ScaleFormat::Wide => out.extend_from_slice(&offset.to_le_bytes()),
        }
    }

    /// Appends the stored form of a step returned by [`ScaleFormat::fit`].
    pub(crate) fn put_step(self, step: f32, out: &mut Vec<u8>) {
        match self {
            ScaleFormat::Half => out.extend_from_slice(&f16::from_f32(step).to_le_bytes()),
            ScaleFormat::HalfCoarse => out.push(coarse_ceil(f64::from(step))),
            ScaleFormat::Wide => out.extend_from_slice(&step.to_le_bytes()),
        }
    }

    /// Reads `out.len()` offsets.
    pub(crate) fn read_offsets(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            ScaleFormat::Half | ScaleFormat::HalfCoarse => read_f16s(bytes, out),
            ScaleFormat::Wide => read_f32s(bytes, out),
        }
    }

    /// Reads `out.len()` steps.
    pub(crate) fn read_steps(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            ScaleFormat::Half => read_f16s(bytes, out),
            ScaleFormat::HalfCoarse => {
                for (step, &code) in out.iter_mut().zip(bytes) {
                    *step = coarse_to_f32(code);
                }
            }
            ScaleFormat::Wide => read_f32s(bytes, out),
        }
    }
}

fn read_f16s(bytes: &[u8], out: &mut [f32]) {
    for (value, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *value = f16::from_le_bytes([pair[0], pair[1]]).to_f32();
    }
}

fn read_f32s(bytes: &[u8], out: &mut [f32]) {
    for (value, word) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *value = f32::from_le_bytes([word[0], word[1], word[2], word[3]]);
    }
}

/// The largest f16 not above `x`, for `|x| <= NARROW_LIMIT`.
fn f16_floor(x: f32) -> f16 {
    let near = f16::from_f32(x);
    if near.to_f32() <= x {
        return near;
    }
    let bits = near.to_bits();
    let below = match bits {
        0x0000 | 0x8000 => 0x8001,
        b if b & 0x8000 == 0 => b - 1,
        b => b + 1,
    };
    f16::from_bits(below)
}

/// The smallest f16 not below `x`, for `0 <= x <= 65504`.
fn f16_ceil(x: f64) -> f16 {
    let near = f16::from_f64(x);
    if near.to_f64() >= x {
        near
    } else {
        f16::from_bits(near.to_bits() + 1)
    }
}

/// The smallest coarse step (top 8 bits of an f16) not below `x`, for `0 <= x <= 61440`.
fn coarse_ceil(x: f64) -> u8 {
    let bits = f16_ceil(x).to_bits();
    let code = bits >> 7;
    let code = if bits & 0x7f == 0 { code } else { code + 1 };
    code as u8
}

fn coarse_to_f32(code: u8) -> f32 {
    f16::from_bits(u16::from(code) << 7).to_f32()
}

/// The smallest f32 not below `x`, for finite `x >= 0`.
fn f32_ceil(x: f64) -> f32 {
    let near = x as f32;
    if f64::from(near) >= x {
        near
    } else {
        f32::from_bits(near.to_bits() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitted_offset_and_step_cover_the_range() {
        let cases = [
            (-3.1f32, 7.9f32),
            (100.01, 100.02),
            (-32768.0, 32768.0),
            (5.0, 5.0),
            (1e-7, 2e-7),
            (-0.0, 0.0),
        ];
        for format in [
            ScaleFormat::Half,
            ScaleFormat::HalfCoarse,
            ScaleFormat::Wide,
        ] {
            for levels in [15, 255] {
                for (min, max) in cases {
                    let (offset, step) = format.fit(min, max, levels);
                    assert!(offset <= min, "{format:?} {min}");
                    let top = f64::from(offset) + f64::from(levels) * f64::from(step);
                    assert!(top >= f64::from(max), "{format:?} {min}..{max}");
                }
            }
        }
    }

    #[test]
    fn stored_scales_read_back_exactly() {
        for format in [
            ScaleFormat::Half,
            ScaleFormat::HalfCoarse,
            ScaleFormat::Wide,
        ] {
            let (offset, step) = format.fit(-1.234, 9.87, 15);
            let mut offsets = Vec::new();
            let mut steps = Vec::new();
            format.put_offset(offset, &mut offsets);
            format.put_step(step, &mut steps);
            let (mut o, mut s) = ([0f32], [0f32]);
            format.read_offsets(&offsets, &mut o);
            format.read_steps(&steps, &mut s);
            assert_eq!((o[0], s[0]), (offset, step), "{format:?}");
        }
    }

    #[test]
    fn coarse_step_is_within_an_eighth_above_the_need() {
        for need in [1e-3, 0.37, 1.0, 2.9, 700.0] {
            let step = f64::from(coarse_to_f32(coarse_ceil(need)));
            assert!(step >= need && step <= need * 1.126, "{need} -> {step}");
        }
    }
}
