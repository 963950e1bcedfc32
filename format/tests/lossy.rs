//! Lossy codecs stay within their documented error bounds, on random data of every
//! magnitude and on synthetic KV with outlier key channels, and meet their size targets.

mod common;

use common::synthetic::kv_block;
use kvtier_format::codec::bounds::{relative_rms, worst};
use kvtier_format::{encode_block_with, BlockShape, BlockView, CodecSpec, DType};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FINGERPRINT: [u8; 32] = [0x3c; 32];

fn lossy_codecs() -> Vec<CodecSpec> {
    vec![
        CodecSpec::int8(),
        CodecSpec::int8().then_zstd(1),
        CodecSpec::fp8(),
        CodecSpec::fp8().then_zstd(1),
        CodecSpec::int4(32),
        CodecSpec::int4(32).then_zstd(1),
        CodecSpec::int4(7),
        CodecSpec::int4(128),
    ]
}

/// Encodes and decodes `values` (already representable in the dtype); returns the output.
fn round_trip(shape: &BlockShape, values: &[f32], codec: &CodecSpec) -> (Vec<f32>, usize) {
    let raw = common::to_raw(values, shape.dtype);
    let block = encode_block_with(&FINGERPRINT, shape, &raw, codec).unwrap();
    let view = BlockView::parse(&block).unwrap();
    view.verify_payload().unwrap();
    let decoded = view.decoded().unwrap();
    assert_eq!(decoded.len(), raw.len());
    (common::from_raw(&decoded, shape.dtype), block.len())
}

fn assert_within_bound(shape: &BlockShape, values: &[f32], codec: &CodecSpec) {
    let (output, _) = round_trip(shape, values, codec);
    let w = worst(codec, shape, values, &output);
    assert!(
        w.ratio <= 1.0,
        "{codec} {shape:?}: error {:.3} of the bound at {w:?}",
        w.ratio
    );
}

/// Random values: normal noise at magnitude 2^`exponent`, a per-channel offset, a few
/// channels 50 times larger, some exact zeros and repeated values; clamped to what f16
/// holds and rounded to the dtype.
fn random_values(shape: &BlockShape, seed: u64, exponent: i32) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let dim = shape.head_dim as usize;
    let n = shape.raw_bytes() / shape.dtype.size();
    let scale = 2f32.powi(exponent);
    let offsets: Vec<f32> = (0..dim)
        .map(|_| rng.random_range(-3.0..3.0) * scale)
        .collect();
    let loud: Vec<bool> = (0..dim).map(|_| rng.random_bool(0.08)).collect();
    let limit = if shape.dtype == DType::F16 {
        60000.0
    } else {
        3e6
    };
    let values: Vec<f32> = (0..n)
        .map(|i| {
            let c = i % dim;
            let roll: f32 = rng.random();
            let v = if roll < 0.03 {
                0.0
            } else if roll < 0.06 {
                offsets[c]
            } else {
                offsets[c] + rng.random_range(-1.0..1.0) * scale * if loud[c] { 50.0 } else { 1.0 }
            };
            v.clamp(-limit, limit)
        })
        .collect();
    common::from_raw(&common::to_raw(&values, shape.dtype), shape.dtype)
}

fn shape() -> impl Strategy<Value = BlockShape> {
    let dtype = prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)];
    (1u32..3, 1u32..4, 1u32..70, 1u32..70, dtype).prop_map(
        |(n_layers, n_kv_heads, block_tokens, head_dim, dtype)| BlockShape {
            n_layers,
            n_kv_heads,
            block_tokens,
            head_dim,
            dtype,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn lossy_codecs_stay_within_their_bounds_on_random_data(
        shape in shape(),
        seed in any::<u64>(),
        exponent in -12i32..16,
    ) {
        let values = random_values(&shape, seed, exponent);
        for codec in lossy_codecs() {
            assert_within_bound(&shape, &values, &codec);
        }
    }
}

#[test]
fn constant_and_zero_tensors_decode_exactly() {
    let shape = BlockShape {
        n_layers: 2,
        n_kv_heads: 2,
        block_tokens: 8,
        head_dim: 16,
        dtype: DType::F16,
    };
    let n = shape.raw_bytes() / 2;
    for value in [0.0f32, 1.5, -4.0] {
        for codec in lossy_codecs() {
            let (output, _) = round_trip(&shape, &vec![value; n], &codec);
            assert!(output.iter().all(|&v| v == value), "{codec} {value}");
        }
    }
}

#[test]
fn values_beyond_half_range_use_wide_scales_and_keep_the_bound() {
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let shape = BlockShape {
            n_layers: 1,
            n_kv_heads: 2,
            block_tokens: 33,
            head_dim: 24,
            dtype,
        };
        let exponent = if dtype == DType::F16 { 13 } else { 20 };
        let values = random_values(&shape, 99, exponent);
        for codec in lossy_codecs() {
            assert_within_bound(&shape, &values, &codec);
        }
    }
}

