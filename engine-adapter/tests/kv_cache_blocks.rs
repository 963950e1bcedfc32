//! The KV cache exports and imports blocks in the store's layout without changing what
//! the model computes.

mod common;

use kvtier_engine::{EngineError, KvCache, LoadedModel};

const TOLERANCE: f32 = 1e-4;

fn prompt(loaded: &LoadedModel) -> Vec<u32> {
    let tokenizer = &loaded.tokenizer;
    let mut ids = vec![tokenizer.bos_id().expect("bos")];
    let text = "Once upon a time, there was a little dog named Max. Max liked to run in the \
                garden with his friend, a small cat.";
    ids.extend(tokenizer.encode(text).expect("encode"));
    ids
}

#[test]
fn blocks_moved_to_a_fresh_cache_give_the_same_logits() {
    let loaded = common::load_stories();
    let model = &loaded.model;
    let ids = prompt(&loaded);
    assert!(ids.len() > 32, "prompt of {} tokens", ids.len());

    let mut whole = model.new_cache().expect("cache");
    let expected = model
        .forward_last_logits(&ids, &mut whole)
        .expect("forward");

    // First 32 tokens computed, exported as blocks of 16, appended into a fresh cache.
    let block = 16;
    let mut first = model.new_cache().expect("cache");
    model
        .forward_last_logits(&ids[..2 * block], &mut first)
        .expect("forward");
    let blocks: Vec<Vec<u8>> = (0..2)
        .map(|i| first.export_block(i * block, block).expect("export"))
        .collect();
    let mut fresh = model.new_cache().expect("cache");
    for bytes in &blocks {
        fresh.append_block(bytes, block).expect("append");
    }
    assert_eq!(fresh.len(), 2 * block);
    for (i, bytes) in blocks.iter().enumerate() {
        assert_eq!(
            &fresh.export_block(i * block, block).expect("export"),
            bytes
        );
    }

    let got = model
        .forward_last_logits(&ids[2 * block..], &mut fresh)
        .expect("forward");
    let diff = common::max_abs_diff(&expected, &got);
    assert!(diff <= TOLERANCE, "logits differ by {diff}");
    assert_eq!(fresh.len(), ids.len());

    // The blocks that were computed in one forward equal the ones computed in parts.
    let from_whole = whole.export_block(0, block).expect("export");
    let close = f32s(&from_whole)
        .iter()
        .zip(f32s(&blocks[0]))
        .all(|(a, b)| (a - b).abs() <= TOLERANCE);
    assert!(close);
}

#[test]
fn export_then_append_round_trips_bytes_exactly() {
    let loaded = common::load_stories();
    let model = &loaded.model;
    let ids = prompt(&loaded);
    let mut cache = model.new_cache().expect("cache");
    model
        .forward_last_logits(&ids, &mut cache)
        .expect("forward");

    let n = cache.len();
    let all = cache.export_block(0, n).expect("export");
    assert_eq!(all.len(), cache.shape().block_bytes(n));

    let mut copy = KvCache::new(cache.shape()).expect("cache");
    copy.append_block(&all[..cache.shape().block_bytes(0)], 0)
        .expect("empty block");
    let mut start = 0;
    for size in [3, 16, 1, n - 20] {
        let bytes = cache.export_block(start, size).expect("export");
        copy.append_block(&bytes, size).expect("append");
        start += size;
    }
    assert_eq!(copy.export_block(0, n).expect("export"), all);

    // Identical caches continue identically, bit for bit.
    let next = [ids[3]];
    let a = model
        .forward_last_logits(&next, &mut cache)
        .expect("forward");
    let b = model
        .forward_last_logits(&next, &mut copy)
        .expect("forward");
    assert_eq!(a, b);
}

#[test]
fn block_layout_is_layer_then_k_v_then_head_then_token() {
    let loaded = common::load_stories();
    let model = &loaded.model;
    let shape = model.kv_shape();
    let ids = prompt(&loaded);
    let mut cache = model.new_cache().expect("cache");
    model
        .forward_last_logits(&ids[..8], &mut cache)
        .expect("forward");

    let whole = f32s(&cache.export_block(0, 8).expect("export"));
    let tail = f32s(&cache.export_block(5, 3).expect("export"));
    let hd = shape.head_dim;
    let mut k = 0;
    for layer in 0..shape.n_layers {
        for kv in 0..2 {
            for head in 0..shape.n_kv_heads {
                for token in 5..8 {
                    let part = (layer * 2 + kv) * shape.n_kv_heads + head;
                    let at = (part * 8 + token) * hd;
                    assert_eq!(&tail[k..k + hd], &whole[at..at + hd]);
                    k += hd;
                }
            }
        }
    }
    assert_eq!(k, tail.len());
}

#[test]
fn truncate_then_recompute_matches_the_first_computation() {
    let loaded = common::load_stories();
    let model = &loaded.model;
    let ids = prompt(&loaded);
    let mut cache = model.new_cache().expect("cache");
    let expected = model
        .forward_last_logits(&ids, &mut cache)
        .expect("forward");
    let held = cache.bytes();

    cache.truncate(10);
    assert_eq!(cache.len(), 10);
    let got = model
        .forward_last_logits(&ids[10..], &mut cache)
        .expect("forward");
    assert!(common::max_abs_diff(&expected, &got) <= TOLERANCE);
    assert_eq!(cache.bytes(), held, "truncate keeps memory for reuse");
    assert!(held >= cache.shape().token_bytes() * ids.len());
}

#[test]
fn malformed_blocks_are_refused() {
    let loaded = common::load_stories();
    let mut cache = loaded.model.new_cache().expect("cache");
    let shape = cache.shape();
    let short = vec![0u8; shape.block_bytes(4) - 1];
    assert!(matches!(
        cache.append_block(&short, 4),
        Err(EngineError::BlockSize { .. })
    ));
    assert_eq!(cache.len(), 0);
    assert!(matches!(
        cache.export_block(0, 1),
        Err(EngineError::BlockRange { .. })
    ));
    let wrong_model = KvCache::new(kvtier_engine::KvShape {
        n_layers: 1,
        ..shape
    })
    .expect("cache");
    let mut wrong_model = wrong_model;
    assert!(matches!(
        loaded.model.forward(&[1], &mut wrong_model),
        Err(EngineError::CacheShape { .. })
    ));
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn models_and_caches_can_move_between_threads() {
    fn shared<T: Send + Sync>() {}
    fn sent<T: Send>() {}
    shared::<LoadedModel>();
    sent::<KvCache>();
}
