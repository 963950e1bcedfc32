//! The pinned tier inside the store: hot puts land there, pressure demotes them to dram and
//! on to ssd, and the stats never show a tier above its capacity.

mod tiered_support;

use bytesize::ByteSize;
use kvtier_store::tier::TierKind;
use kvtier_store::{Config, Durability, NamespaceSpec, PutOptions, Store, StoreStats};
use tiered_support::*;

const HOT: PutOptions = PutOptions {
    hot: true,
    conversation: None,
    durability: None,
};

fn with_pinned(config: Config, pinned: ByteSize) -> Config {
    Config {
        pinned_capacity: pinned,
        ..config
    }
}

fn memory_only(pinned: ByteSize, dram: ByteSize) -> Config {
    Config {
        pinned_capacity: pinned,
        dram_capacity: dram,
        max_block_bytes: ByteSize::kib(256),
        ..Config::default()
    }
}

/// Puts positions `0..len` of `chain` with the hot hint.
fn put_hot_chain(store: &Store, ns: &NamespaceSpec, chain: u32, len: u32) {
    for position in 0..len {
        let parent = position.checked_sub(1).map(|p| key(chain, p));
        let block = block(ns, chain, position);
        let outcome = store
            .put(ns, key(chain, position), parent, position, block, &HOT)
            .unwrap();
        assert!(outcome.stored, "chain {chain} position {position}");
    }
}

fn assert_within_capacity(stats: &StoreStats) {
    for tier in &stats.tiers {
        assert!(
            tier.used_bytes <= tier.capacity_bytes,
            "{:?} holds {} of {} bytes",
            tier.tier,
            tier.used_bytes,
            tier.capacity_bytes
        );
    }
}

#[test]
fn hot_puts_land_in_the_pinned_tier() {
    let ns = namespace(64);
    let store = Store::new(&memory_only(ByteSize::mib(1), ByteSize::mib(4)));
    put_hot_chain(&store, &ns, 1, 4);
    tiered_support::put_chain(&store, &ns, 2, 3);

    let stats = store.stats();
    let pinned = stats
        .tier(TierKind::Pinned)
        .expect("pinned tier is configured");
    assert_eq!(pinned.blocks, 4);
    assert!(pinned.used_bytes >= 4 * block(&ns, 1, 0).len() as u64);
    assert_eq!(stats.tier(TierKind::Dram).unwrap().blocks, 3);
    assert!(matches!(
        stats.pinned_memory,
        Some("cuda" | "mlocked" | "unlocked")
    ));
    for position in 0..4 {
        assert_eq!(
            store.read(&ns, &key(1, position)).unwrap(),
            block(&ns, 1, position)
        );
    }
    assert_eq!(store.stats().tier(TierKind::Pinned).unwrap().hits, 4);
}

#[test]
fn pressure_demotes_pinned_blocks_into_dram() {
    let ns = namespace(64);
    // A block is about 32 KiB: the pinned tier holds seven, dram thirty.
    let store = Store::new(&memory_only(ByteSize::kib(256), ByteSize::mib(1)));
    for chain in 0..4 {
        put_hot_chain(&store, &ns, chain, 5);
        assert_within_capacity(&store.stats());
    }

    let stats = store.stats();
    let pinned = stats.tier(TierKind::Pinned).unwrap();
    let dram = stats.tier(TierKind::Dram).unwrap();
    assert!(pinned.demotions > 0, "{pinned:?}");
    assert_eq!(pinned.evictions, 0, "demotion comes before dropping");
    assert_eq!(pinned.blocks + dram.blocks, 20);
    assert!(pinned.blocks <= 7, "{pinned:?}");
    for chain in 0..4 {
        for position in 0..5 {
            assert_eq!(
                store.read(&ns, &key(chain, position)).unwrap(),
                block(&ns, chain, position)
            );
        }
    }
    store.check_invariants().unwrap();
}

#[test]
fn pressure_on_every_memory_tier_demotes_down_to_ssd() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace(64);
    let base = config(
        dir.path(),
        ByteSize::mib(1),
        ByteSize::mib(64),
        Durability::None,
    );
    let store = Store::open(&with_pinned(base, ByteSize::kib(256))).unwrap();
    for chain in 0..12 {
        put_hot_chain(&store, &ns, chain, 6);
        assert_within_capacity(&store.stats());
    }

    let stats = store.stats();
    let [pinned, dram, ssd] = TierKind::ALL.map(|kind| stats.tier(kind).unwrap().clone());
    assert!(pinned.demotions > 0 && dram.demotions > 0, "{stats:?}");
    assert!(ssd.blocks > 0, "{ssd:?}");
    assert_eq!(
        stats.evictions(),
        0,
        "72 blocks fit in ssd: nothing dropped"
    );
    assert_eq!(stats.blocks, 72);
    for chain in 0..12 {
        for position in 0..6 {
            let got = store.read(&ns, &key(chain, position)).expect("held");
            assert_eq!(got, block(&ns, chain, position));
        }
    }
    store.check_invariants().unwrap();
}

#[test]
fn a_block_larger_than_the_pinned_tier_lands_in_dram() {
    let ns = namespace(64);
    let store = Store::new(&memory_only(ByteSize::kib(16), ByteSize::mib(4)));
    put_hot_chain(&store, &ns, 1, 2);
    let stats = store.stats();
    assert_eq!(stats.tier(TierKind::Pinned).unwrap().blocks, 0);
    assert_eq!(stats.tier(TierKind::Dram).unwrap().blocks, 2);
}

#[test]
fn without_pinned_capacity_there_is_no_pinned_tier() {
    let ns = namespace(64);
    let store = Store::new(&memory_only(ByteSize::b(0), ByteSize::mib(4)));
    put_hot_chain(&store, &ns, 1, 2);
    let stats = store.stats();
    assert!(stats.tier(TierKind::Pinned).is_none());
    assert_eq!(stats.pinned_memory, None);
    assert_eq!(stats.tier(TierKind::Dram).unwrap().blocks, 2);
}
