//! The tiered store with its ssd tier and index: restarts, corruption, churn.

mod tiered_support;

use bytesize::ByteSize;
use kvtier_store::tier::TierKind;
use kvtier_store::{Durability, Store};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use tiered_support::*;

#[test]
fn blocks_demoted_to_ssd_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace(64);
    let config = config(
        dir.path(),
        ByteSize::mib(1),
        ByteSize::mib(64),
        Durability::Async,
    );
    {
        let store = Store::open(&config).unwrap();
        for chain in 0..8 {
            assert_eq!(put_chain(&store, &ns, chain, 6), 6);
        }
        store.flush();
        let stats = store.stats();
        assert!(stats.tier(TierKind::Dram).unwrap().used_bytes <= ByteSize::mib(1).as_u64());
        store.check_invariants().unwrap();
    }
    let store = Store::open(&config).unwrap();
    for chain in 0..8 {
        for position in 0..6 {
            let got = store
                .read(&ns, &key(chain, position))
                .expect("block survived");
            assert_eq!(got, block(&ns, chain, position));
        }
    }
    store.check_invariants().unwrap();
}

#[test]
fn a_hit_on_ssd_promotes_the_block_to_dram() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace(64);
    let config = config(
        dir.path(),
        ByteSize::mib(1),
        ByteSize::mib(64),
        Durability::Sync,
    );
    {
        let store = Store::open(&config).unwrap();
        put_chain(&store, &ns, 1, 3);
    }
    let store = Store::open(&config).unwrap();
    assert_eq!(store.stats().tier(TierKind::Dram).unwrap().blocks, 0);
    store.read(&ns, &key(1, 0)).unwrap();
    let stats = store.stats();
    assert_eq!(stats.tier(TierKind::Ssd).unwrap().promotions, 1);
    assert_eq!(stats.tier(TierKind::Dram).unwrap().blocks, 1);
    store.read(&ns, &key(1, 0)).unwrap();
    assert_eq!(store.stats().tier(TierKind::Dram).unwrap().hits, 1);
}

#[test]
fn reopen_and_compare_against_an_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace(32);
    let config = config(
        dir.path(),
        ByteSize::mib(1),
        ByteSize::mib(32),
        Durability::Sync,
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    // chain -> length held (chains only grow from their tail or are deleted whole).
    let mut oracle: HashMap<u32, u32> = HashMap::new();
    for round in 0..8 {
        let store = Store::open(&config).unwrap();
        for (chain, len) in &oracle {
            let keys: Vec<_> = (0..*len).map(|p| key(*chain, p)).collect();
            assert_eq!(
                store.lookup(&keys),
                *len as usize,
                "round {round} chain {chain}"
            );
            let position = rng.random_range(0..*len);
            assert_eq!(
                store.read(&ns, &key(*chain, position)).unwrap(),
                block(&ns, *chain, position)
            );
        }
        for _ in 0..20 {
            let chain = rng.random_range(0..30);
            match rng.random_range(0..10) {
                0..=6 => {
                    let len = oracle.get(&chain).copied().unwrap_or(0) + rng.random_range(1..4);
                    assert_eq!(put_chain(&store, &ns, chain, len), len);
                    oracle.insert(chain, len);
                }
                _ => {
                    store.delete(&[key(chain, 0)]);
                    oracle.remove(&chain);
                }
            }
        }
        store.check_invariants().unwrap();
    }
    assert!(!oracle.is_empty());
}

fn flip_payload_byte(dir: &std::path::Path, target: [u8; 32]) {
    let segment = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    // The record header carries the key; its payload follows the 64-byte header.
    let at = bytes.windows(32).position(|w| w == target).unwrap();
    bytes[at + 500] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
}

fn three_single_blocks(config: &kvtier_store::Config, ns: &kvtier_store::NamespaceSpec) {
    let store = Store::open(config).unwrap();
    for chain in 1..=3 {
        put_chain(&store, ns, chain, 1);
    }
}

