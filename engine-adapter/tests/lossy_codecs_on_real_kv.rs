//! Every lossy codec keeps its stated error bound on real KV: the K and V that stories260K
//! computes for real text, exported block by block as kvtier stores them, encoded, decoded
//! and checked against `kvtier_format::codec::bounds`, in every dtype an engine may store.

mod common;

use kvtier_format::codec::bounds;
use kvtier_format::{encode_block_with, BlockShape, BlockView, CodecSpec, DType};

const BLOCK_TOKENS: usize = 16;

fn lossy_codecs() -> Vec<CodecSpec> {
    let mut codecs = Vec::new();
    for base in [
        CodecSpec::int8(),
        CodecSpec::fp8(),
        CodecSpec::int4(8),
        CodecSpec::int4(16),
    ] {
        codecs.push(base);
        codecs.push(base.then_zstd(1));
    }
    codecs
}

/// The real KV of the model's whole 128-token context over real text, one f32 vector per
/// block.
fn real_blocks() -> (BlockShape, Vec<Vec<f32>>) {
    let loaded = common::load_stories();
    let tokenizer = &loaded.tokenizer;
    let mut ids = vec![tokenizer.bos_id().expect("bos")];
    ids.extend(
        tokenizer
            .encode(&common::texts().join(" "))
            .expect("encode"),
    );
    ids.truncate(128);
    let mut cache = loaded.model.new_cache().expect("cache");
    loaded.model.forward(&ids, &mut cache).expect("forward");
    let kv = loaded.model.kv_shape();
    let shape = BlockShape {
        n_layers: kv.n_layers as u32,
        n_kv_heads: kv.n_kv_heads as u32,
        block_tokens: BLOCK_TOKENS as u32,
        head_dim: kv.head_dim as u32,
        dtype: DType::F32,
    };
    let blocks = (0..ids.len() / BLOCK_TOKENS)
        .map(|b| {
            let raw = cache.export_block(b * BLOCK_TOKENS, BLOCK_TOKENS).unwrap();
            raw.chunks_exact(4)
                .map(|x| f32::from_le_bytes(x.try_into().unwrap()))
                .collect()
        })
        .collect();
    (shape, blocks)
}

fn to_raw(values: &[f32], dtype: DType) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| match dtype {
            DType::F32 => v.to_le_bytes().to_vec(),
            DType::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
            DType::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
        })
        .collect()
}

fn from_raw(raw: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        DType::F16 => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

#[test]
fn every_lossy_codec_keeps_its_bound_on_real_stories260k_kv() {
    let (f32_shape, blocks) = real_blocks();
    assert!(blocks.len() >= 8, "only {} blocks of real KV", blocks.len());
    let mut checked = 0;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let shape = BlockShape { dtype, ..f32_shape };
        for values in &blocks {
            let raw = to_raw(values, dtype);
            // What the engine stores in this dtype is the codec's input.
            let input = from_raw(&raw, dtype);
            for codec in lossy_codecs() {
                let block = encode_block_with(&[0; 32], &shape, &raw, &codec).unwrap();
                let decoded = BlockView::parse(&block).unwrap().decoded().unwrap();
                let output = from_raw(&decoded, dtype);
                let worst = bounds::worst(&codec, &shape, &input, &output);
                assert!(worst.ratio <= 1.0, "{codec} {dtype:?}: {worst:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * blocks.len() * lossy_codecs().len());
}