fn realistic_shapes() -> [(&'static str, BlockShape); 3] {
    let shape = |n_kv_heads, block_tokens, head_dim| BlockShape {
        n_layers: 4,
        n_kv_heads,
        block_tokens,
        head_dim,
        dtype: DType::F16,
    };
    [
        ("smollm2-135m, 64 tokens", shape(3, 64, 64)),
        ("8 heads x 128, 256 tokens", shape(8, 256, 128)),
        ("stories260k, 16 tokens", shape(4, 16, 8)),
    ]
}

#[test]
fn lossy_codecs_stay_within_their_bounds_on_synthetic_kv() {
    for (name, shape) in realistic_shapes() {
        for dtype in [DType::F16, DType::BF16, DType::F32] {
            let shape = BlockShape { dtype, ..shape };
            let values = kv_block(&shape, 4096, 5);
            let values = common::from_raw(&common::to_raw(&values, dtype), dtype);
            for codec in lossy_codecs() {
                let (output, _) = round_trip(&shape, &values, &codec);
                let w = worst(&codec, &shape, &values, &output);
                assert!(
                    w.ratio <= 1.0,
                    "{name} {dtype:?} {codec}: {:.3} at {w:?}",
                    w.ratio
                );
            }
        }
    }
}

#[test]
fn ratios_against_f16_meet_their_targets() {
    let codecs = [
        CodecSpec::NONE,
        CodecSpec::lz4(),
        CodecSpec::zstd(1),
        CodecSpec::zstd(1).shuffled(),
        CodecSpec::lz4().shuffled(),
        CodecSpec::int8(),
        CodecSpec::int8().then_zstd(1),
        CodecSpec::fp8(),
        CodecSpec::fp8().then_zstd(1),
        CodecSpec::int4(32),
        CodecSpec::int4(32).then_zstd(1),
        CodecSpec::int4(64),
    ];
    for (name, shape) in realistic_shapes() {
        let values = kv_block(&shape, 4096, 17);
        let values = common::from_raw(&common::to_raw(&values, shape.dtype), shape.dtype);
        println!("{name} ({shape:?}): ratio vs f16 / relative RMS error");
        for codec in &codecs {
            let (output, len) = round_trip(&shape, &values, codec);
            let ratio = common::f16_bytes(&shape) as f64 / len as f64;
            let rms = relative_rms(&values, &output);
            println!("  {:<16} {ratio:6.3}x  {rms:.2e}", codec.to_string());
            let big_enough = shape.head_dim >= 64 && shape.block_tokens >= 64;
            if big_enough && *codec == CodecSpec::int8() {
                assert!(ratio >= 1.85, "{name}: int8 {ratio}");
            }
            if big_enough && *codec == CodecSpec::int4(32) {
                assert!(ratio >= 3.2, "{name}: int4:32 {ratio}");
            }
        }
    }
}

#[test]
fn per_channel_keys_beat_outliers() {
    // A key channel 100 times louder than the rest must not cost the rest its precision:
    // each channel has its own step.
    let shape = BlockShape {
        n_layers: 1,
        n_kv_heads: 1,
        block_tokens: 64,
        head_dim: 64,
        dtype: DType::F32,
    };
    let n = shape.raw_bytes() / 4;
    let mut rng = StdRng::seed_from_u64(3);
    let values: Vec<f32> = (0..n)
        .map(|i| {
            let loud = i % 64 == 5;
            rng.random_range(-1.0..1.0) * if loud { 100.0 } else { 1.0 }
        })
        .collect();
    let (output, _) = round_trip(&shape, &values, &CodecSpec::int8());
    let quiet_keys = (0..n / 2).filter(|i| i % 64 != 5);
    let max_err = quiet_keys
        .map(|i| (output[i] - values[i]).abs())
        .fold(0f32, f32::max);
    assert!(
        max_err <= 2.0 / 255.0 / 2.0 * 1.01,
        "quiet key error {max_err}"
    );
}
