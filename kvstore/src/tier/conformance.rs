//! The behaviour every [`Tier`] implementation must show. Each tier's tests call
//! [`run_all`] with a factory for a fresh tier of a given capacity.

use bytes::Bytes;
use rand::{Rng, SeedableRng};

use super::{Tier, TierError};

fn key(i: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&i.to_le_bytes());
    k
}

fn block(len: usize, seed: u32) -> Bytes {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as u8)
        .collect()
}

/// Runs every conformance check; `make(capacity)` builds an empty tier.
pub fn run_all<T: Tier>(make: impl Fn(u64) -> T) {
    written_bytes_read_back_identically(&make(8 << 20));
    read_into_replaces_the_buffer(&make(8 << 20));
    used_bytes_track_writes_and_frees(&make(8 << 20));
    a_write_that_does_not_fit_is_full_and_changes_nothing(&make(1 << 20));
    freed_space_is_reusable(&make(1 << 20));
    random_churn_never_exceeds_capacity(&make(2 << 20));
    room_is_reported_before_a_write_and_gone_after_it(&make(1 << 20));
}

fn written_bytes_read_back_identically(tier: &impl Tier) {
    for (i, len) in [1usize, 100, 4096, 4097, 65536, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let data = block(len, i as u32);
        let slot = tier.write(&key(i as u32), &data, false).unwrap();
        assert_eq!(
            tier.read(&key(i as u32), &slot).unwrap(),
            data,
            "{len} bytes"
        );
    }
}

fn read_into_replaces_the_buffer(tier: &impl Tier) {
    let data = block(5000, 9);
    let slot = tier.write(&key(1), &data, false).unwrap();
    let mut out = vec![0xee; 123];
    tier.read_into(&key(1), &slot, &mut out).unwrap();
    assert_eq!(out, data);
}

fn used_bytes_track_writes_and_frees(tier: &impl Tier) {
    assert_eq!(tier.used(), 0);
    let a = tier.write(&key(1), &block(10_000, 1), false).unwrap();
    let b = tier.write(&key(2), &block(20_000, 2), false).unwrap();
    assert!(tier.used() >= 30_000);
    tier.free(&a);
    tier.free(&b);
    assert_eq!(tier.used(), 0);
}

fn a_write_that_does_not_fit_is_full_and_changes_nothing(tier: &impl Tier) {
    let capacity = tier.capacity();
    let kept = tier
        .write(&key(1), &block(capacity as usize / 2, 1), false)
        .unwrap();
    let used = tier.used();
    let err = tier
        .write(&key(2), &block(capacity as usize, 2), false)
        .unwrap_err();
    assert!(matches!(err, TierError::Full { .. }), "{err}");
    assert_eq!(tier.used(), used);
    assert_eq!(
        tier.read(&key(1), &kept).unwrap(),
        block(capacity as usize / 2, 1)
    );
}

fn freed_space_is_reusable(tier: &impl Tier) {
    let len = tier.capacity() as usize / 3;
    for round in 0..10 {
        let slot = tier.write(&key(round), &block(len, round), false).unwrap();
        tier.free(&slot);
    }
    assert_eq!(tier.used(), 0);
}

fn random_churn_never_exceeds_capacity(tier: &impl Tier) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut held = Vec::new();
    for i in 0..400u32 {
        let data = block(rng.random_range(1..200_000), i);
        match tier.write(&key(i), &data, false) {
            Ok(slot) => held.push((i, slot, data)),
            Err(TierError::Full { .. }) => {
                let victim = rng.random_range(0..held.len().max(1));
                if victim < held.len() {
                    let (_, slot, _) = held.swap_remove(victim);
                    tier.free(&slot);
                }
            }
            Err(other) => panic!("unexpected {other}"),
        }
        assert!(tier.used() <= tier.capacity());
    }
    for (i, slot, data) in &held {
        assert_eq!(&tier.read(&key(*i), slot).unwrap(), data);
    }
}

fn room_is_reported_before_a_write_and_gone_after_it(tier: &impl Tier) {
    let half = tier.capacity() / 2;
    assert!(tier.has_room_for(half));
    assert!(!tier.has_room_for(tier.capacity() + 1));
    let slot = tier
        .write(&key(1), &block(half as usize + 1, 1), false)
        .unwrap();
    assert!(!tier.has_room_for(half + 1));
    tier.free(&slot);
    assert!(tier.has_room_for(half + 1));
}
