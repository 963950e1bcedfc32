//! One batched forward over many tokens computes what feeding them one by one does.

mod common;

use kvtier_engine::{EngineError, LoadedModel};

const TOLERANCE: f32 = 1e-4;

fn prompt(loaded: &LoadedModel) -> Vec<u32> {
    let tokenizer = &loaded.tokenizer;
    let mut ids = vec![tokenizer.bos_id().expect("bos")];
    let text = "One day, Lily went to the park with her mom. She saw a big tree and a red bird.";
    ids.extend(tokenizer.encode(text).expect("encode"));
    ids
}

#[test]
fn batched_prefill_equals_token_by_token_decode() {
    let loaded = common::load_stories();
    let model = &loaded.model;
    let ids = prompt(&loaded);

    let mut batched = model.new_cache().expect("cache");
    let all = model
        .forward_all_logits(&ids, &mut batched)
        .expect("forward");

    let mut stepwise = model.new_cache().expect("cache");
    for (i, &id) in ids.iter().enumerate() {
        let logits = model
            .forward_last_logits(&[id], &mut stepwise)
            .expect("forward");
        let diff = common::max_abs_diff(&all[i], &logits);
        assert!(diff <= TOLERANCE, "position {i}: logits differ by {diff}");
    }
    assert_eq!(batched.len(), stepwise.len());

    let mut last_only = model.new_cache().expect("cache");
    let last = model
        .forward_last_logits(&ids, &mut last_only)
        .expect("forward");
    assert!(common::max_abs_diff(&last, &all[ids.len() - 1]) <= TOLERANCE);
}

#[test]
fn chunked_prefill_equals_one_pass() {
    let mut loaded = common::load_stories();
    let ids = prompt(&loaded);
    let mut cache = loaded.model.new_cache().expect("cache");
    let one_pass = loaded
        .model
        .forward_last_logits(&ids, &mut cache)
        .expect("forward");

    loaded.model.set_prefill_chunk(7);
    let mut cache = loaded.model.new_cache().expect("cache");
    let chunked = loaded
        .model
        .forward_last_logits(&ids, &mut cache)
        .expect("forward");
    assert!(common::max_abs_diff(&one_pass, &chunked) <= TOLERANCE);
    assert_eq!(cache.len(), ids.len());
}

#[test]
fn context_overflow_is_refused_and_leaves_the_cache_unchanged() {
    let loaded = common::load_stories();
    let model = &loaded.model;
    let limit = model.config().context_length;
    let mut cache = model.new_cache().expect("cache");
    model
        .forward(&vec![5; limit - 1], &mut cache)
        .expect("forward");
    let err = model.forward(&[5, 5], &mut cache).expect_err("overflow");
    assert!(matches!(err, EngineError::ContextOverflow { .. }), "{err}");
    assert_eq!(cache.len(), limit - 1);
    assert!(matches!(
        model.forward(&[512], &mut cache),
        Err(EngineError::TokenOutOfVocab { .. })
    ));
    assert!(matches!(
        model.forward(&[], &mut cache),
        Err(EngineError::NoTokens)
    ));
}

#[test]
fn one_decode_step_for_several_sequences_equals_a_step_for_each() {
    let loaded = common::load_stories();
    let model = &loaded.model;
    let ids = prompt(&loaded);
    // Three sequences of different lengths, so each attends over its own cache.
    let lengths = [5, 11, ids.len()];
    let prefilled = || -> Vec<_> {
        lengths
            .iter()
            .map(|&n| {
                let mut cache = model.new_cache().expect("cache");
                model.forward(&ids[..n], &mut cache).expect("prefill");
                cache
            })
            .collect()
    };
    let mut batched = prefilled();
    let mut alone = prefilled();
    let next = [17, 42, 99];
    let mut caches: Vec<_> = batched.iter_mut().collect();
    let together = model
        .decode_batch(&next, &mut caches)
        .expect("batched step");
    for (i, cache) in alone.iter_mut().enumerate() {
        let single = model
            .forward_last_logits(&[next[i]], cache)
            .expect("single step");
        let diff = common::max_abs_diff(&together[i], &single);
        assert!(diff <= TOLERANCE, "sequence {i}: logits differ by {diff}");
        assert_eq!(batched[i].len(), lengths[i] + 1);
    }
    let mut caches: Vec<_> = batched.iter_mut().collect();
    let overflow = [u32::MAX, 1, 2];
    assert!(model.decode_batch(&overflow, &mut caches).is_err());
    let kept: Vec<usize> = batched.iter().map(|c| c.len()).collect();
    assert_eq!(
        kept,
        lengths.map(|n| n + 1),
        "a refused step changes no cache"
    );
}
