//! Real KV as blocks, and each codec's size and speed on them.
//!
//! The KV comes from the model's own cache after a forward pass over real text, exported
//! in the store's block layout and converted to f16, the dtype a GPU engine would store;
//! ratios are f16 bytes over encoded bytes, headers and scales included.

use std::time::Instant;

use half::f16;
use kvtier_client::format::{encode_block_with, BlockShape, BlockView, CodecSpec, DType};
use kvtier_engine::KvCache;

/// Blocks of one namespace, raw, in one dtype.
pub struct Blocks {
    pub shape: BlockShape,
    pub raw: Vec<Vec<u8>>,
}

impl Blocks {
    /// Tokens `0..n` of `cache` (whole blocks only) as blocks of `dtype`.
    pub fn export(
        cache: &KvCache,
        block_tokens: usize,
        dtype: DType,
        n: usize,
    ) -> anyhow::Result<Blocks> {
        let kv = cache.shape();
        let shape = BlockShape {
            n_layers: kv.n_layers as u32,
            n_kv_heads: kv.n_kv_heads as u32,
            block_tokens: block_tokens as u32,
            head_dim: kv.head_dim as u32,
            dtype,
        };
        let raw = (0..n / block_tokens)
            .map(|i| {
                let f32s = cache.export_block(i * block_tokens, block_tokens)?;
                Ok(match dtype {
                    DType::F32 => f32s,
                    _ => to_f16(&f32s),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Blocks { shape, raw })
    }

    pub fn raw_bytes(&self) -> usize {
        self.raw.iter().map(Vec::len).sum()
    }
}

fn to_f16(f32s: &[u8]) -> Vec<u8> {
    f32s.chunks_exact(4)
        .flat_map(|b| f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
        .collect()
}

/// Size and speed of one codec over a set of blocks.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub ratio: f64,
    pub encode_mb_s: f64,
    pub decode_mb_s: f64,
}

/// Encodes every block with `codec`, then parses, verifies and decodes every block;
/// throughput is raw megabytes (10^6 bytes) per second on one thread.
pub fn measure(blocks: &Blocks, codec: &CodecSpec) -> anyhow::Result<Measured> {
    let fingerprint = [0u8; 32];
    let started = Instant::now();
    let encoded = blocks
        .raw
        .iter()
        .map(|raw| encode_block_with(&fingerprint, &blocks.shape, raw, codec))
        .collect::<Result<Vec<_>, _>>()?;
    let encode_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut decoded_bytes = 0;
    for block in &encoded {
        let view = BlockView::parse(block)?;
        view.verify_payload()?;
        decoded_bytes += view.decoded()?.len();
    }
    let decode_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(decoded_bytes == blocks.raw_bytes(), "{codec} decoded short");

    let raw = blocks.raw_bytes() as f64;
    let encoded: usize = encoded.iter().map(Vec::len).sum();
    Ok(Measured {
        ratio: raw / encoded as f64,
        encode_mb_s: raw / 1e6 / encode_s.max(1e-9),
        decode_mb_s: raw / 1e6 / decode_s.max(1e-9),
    })
}

/// The blocks after a round trip through `codec`, as raw bytes of their dtype.
pub fn round_trip(blocks: &Blocks, codec: &CodecSpec) -> anyhow::Result<Vec<Vec<u8>>> {
    blocks
        .raw
        .iter()
        .map(|raw| {
            let block = encode_block_with(&[0; 32], &blocks.shape, raw, codec)?;
            let view = BlockView::parse(&block)?;
            Ok(view.decoded()?.into_owned())
        })
        .collect()
}
