//! Prefetch hints: the held blocks of a request's keys or of its conversation move into
//! the pinned tier (or from ssd into dram without one), and read back unchanged.

mod tiered_support;

use bytesize::ByteSize;
use kvtier_store::tier::TierKind;
use kvtier_store::{Config, PrefetchOutcome, PutOptions, Store};
use tiered_support::*;

fn memory_only(pinned: ByteSize) -> Config {
    Config {
        pinned_capacity: pinned,
        dram_capacity: ByteSize::mib(4),
        max_block_bytes: ByteSize::kib(256),
        ..Config::default()
    }
}

fn tier_blocks(store: &Store, tier: TierKind) -> u64 {
    store.stats().tier(tier).map_or(0, |t| t.blocks)
}

#[test]
fn prefetched_keys_move_from_dram_to_pinned_and_read_the_same() {
    let ns = namespace(64);
    let store = Store::new(&memory_only(ByteSize::mib(1)));
    put_chain(&store, &ns, 1, 3);
    assert_eq!(tier_blocks(&store, TierKind::Pinned), 0);

    let keys: Vec<_> = (0..3).map(|p| key(1, p)).chain([key(9, 0)]).collect();
    let outcome = store.prefetch(&ns, &keys, None);
    assert_eq!(
        outcome,
        PrefetchOutcome {
            promoted: 3,
            already_hot: 0,
            skipped: 1
        }
    );
    assert_eq!(tier_blocks(&store, TierKind::Pinned), 3);
    assert_eq!(tier_blocks(&store, TierKind::Dram), 0);
    for position in 0..3 {
        assert_eq!(
            store.read(&ns, &key(1, position)).unwrap(),
            block(&ns, 1, position)
        );
    }
    assert_eq!(store.prefetch(&ns, &keys[..3], None).already_hot, 3);
    store.check_invariants().unwrap();
}

#[test]
fn a_conversation_prefetch_promotes_only_that_conversations_blocks() {
    let ns = namespace(64);
    let store = Store::new(&memory_only(ByteSize::mib(1)));
    for (chain, conversation) in [(1, "alice"), (2, "bob")] {
        let options = PutOptions {
            conversation: Some(conversation.into()),
            ..PutOptions::default()
        };
        for position in 0..2u32 {
            let parent = position.checked_sub(1).map(|p| key(chain, p));
            let b = block(&ns, chain, position);
            store
                .put(&ns, key(chain, position), parent, position, b, &options)
                .unwrap();
        }
    }

    let outcome = store.prefetch(&ns, &[], Some("alice"));
    assert_eq!(outcome.promoted, 2);
    assert_eq!(tier_blocks(&store, TierKind::Pinned), 2);
    assert_eq!(tier_blocks(&store, TierKind::Dram), 2);
    assert_eq!(
        store.prefetch(&ns, &[], Some("nobody")),
        PrefetchOutcome::default()
    );
    store.check_invariants().unwrap();
}

#[test]
fn prefetch_beyond_the_pinned_capacity_never_overfills_it() {
    let ns = namespace(64);
    let one_block = block(&ns, 1, 0).len() as u64;
    let store = Store::new(&memory_only(ByteSize::b(one_block * 2 + one_block / 2)));
    put_chain(&store, &ns, 1, 6);

    let keys: Vec<_> = (0..6).map(|p| key(1, p)).collect();
    store.prefetch(&ns, &keys, None);
    let stats = store.stats();
    let pinned = stats.tier(TierKind::Pinned).unwrap();
    assert!(pinned.used_bytes <= pinned.capacity_bytes);
    assert_eq!(store.lookup(&keys), 6);
    for position in 0..6 {
        assert_eq!(
            store.read(&ns, &key(1, position)).unwrap(),
            block(&ns, 1, position)
        );
    }
    store.check_invariants().unwrap();
}
