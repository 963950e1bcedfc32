//! Lossless codecs give back every byte, whatever the bytes and the shape.

mod common;

use std::borrow::Cow;

use kvtier_format::{encode_block_with, BlockShape, BlockView, CodecSpec, DType};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

const FINGERPRINT: [u8; 32] = [0x5a; 32];

fn lossless_codecs() -> Vec<CodecSpec> {
    vec![
        CodecSpec::NONE,
        CodecSpec::lz4(),
        CodecSpec::zstd(1),
        CodecSpec::zstd(-5),
        CodecSpec::zstd(19),
        CodecSpec::NONE.shuffled(),
        CodecSpec::lz4().shuffled(),
        CodecSpec::zstd(3).shuffled(),
    ]
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)]
}

fn shape() -> impl Strategy<Value = BlockShape> {
    (1u32..4, 1u32..4, 1u32..40, 1u32..40, dtype()).prop_map(
        |(n_layers, n_kv_heads, block_tokens, head_dim, dtype)| BlockShape {
            n_layers,
            n_kv_heads,
            block_tokens,
            head_dim,
            dtype,
        },
    )
}

/// Either uniformly random bytes (NaN and infinity patterns included) or synthetic KV.
fn raw_for(shape: &BlockShape, seed: u64, realistic: bool) -> Vec<u8> {
    if realistic {
        let values = common::synthetic::kv_block(shape, seed as usize % 4096, seed);
        return common::to_raw(&values, shape.dtype);
    }
    let mut raw = vec![0u8; shape.raw_bytes()];
    StdRng::seed_from_u64(seed).fill_bytes(&mut raw);
    raw
}

fn assert_round_trip(shape: &BlockShape, raw: &[u8], codec: &CodecSpec) {
    let block = encode_block_with(&FINGERPRINT, shape, raw, codec).unwrap();
    let view = BlockView::parse(&block).unwrap();
    view.verify_payload().unwrap();
    assert_eq!(view.codec, *codec);
    assert_eq!(view.shape, *shape);
    assert!(view.decoded().unwrap().as_ref() == raw, "{codec} {shape:?}");
    let mut layer = vec![0u8; shape.layer_bytes()];
    for (i, expected) in raw.chunks_exact(shape.layer_bytes()).enumerate() {
        view.decode_layer(i, &mut layer).unwrap();
        assert!(layer == expected, "{codec} layer {i}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn lossless_codecs_round_trip_bit_exactly(
        shape in shape(),
        seed in any::<u64>(),
        realistic in any::<bool>(),
    ) {
        let raw = raw_for(&shape, seed, realistic);
        for codec in lossless_codecs() {
            assert_round_trip(&shape, &raw, &codec);
        }
    }
}

#[test]
fn codec_none_decodes_without_copying() {
    let shape = BlockShape {
        n_layers: 2,
        n_kv_heads: 2,
        block_tokens: 16,
        head_dim: 8,
        dtype: DType::BF16,
    };
    let raw = raw_for(&shape, 7, true);
    let block = encode_block_with(&FINGERPRINT, &shape, &raw, &CodecSpec::NONE).unwrap();
    let view = BlockView::parse(&block).unwrap();
    assert!(matches!(view.decoded().unwrap(), Cow::Borrowed(_)));
}

#[test]
fn shuffle_helps_zstd_on_half_precision_kv() {
    let shape = BlockShape {
        n_layers: 4,
        n_kv_heads: 4,
        block_tokens: 64,
        head_dim: 64,
        dtype: DType::F16,
    };
    let raw = raw_for(&shape, 11, true);
    let size = |codec: CodecSpec| {
        encode_block_with(&FINGERPRINT, &shape, &raw, &codec)
            .unwrap()
            .len()
    };
    let (plain, shuffled) = (
        size(CodecSpec::zstd(1)),
        size(CodecSpec::zstd(1).shuffled()),
    );
    assert!(shuffled < plain, "shuffled {shuffled} >= plain {plain}");
}
