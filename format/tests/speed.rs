//! Prints decode (and encode) throughput on 4 MiB of synthetic f16 KV, in MB of raw
//! tensors per second. It asserts nothing about time: run it with `--nocapture` to read
//! the numbers, and remember the test profile is not a release build.

mod common;

use std::time::Instant;

use kvtier_format::{encode_block_with, BlockShape, BlockView, CodecSpec, DType};

fn best_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn print_codec_throughput_on_4_mib() {
    let shape = BlockShape {
        n_layers: 32,
        n_kv_heads: 8,
        block_tokens: 64,
        head_dim: 64,
        dtype: DType::F16,
    };
    assert_eq!(shape.raw_bytes(), 4 << 20);
    let values = common::synthetic::kv_block(&shape, 4096, 23);
    let raw = common::to_raw(&values, shape.dtype);
    let mb = raw.len() as f64 / 1e6;
    for codec in [
        CodecSpec::lz4(),
        CodecSpec::int8(),
        CodecSpec::lz4().shuffled(),
        CodecSpec::zstd(1),
        CodecSpec::zstd(1).shuffled(),
        CodecSpec::fp8(),
        CodecSpec::int4(32),
        CodecSpec::int8().then_zstd(1),
    ] {
        let mut block = Vec::new();
        let encode = best_seconds(3, || {
            block = encode_block_with(&[0; 32], &shape, &raw, &codec).unwrap();
        });
        let view = BlockView::parse(&block).unwrap();
        let decode = best_seconds(5, || {
            let decoded = view.decoded().unwrap();
            assert_eq!(decoded.len(), raw.len());
        });
        println!(
            "{:<14} encode {:7.0} MB/s  decode {:7.0} MB/s  ({} -> {} bytes)",
            codec.to_string(),
            mb / encode,
            mb / decode,
            raw.len(),
            block.len()
        );
    }
}
