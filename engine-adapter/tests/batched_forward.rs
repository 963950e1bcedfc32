//! One forward pass over several sequences (decode steps, prompt chunks after a cached
//! prefix, a prefix loaded layer by layer) computes what a pass per sequence does.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use kvtier_engine::connector::LayerFeed;
use kvtier_engine::{EngineError, KvCache, LoadedModel, Segment};

const TOLERANCE: f32 = 1e-4;

fn prompt(loaded: &LoadedModel) -> Vec<u32> {
    let tokenizer = &loaded.tokenizer;
    let mut ids = vec![tokenizer.bos_id().expect("bos")];
    let text = "Once upon a time, a little fox found a shiny stone by the river and kept it.";
    ids.extend(tokenizer.encode(text).expect("encode"));
    ids
}

fn prefilled(loaded: &LoadedModel, tokens: &[u32]) -> KvCache {
    let mut cache = loaded.model.new_cache().expect("cache");
    if !tokens.is_empty() {
        loaded.model.forward(tokens, &mut cache).expect("prefill");
    }
    cache
}

/// A layer-wise feed of `source`'s first `n` tokens, as one block of `n` tokens.
fn feed_of(source: &KvCache, n: usize) -> LayerFeed {
    let raw = source.export_block(0, n).expect("export");
    let per_layer = raw.len() / source.shape().n_layers;
    let mut layers = raw
        .chunks_exact(per_layer)
        .map(|layer| vec![Bytes::copy_from_slice(layer)]);
    let first = layers.next().expect("layer 0");
    let (tx, rx) = std::sync::mpsc::channel();
    for layer in layers {
        tx.send(Ok(layer)).expect("send");
    }
    LayerFeed::new(first, rx)
}

#[test]
fn a_mixed_batch_equals_one_pass_per_sequence() {
    let loaded = common::load_stories();
    let model = &loaded.model;
    let ids = prompt(&loaded);
    let (decode_at, chunk_at, fill_at) = (9, 6, 8);

    // Alone: a decode step, a chunk after a cached prefix, a prompt after a loaded prefix.
    let mut alone = [
        prefilled(&loaded, &ids[..decode_at]),
        prefilled(&loaded, &ids[..chunk_at]),
        prefilled(&loaded, &ids[..fill_at]),
    ];
    let expected = [
        model.forward_last_logits(&ids[decode_at..decode_at + 1], &mut alone[0]),
        model.forward_last_logits(&ids[chunk_at..], &mut alone[1]),
        model.forward_last_logits(&ids[fill_at..], &mut alone[2]),
    ]
    .map(|r| r.expect("single pass"));

    let source = prefilled(&loaded, &ids[..fill_at]);
    let mut decode = prefilled(&loaded, &ids[..decode_at]);
    let mut chunk = prefilled(&loaded, &ids[..chunk_at]);
    let mut filled = model.new_cache().expect("cache");
    let mut feed = feed_of(&source, fill_at);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fill = |layer: usize, cache: &mut KvCache| {
        feed.fill(layer, cache, fill_at, deadline)
            .map_err(|e| EngineError::Worker(e.to_string()))
    };
    let mut segments = [
        Segment::after(&ids[decode_at..decode_at + 1], &mut decode),
        Segment::after(&ids[chunk_at..], &mut chunk),
        Segment {
            tokens: &ids[fill_at..],
            start: fill_at,
            cache: &mut filled,
            fill: Some(&mut fill),
        },
    ];
    let together = model.forward_batch(&mut segments).expect("batched pass");
    for (i, (got, want)) in together.iter().zip(&expected).enumerate() {
        let got = got.as_ref().expect("segment result");
        let diff = common::max_abs_diff(got, want);
        assert!(diff <= TOLERANCE, "segment {i}: logits differ by {diff}");
    }
    assert_eq!(decode.len(), decode_at + 1);
    assert_eq!(chunk.len(), ids.len());
    assert_eq!(filled.len(), ids.len());
    let exported = filled.export_block(0, ids.len()).expect("export");
    let reference = alone[2].export_block(0, ids.len()).expect("export");
    let worst = common::max_abs_diff(&floats(&exported), &floats(&reference));
    assert!(worst <= TOLERANCE, "filled cache differs by {worst}");
}

#[test]
fn a_failed_fill_spoils_only_its_own_segment() {
    let loaded = common::load_stories();
    let model = &loaded.model;
    let ids = prompt(&loaded);
    let mut expected_cache = prefilled(&loaded, &ids[..5]);
    let expected = model
        .forward_last_logits(&ids[5..6], &mut expected_cache)
        .expect("single step");

    let mut decode = prefilled(&loaded, &ids[..5]);
    let mut failing = model.new_cache().expect("cache");
    let mut calls = 0;
    let mut fill = |layer: usize, _: &mut KvCache| {
        calls += 1;
        match layer {
            0 => Ok(()),
            _ => Err(EngineError::NoTokens),
        }
    };
    let mut segments = [
        Segment::after(&ids[5..6], &mut decode),
        Segment {
            tokens: &ids[4..],
            start: 4,
            cache: &mut failing,
            fill: Some(&mut fill),
        },
    ];
    let results = model.forward_batch(&mut segments).expect("batched pass");
    let diff = common::max_abs_diff(results[0].as_ref().expect("decode"), &expected);
    assert!(diff <= TOLERANCE, "the healthy segment changed by {diff}");
    assert!(results[1].is_err(), "the failed fill is reported");
    assert_eq!(calls, 2, "a fill that failed is not called again");
    assert_eq!(failing.len(), 0, "the spoiled cache is emptied");
    assert_eq!(decode.len(), 6);
}

#[test]
fn a_refused_segment_changes_no_cache() {
    let loaded = common::load_stories();
    let model = &loaded.model;
    let ids = prompt(&loaded);
    let mut first = prefilled(&loaded, &ids[..5]);
    let mut second = prefilled(&loaded, &ids[..7]);
    let out_of_vocab = [u32::MAX];
    let mut segments = [
        Segment::after(&ids[5..9], &mut first),
        Segment::after(&out_of_vocab, &mut second),
    ];
    assert!(matches!(
        model.forward_batch(&mut segments),
        Err(EngineError::TokenOutOfVocab { .. })
    ));
    assert_eq!((first.len(), second.len()), (5, 7));

    let mut wrong_start = Segment::after(&ids[5..6], &mut first);
    wrong_start.start = 3;
    assert!(model.forward_batch(&mut [wrong_start]).is_err());
    assert_eq!(first.len(), 5);
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
