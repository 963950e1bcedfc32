//! Byte shuffle: element `i`'s byte `b` moves to plane `b`, position `i`, so a 16-bit
//! float layer becomes all its low bytes followed by all its high bytes (sign and
//! exponent), which an entropy coder finds far more regular. f32 splits into four planes.

use super::LayerTransform;
use crate::{BlockShape, FormatError};

pub(crate) struct Shuffle;

impl LayerTransform for Shuffle {
    fn encoded_len(&self, shape: &BlockShape) -> usize {
        shape.layer_bytes()
    }

    fn encode(&self, shape: &BlockShape, raw: &[u8], out: &mut Vec<u8>) -> Result<(), FormatError> {
        let width = shape.dtype.size();
        let start = out.len();
        out.resize(start + raw.len(), 0);
        let planes = &mut out[start..];
        let n = raw.len() / width;
        if width == 2 {
            let (low, high) = planes.split_at_mut(n);
            for ((pair, lo), hi) in raw.chunks_exact(2).zip(low).zip(high) {
                *lo = pair[0];
                *hi = pair[1];
            }
        } else {
            for (i, element) in raw.chunks_exact(width).enumerate() {
                for (b, &byte) in element.iter().enumerate() {
                    planes[b * n + i] = byte;
                }
            }
        }
        Ok(())
    }

    fn decode(&self, shape: &BlockShape, encoded: &[u8], raw: &mut [u8]) {
        let width = shape.dtype.size();
        let n = raw.len() / width;
        if width == 2 {
            let (low, high) = encoded.split_at(n);
            for ((pair, &lo), &hi) in raw.chunks_exact_mut(2).zip(low).zip(high) {
                pair[0] = lo;
                pair[1] = hi;
            }
        } else {
            for (i, element) in raw.chunks_exact_mut(width).enumerate() {
                for (b, byte) in element.iter_mut().enumerate() {
                    *byte = encoded[b * n + i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn halves_split_into_low_then_high_planes() {
        let shape = BlockShape {
            n_layers: 1,
            n_kv_heads: 1,
            block_tokens: 1,
            head_dim: 2,
            dtype: DType::F16,
        };
        let raw = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut planes = Vec::new();
        Shuffle.encode(&shape, &raw, &mut planes).unwrap();
        assert_eq!(planes, [1, 3, 5, 7, 2, 4, 6, 8]);
        let mut back = [0u8; 8];
        Shuffle.decode(&shape, &planes, &mut back);
        assert_eq!(back, raw);
    }
}
