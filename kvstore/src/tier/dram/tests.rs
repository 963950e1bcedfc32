use rand::{Rng, SeedableRng};

use super::*;

fn key(chain: u8, position: u32) -> Key {
    let mut k = [0u8; 32];
    k[0] = chain;
    k[1..5].copy_from_slice(&position.to_le_bytes());
    k
}

fn block(len: usize) -> Bytes {
    Bytes::from(vec![7u8; len])
}

fn put_chain(tier: &mut DramTier, chain: u8, len: u32, size: usize) {
    for pos in 0..len {
        let parent = (pos > 0).then(|| key(chain, pos - 1));
        tier.insert(key(chain, pos), parent, pos, block(size))
            .unwrap();
    }
}

#[test]
fn the_same_key_twice_is_one_stored_copy() {
    let mut tier = DramTier::new(1000);
    assert_eq!(
        tier.insert(key(1, 0), None, 0, block(10)),
        Ok(Inserted::Stored { evicted: 0 })
    );
    assert_eq!(
        tier.insert(key(1, 0), None, 0, block(10)),
        Ok(Inserted::AlreadyPresent)
    );
    assert_eq!((tier.len(), tier.used()), (1, 10));
}

#[test]
fn a_block_whose_parent_is_missing_is_not_stored() {
    let mut tier = DramTier::new(1000);
    assert_eq!(
        tier.insert(key(1, 1), Some(key(1, 0)), 1, block(10)),
        Ok(Inserted::Orphan)
    );
    assert!(tier.is_empty());
}

#[test]
fn eviction_takes_the_tail_of_the_oldest_chain_first() {
    let mut tier = DramTier::new(100);
    put_chain(&mut tier, 1, 5, 10);
    put_chain(&mut tier, 2, 5, 10);
    tier.insert(key(3, 0), None, 0, block(10)).unwrap();
    assert!(
        !tier.contains(&key(1, 4)),
        "tail of the oldest chain goes first"
    );
    assert!(tier.contains(&key(1, 3)));
    tier.check_invariants().unwrap();
}

#[test]
fn a_recently_read_chain_outlives_an_idle_one() {
    let mut tier = DramTier::new(100);
    put_chain(&mut tier, 1, 5, 10);
    put_chain(&mut tier, 2, 5, 10);
    for pos in 0..5 {
        tier.get(&key(1, pos)).unwrap();
    }
    put_chain(&mut tier, 3, 5, 10);
    assert!((0..5).all(|pos| tier.contains(&key(1, pos))));
    assert!(!tier.contains(&key(2, 0)));
    tier.check_invariants().unwrap();
}

#[test]
fn a_block_larger_than_the_tier_is_refused() {
    let mut tier = DramTier::new(100);
    let err = tier.insert(key(1, 0), None, 0, block(101)).unwrap_err();
    assert_eq!(
        err,
        InsertError::Full {
            needed: 101,
            capacity: 100
        }
    );
}

#[test]
fn the_parent_of_a_new_block_is_never_evicted_for_it() {
    let mut tier = DramTier::new(20);
    tier.insert(key(1, 0), None, 0, block(10)).unwrap();
    tier.insert(key(1, 1), Some(key(1, 0)), 1, block(10))
        .unwrap();
    // Room for the third block can only come from evicting (1,1), its parent.
    let err = tier
        .insert(key(1, 2), Some(key(1, 1)), 2, block(10))
        .unwrap_err();
    assert!(matches!(err, InsertError::Full { .. }));
    tier.check_invariants().unwrap();
}

#[test]
fn removing_a_block_removes_its_descendants() {
    let mut tier = DramTier::new(1000);
    put_chain(&mut tier, 1, 6, 10);
    assert_eq!(tier.remove_subtree(&key(1, 2)), 4);
    assert_eq!(tier.len(), 2);
    tier.check_invariants().unwrap();
}

#[test]
fn wrong_position_under_a_known_parent_is_refused() {
    let mut tier = DramTier::new(1000);
    tier.insert(key(1, 0), None, 0, block(10)).unwrap();
    let err = tier
        .insert(key(1, 5), Some(key(1, 0)), 5, block(10))
        .unwrap_err();
    assert_eq!(
        err,
        InsertError::PositionMismatch {
            parent_position: 0,
            position: 5
        }
    );
}

#[test]
fn random_churn_at_three_times_capacity_keeps_every_invariant() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut tier = DramTier::new(10_000);
    let mut written = 0u64;
    let mut chain = 0u8;
    while written < 30_000 {
        chain = chain.wrapping_add(1);
        let len = rng.random_range(1..12);
        for pos in 0..len {
            let parent = (pos > 0).then(|| key(chain, pos - 1));
            let size = rng.random_range(50..400);
            let _ = tier.insert(key(chain, pos), parent, pos, block(size));
            written += size as u64;
            if rng.random_bool(0.2) {
                let _ = tier.get(&key(rng.random(), rng.random_range(0..12)));
            }
        }
        tier.check_invariants().unwrap();
    }
    assert!(tier.used() <= tier.capacity());
}
