//! Truncated, oversized, mutated or random bytes are errors, never panics or out-of-bounds
//! reads, with every codec, whether or not the checksums were fixed up after the damage.

mod common;

use kvtier_format::header::reseal;
use kvtier_format::{
    encode_block_with, BlockShape, BlockView, CodecSpec, DType, FormatError, FORMAT_VERSION, MAGIC,
};
use proptest::prelude::*;

fn every_codec() -> Vec<CodecSpec> {
    vec![
        CodecSpec::NONE,
        CodecSpec::lz4(),
        CodecSpec::zstd(1),
        CodecSpec::NONE.shuffled(),
        CodecSpec::lz4().shuffled(),
        CodecSpec::zstd(1).shuffled(),
        CodecSpec::int8(),
        CodecSpec::int8().then_zstd(1),
        CodecSpec::fp8(),
        CodecSpec::fp8().then_zstd(1),
        CodecSpec::int4(32),
        CodecSpec::int4(5).then_zstd(1),
    ]
}

fn valid_block(codec: &CodecSpec, dtype: DType) -> Vec<u8> {
    let shape = BlockShape {
        n_layers: 3,
        n_kv_heads: 2,
        block_tokens: 9,
        head_dim: 6,
        dtype,
    };
    let values = common::synthetic::kv_block(&shape, 0, 1);
    let raw = common::to_raw(&values, dtype);
    encode_block_with(&[7; 32], &shape, &raw, codec).unwrap()
}

#[derive(Debug, Clone)]
enum Damage {
    Xor { at: usize, mask: u8 },
    Set { at: usize, value: u8 },
    Truncate { keep: usize },
    Append { bytes: Vec<u8> },
    Splice { at: usize, bytes: Vec<u8> },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, mask)| Damage::Xor { at, mask }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Damage::Set { at, value }),
        any::<usize>().prop_map(|keep| Damage::Truncate { keep }),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Damage::Append { bytes }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Damage::Splice { at, bytes }),
    ]
}

fn apply(block: &mut Vec<u8>, damage: &Damage) {
    let len = block.len().max(1);
    match damage {
        Damage::Xor { at, mask } => {
            if let Some(b) = block.get_mut(at % len) {
                *b ^= mask;
            }
        }
        Damage::Set { at, value } => {
            if let Some(b) = block.get_mut(at % len) {
                *b = *value;
            }
        }
        Damage::Truncate { keep } => block.truncate(keep % len),
        Damage::Append { bytes } => block.extend_from_slice(bytes),
        Damage::Splice { at, bytes } => {
            let at = at % len;
            let end = (at + bytes.len()).min(block.len());
            block.splice(at..end, bytes.iter().copied());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
        common::exercise(&bytes);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_prefix_never_panic(
        mut bytes in prop::collection::vec(any::<u8>(), 76..900),
        codec in 0u8..6,
        entropy in 0u8..4,
    ) {
        // A header that passes every structural check, over a random payload.
        bytes[..4].copy_from_slice(&MAGIC);
        bytes[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[8] = codec;
        bytes[9] = 1 + bytes[9] % 3;
        bytes[10] = entropy;
        if entropy != 2 {
            bytes[11] = 0;
        }
        for at in [12, 16, 20, 24] {
            bytes[at + 1..at + 4].fill(0);
            bytes[at] = 1 + bytes[at] % 8;
        }
        if codec != 4 {
            bytes[72..74].fill(0);
        }
        bytes[74] %= 2;
        bytes[75] = 0;
        let n_layers = usize::from(bytes[12]);
        let crc_at = 76 + 4 * n_layers;
        let hlen = (crc_at + 4).next_multiple_of(16);
        prop_assume!(bytes.len() >= hlen);
        bytes[6..8].copy_from_slice(&(hlen as u16).to_le_bytes());
        bytes[crc_at + 4..hlen].fill(0);
        let payload = bytes.len() - hlen;
        bytes[28..36].copy_from_slice(&(payload as u64).to_le_bytes());
        for layer in 0..n_layers {
            let offset = (layer * payload / n_layers) as u32;
            bytes[76 + 4 * layer..80 + 4 * layer].copy_from_slice(&offset.to_le_bytes());
        }
        reseal(&mut bytes);
        common::exercise(&bytes);
    }

    #[test]
    fn damaged_blocks_of_every_codec_never_panic(
        codec in prop::sample::select(every_codec()),
        dtype in prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)],
        damages in prop::collection::vec(damage(), 1..6),
        fix_checksums in any::<bool>(),
    ) {
        let mut block = valid_block(&codec, dtype);
        let original = block.clone();
        for d in &damages {
            apply(&mut block, d);
        }
        if fix_checksums {
            reseal(&mut block);
        }
        common::exercise(&block);
        if !fix_checksums && block != original {
            let verified = BlockView::parse(&block).and_then(|v| v.verify_payload());
            prop_assert!(verified.is_err(), "damage went unnoticed: {damages:?}");
        }
    }
}

#[test]
fn every_truncation_of_every_codec_is_an_error() {
    for codec in every_codec() {
        let block = valid_block(&codec, DType::F16);
        for keep in 0..block.len() {
            assert!(
                BlockView::parse(&block[..keep]).is_err(),
                "{codec}: {keep} bytes parsed"
            );
        }
    }
}

#[test]
fn a_trailing_byte_is_an_error() {
    for codec in every_codec() {
        let mut block = valid_block(&codec, DType::BF16);
        block.push(0);
        assert!(
            matches!(
                BlockView::parse(&block),
                Err(FormatError::PayloadLength { .. })
            ),
            "{codec}"
        );
    }
}

#[test]
fn a_resealed_short_layer_is_an_error_not_a_panic() {
    for codec in every_codec() {
        let mut block = valid_block(&codec, DType::F32);
        // Cut a byte off the end of the last layer and make the header agree.
        block.pop();
        let len = u64::from_le_bytes(block[28..36].try_into().unwrap()) - 1;
        block[28..36].copy_from_slice(&len.to_le_bytes());
        reseal(&mut block);
        let result = BlockView::parse(&block).and_then(|view| view.decoded().map(|_| ()));
        assert!(result.is_err(), "{codec}");
    }
}

#[test]
fn implausible_expansion_is_refused_before_allocating() {
    // A zstd layer of a few hundred bytes cannot decode to the 1 GiB the forged shape
    // claims.
    let mut block = valid_block(&CodecSpec::zstd(1), DType::F32);
    for (at, dim) in [(16, 256u32), (20, 512), (24, 1024)] {
        block[at..at + 4].copy_from_slice(&dim.to_le_bytes());
    }
    reseal(&mut block);
    let view = BlockView::parse(&block).unwrap();
    assert!(matches!(
        view.decoded(),
        Err(FormatError::CorruptLayer { .. })
    ));
}