#[test]
fn a_byte_flipped_in_a_segment_while_stopped_is_a_miss_and_neighbours_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace(64);
    let config = config(
        dir.path(),
        ByteSize::mib(1),
        ByteSize::mib(64),
        Durability::Sync,
    );
    three_single_blocks(&config, &ns);
    flip_payload_byte(dir.path(), key(2, 0));

    let store = Store::open(&config).unwrap();
    assert!(
        store.read(&ns, &key(2, 0)).is_none(),
        "a flipped byte must be a miss"
    );
    assert_eq!(store.lookup(&[key(2, 0)]), 0, "its entry is removed");
    assert_eq!(store.read(&ns, &key(1, 0)).unwrap(), block(&ns, 1, 0));
    assert_eq!(store.read(&ns, &key(3, 0)).unwrap(), block(&ns, 3, 0));
}

#[test]
fn a_byte_flipped_in_a_segment_while_serving_is_a_miss_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace(64);
    let config = config(
        dir.path(),
        ByteSize::mib(1),
        ByteSize::mib(64),
        Durability::Sync,
    );
    three_single_blocks(&config, &ns);
    let store = Store::open(&config).unwrap();
    flip_payload_byte(dir.path(), key(2, 0));

    assert!(
        store.read(&ns, &key(2, 0)).is_none(),
        "a flipped byte must be a miss"
    );
    assert_eq!(store.stats().checksum_failures, 1);
    assert_eq!(store.lookup(&[key(2, 0)]), 0, "its entry is removed");
    assert_eq!(store.read(&ns, &key(1, 0)).unwrap(), block(&ns, 1, 0));
    assert_eq!(store.read(&ns, &key(3, 0)).unwrap(), block(&ns, 3, 0));
    drop(store);
    let store = Store::open(&config).unwrap();
    assert_eq!(
        store.lookup(&[key(2, 0)]),
        0,
        "the entry stays removed after a restart"
    );
}

#[test]
fn churn_at_three_times_total_capacity_stays_within_every_tier_and_prefix_closed() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace(64);
    let config = config(
        dir.path(),
        ByteSize::mib(1),
        ByteSize::mib(2),
        Durability::Async,
    );
    let store = Store::open(&config).unwrap();
    let block_bytes = block(&ns, 0, 0).len() as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut written = 0;
    let mut chain = 0;
    while written < 3 * ByteSize::mib(3).as_u64() {
        chain += 1;
        let len = rng.random_range(1..8);
        put_chain(&store, &ns, chain, len);
        written += block_bytes * len as u64;
        if rng.random_bool(0.3) {
            let old = rng.random_range(1..=chain);
            let _ = store.read(&ns, &key(old, 0));
        }
        store.check_invariants().unwrap();
    }
    store.flush();
    let stats = store.stats();
    for tier in &stats.tiers {
        assert!(tier.used_bytes <= tier.capacity_bytes, "{:?}", tier);
    }
    assert!(stats.tier(TierKind::Dram).unwrap().demotions > 0);
    assert!(stats.evictions() > 0);
    drop(store);
    let store = Store::open(&config).unwrap();
    store.check_invariants().unwrap();
}

#[test]
fn mostly_dead_segments_are_compacted_in_the_background_and_survivors_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace(64);
    let config = config(
        dir.path(),
        ByteSize::mib(1),
        ByteSize::mib(64),
        Durability::Sync,
    );
    {
        let store = Store::open(&config).unwrap();
        for chain in 0..8 {
            assert_eq!(put_chain(&store, &ns, chain, 12), 12);
        }
        // Deleting a chain's first block removes the whole chain.
        let doomed: Vec<_> = (0..8).filter(|c| c % 4 != 0).map(|c| key(c, 0)).collect();
        store.delete(&doomed);

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while store.stats().compaction_bytes == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no background compaction within 20 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for chain in [0, 4] {
            for position in 0..12 {
                let got = store.read(&ns, &key(chain, position)).unwrap();
                assert_eq!(got, block(&ns, chain, position));
            }
        }
        store.check_invariants().unwrap();
    }
    let store = Store::open(&config).unwrap();
    for chain in [0, 4] {
        for position in 0..12 {
            let got = store
                .read(&ns, &key(chain, position))
                .expect("survived compaction");
            assert_eq!(got, block(&ns, chain, position));
        }
    }
    assert_eq!(store.lookup(&[key(1, 0)]), 0, "deleted chains stay deleted");
}
