//! Shared by the integration tests: synthetic KV, element conversion, and a
//! decoder workout that must never panic.
#![allow(dead_code)]

pub mod synthetic;

use half::{bf16, f16};
use kvtier_format::{BlockShape, BlockView, DType};

/// Element values as the block's dtype stores them (rounded to nearest).
pub fn to_raw(values: &[f32], dtype: DType) -> Vec<u8> {
    let mut raw = Vec::with_capacity(values.len() * dtype.size());
    for &v in values {
        match dtype {
            DType::F32 => raw.extend_from_slice(&v.to_le_bytes()),
            DType::F16 => raw.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
            DType::BF16 => raw.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
        }
    }
    raw
}

pub fn from_raw(raw: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => raw
            .chunks_exact(4)
            .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect(),
        DType::F16 => raw
            .chunks_exact(2)
            .map(|p| f16::from_le_bytes([p[0], p[1]]).to_f32())
            .collect(),
        DType::BF16 => raw
            .chunks_exact(2)
            .map(|p| bf16::from_le_bytes([p[0], p[1]]).to_f32())
            .collect(),
    }
}

/// Size of the same KV in f16, the baseline ratios are reported against.
pub fn f16_bytes(shape: &BlockShape) -> usize {
    shape.raw_bytes() / shape.dtype.size() * 2
}

/// Parses and decodes `bytes` every way a reader can; only a panic fails.
pub fn exercise(bytes: &[u8]) {
    let Ok(view) = BlockView::parse(bytes) else {
        return;
    };
    let _ = view.verify_payload();
    if let Ok(raw) = view.decoded() {
        assert_eq!(raw.len(), view.shape.raw_bytes());
    }
    let layer_bytes = view.shape.layer_bytes();
    if layer_bytes <= 1 << 22 {
        let mut out = vec![0u8; layer_bytes];
        for layer in 0..(view.shape.n_layers as usize).min(8) {
            let _ = view.decode_layer(layer, &mut out);
        }
    }
}
