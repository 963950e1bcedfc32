//! Decode-time compression on stories260K (a 128-token context): tokens behind the recent
//! window are held in int8, the cache holds fewer bytes, and what the model computes stays
//! close to the exact cache.

mod common;

use kvtier_engine::kv_cache::DecodeCompression;
use kvtier_engine::{KvCache, LoadedModel};
use kvtier_format::codec::bounds;
use kvtier_format::{BlockShape, CodecSpec, DType};

const WINDOW: usize = 32;
const GROUP: usize = 8;
/// Tokens computed per forward pass, as a decode step would add them.
const STEP: usize = 4;

fn tokens(loaded: &LoadedModel, n: usize) -> Vec<u32> {
    let tokenizer = &loaded.tokenizer;
    let mut ids = vec![tokenizer.bos_id().expect("bos")];
    for text in common::texts() {
        ids.extend(tokenizer.encode(&text).expect("encode"));
        if ids.len() >= n {
            break;
        }
    }
    assert!(ids.len() >= n, "texts give only {} tokens", ids.len());
    ids.truncate(n);
    ids
}

fn compressed(loaded: &LoadedModel) -> KvCache {
    let mut cache = loaded.model.new_cache().expect("cache");
    let settings = DecodeCompression {
        window: WINDOW,
        group: GROUP,
        codec: CodecSpec::int8(),
    };
    cache.set_compression(Some(settings)).expect("compression");
    cache
}

/// Last-token logits after every step of `STEP` tokens.
fn step_logits(loaded: &LoadedModel, ids: &[u32], cache: &mut KvCache) -> Vec<Vec<f32>> {
    ids.chunks(STEP)
        .map(|chunk| {
            loaded
                .model
                .forward_last_logits(chunk, cache)
                .expect("forward")
        })
        .collect()
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |best, i| if x[i] > x[best] { i } else { best })
}

#[test]
fn compressed_cache_holds_fewer_bytes_and_predicts_the_same_tokens() {
    let loaded = common::load_stories();
    let ids = tokens(&loaded, 128);
    let mut exact = loaded.model.new_cache().expect("cache");
    let mut small = compressed(&loaded);
    let want = step_logits(&loaded, &ids, &mut exact);
    let got = step_logits(&loaded, &ids, &mut small);

    assert_eq!(small.len(), ids.len());
    assert!(small.compressed_len() >= ids.len() - WINDOW - GROUP - STEP);
    let ratio = exact.held_bytes() as f64 / small.held_bytes() as f64;
    assert!(ratio > 1.5, "held bytes shrink only {ratio:.2}x");
    assert!(small.bytes() < exact.bytes());

    let agree = want
        .iter()
        .zip(&got)
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    assert!(
        agree * 100 >= want.len() * 95,
        "top-1 agrees on {agree} of {} steps",
        want.len()
    );
    let diff = want
        .iter()
        .zip(&got)
        .map(|(a, b)| common::max_abs_diff(a, b))
        .fold(0f32, f32::max);
    assert!(diff < 0.5, "logits differ by up to {diff}");
}

#[test]
fn exported_compressed_tokens_are_within_the_int8_bound() {
    let loaded = common::load_stories();
    let ids = tokens(&loaded, 120);
    let mut exact = loaded.model.new_cache().expect("cache");
    let mut small = compressed(&loaded);
    step_logits(&loaded, &ids, &mut exact);
    // One forward, then a reserve: the whole prefix behind the window is compressed from
    // the same values the exact cache holds.
    loaded.model.forward(&ids, &mut small).expect("forward");
    small.reserve(ids.len() + 1).expect("reserve");
    assert!(small.compressed_len() >= GROUP);

    let shape = loaded.model.kv_shape();
    let block = BlockShape {
        n_layers: shape.n_layers as u32,
        n_kv_heads: shape.n_kv_heads as u32,
        block_tokens: GROUP as u32,
        head_dim: shape.head_dim as u32,
        dtype: DType::F32,
    };
    let floats = |bytes: Vec<u8>| -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let mut exact_once = loaded.model.new_cache().expect("cache");
    loaded
        .model
        .forward(&ids, &mut exact_once)
        .expect("forward");
    for start in (0..small.compressed_len()).step_by(GROUP) {
        let input = floats(exact_once.export_block(start, GROUP).unwrap());
        let output = floats(small.export_block(start, GROUP).unwrap());
        let worst = bounds::worst(&CodecSpec::int8(), &block, &input, &output);
        assert!(worst.ratio <= 1.0, "group at {start}: {worst:?}");
    }
    let tail = small.compressed_len();
    assert_eq!(
        small.export_block(tail, 8).unwrap(),
        exact_once.export_block(tail, 8).unwrap(),
        "tokens in the window are exact"
    );
}

#[test]
fn truncating_into_the_compressed_part_keeps_a_usable_cache() {
    let loaded = common::load_stories();
    let ids = tokens(&loaded, 128);
    let mut small = compressed(&loaded);
    step_logits(&loaded, &ids, &mut small);
    let cut = small.compressed_len() - GROUP / 2;
    small.truncate(cut);
    assert_eq!(small.len(), cut);
    assert_eq!(small.compressed_len() % GROUP, 0);
    assert!(small.compressed_len() < cut);

    let mut exact = loaded.model.new_cache().expect("cache");
    let want = loaded
        .model
        .forward_last_logits(&ids, &mut exact)
        .expect("forward");
    let got = loaded
        .model
        .forward_last_logits(&ids[cut..], &mut small)
        .expect("forward");
    assert_eq!(small.len(), ids.len());
    assert_eq!(argmax(&want), argmax(&got));
}

#[test]
fn compression_is_off_by_default_and_only_changes_on_an_empty_cache() {
    let loaded = common::load_stories();
    let ids = tokens(&loaded, 40);
    let mut cache = loaded.model.new_cache().expect("cache");
    assert_eq!(cache.compression(), None);
    loaded.model.forward(&ids, &mut cache).expect("forward");
    assert_eq!(cache.compressed_len(), 0);
    assert_eq!(
        cache.held_bytes(),
        ids.len() * loaded.model.kv_shape().token_bytes()
    );
    let err = cache
        .set_compression(Some(DecodeCompression::int8(16)))
        .unwrap_err();
    assert!(err.to_string().contains("non-empty"), "{err}");

    let mut empty = loaded.model.new_cache().expect("cache");
    let zero_group = DecodeCompression {
        group: 0,
        ..DecodeCompression::default()
    };
    let err = empty.set_compression(Some(zero_group)).unwrap_err();
    assert!(err.to_string().contains("group"), "{err}");
}
