//! Hit counting on tiny hand-made traces whose answers are worked out by hand.

use bytesize::ByteSize;

use super::belady::Belady;
use super::kvtier::StoreCache;
use super::load::{parse, Trace};
use super::lru::Lru;
use super::replay::replay;

fn trace(chains: &[&[u64]]) -> Trace {
    let text: String = chains
        .iter()
        .enumerate()
        .map(|(i, ids)| {
            format!(
                "{{\"timestamp\": {}, \"input_length\": {}, \"output_length\": 1, \"hash_ids\": {:?}}}\n",
                i * 1000,
                ids.len() * 10,
                ids
            )
        })
        .collect();
    parse(&text, "test").unwrap()
}

#[test]
fn lru_misses_every_block_of_a_loop_one_larger_than_the_cache() {
    // A B C A B with room for two: LRU always evicts the block needed next.
    let t = trace(&[&[1], &[2], &[3], &[1], &[2]]);
    let outcome = replay(&t, &mut Lru::new(2, t.blocks()), 10);
    assert_eq!((outcome.hits, outcome.references), (0, 5));
}

#[test]
fn belady_bypasses_the_block_used_farthest_in_the_future() {
    // C is never used again, so Belady keeps A and B and both later requests hit.
    let t = trace(&[&[1], &[2], &[3], &[1], &[2]]);
    let outcome = replay(&t, &mut Belady::new(2, t.blocks()), 10);
    assert_eq!((outcome.hits, outcome.references), (2, 5));
    assert_eq!(outcome.saved_tokens, 20);
}

#[test]
fn a_held_block_after_a_missing_one_is_no_hit() {
    // LRU evicts the chain's head 1 for block 9; 2 and 3 are still held but useless.
    let t = trace(&[&[1, 2, 3], &[9], &[1, 2, 3]]);
    let outcome = replay(&t, &mut Lru::new(3, t.blocks()), 10);
    assert_eq!(outcome.hits, 0);
}

#[test]
fn kvtier_evicts_from_chain_tails_so_the_prefix_survives() {
    let t = trace(&[&[1, 2, 3], &[9], &[1, 2, 3]]);
    let mut cache = StoreCache::new(&t, 3, ByteSize::kib(4), true).unwrap();
    let outcome = replay(&t, &mut cache, 10);
    assert_eq!(outcome.hits, 2);
    assert!(cache.held() <= 3);
    cache.check().unwrap();
}

#[test]
fn prefill_saved_never_exceeds_the_prompt() {
    // The second request's prompt is 20 tokens; its two hit blocks would be 2 x 512.
    let t = trace(&[&[1, 2], &[1, 2]]);
    let outcome = replay(&t, &mut Lru::new(10, t.blocks()), 512);
    assert_eq!(outcome.hits, 2);
    assert_eq!(outcome.saved_tokens, 20);
}

#[test]
fn an_unbounded_cache_hits_every_repeated_prefix_block() {
    let t = trace(&[&[1, 2, 3], &[1, 2, 4], &[1, 5]]);
    let outcome = replay(&t, &mut Lru::new(usize::MAX, t.blocks()), 10);
    assert_eq!((outcome.hits, outcome.references), (3, 8));
}

#[test]
fn the_store_holds_exactly_its_capacity_in_blocks() {
    let chains: Vec<Vec<u64>> = (0..10).map(|i| vec![100 + i]).collect();
    let chains: Vec<&[u64]> = chains.iter().map(Vec::as_slice).collect();
    let t = trace(&chains);
    let mut cache = StoreCache::new(&t, 4, ByteSize::kib(4), false).unwrap();
    replay(&t, &mut cache, 10);
    assert_eq!(cache.held(), 4);
    cache.check().unwrap();
}
