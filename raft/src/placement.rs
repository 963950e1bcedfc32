//! Placement of partitions on nodes: a pure function of the old table and the owners.
//!
//! It keeps every replica that is still on an owner, fills each set up to the replication
//! factor from the least loaded owners, then moves single replicas from the most to the
//! least loaded owner until loads differ by at most one. Few moves means few blocks to
//! pull when a node joins or leaves.

use std::collections::BTreeMap;

use crate::types::NodeId;

/// The new table for `old.len()` partitions over `owners` (sorted, distinct).
pub fn place(old: &[Vec<NodeId>], owners: &[NodeId], replication: usize) -> Vec<Vec<NodeId>> {
    let want = replication.min(owners.len());
    let mut table: Vec<Vec<NodeId>> = old
        .iter()
        .map(|set| {
            let mut kept: Vec<NodeId> = set
                .iter()
                .copied()
                .filter(|id| owners.contains(id))
                .collect();
            kept.truncate(want);
            kept
        })
        .collect();
    let mut load: BTreeMap<NodeId, usize> = owners.iter().map(|id| (*id, 0)).collect();
    for id in table.iter().flatten() {
        *load.entry(*id).or_default() += 1;
    }
    for set in &mut table {
        while set.len() < want {
            let Some(id) = least_loaded(&load, set) else {
                break;
            };
            set.push(id);
            *load.entry(id).or_default() += 1;
        }
    }
    even_out(&mut table, &mut load);
    spread_primaries(&mut table);
    table
}

/// Hands primaries from the owner with more of them to a replica in the same set with at
/// least two fewer, until no such pair is left; current primaries stay where they are
/// balanced. Only routing changes; no block moves.
fn spread_primaries(table: &mut [Vec<NodeId>]) {
    let mut primaries: BTreeMap<NodeId, usize> = BTreeMap::new();
    for set in table.iter() {
        if let Some(first) = set.first() {
            *primaries.entry(*first).or_default() += 1;
        }
    }
    let count = |p: &BTreeMap<NodeId, usize>, id: &NodeId| p.get(id).copied().unwrap_or(0);
    let mut changed = true;
    while changed {
        changed = false;
        for set in table.iter_mut() {
            let Some(current) = set.first().copied() else {
                continue;
            };
            let best = (1..set.len()).min_by_key(|i| (count(&primaries, &set[*i]), *i));
            let Some(best) = best else {
                continue;
            };
            if count(&primaries, &set[best]) + 1 < count(&primaries, &current) {
                *primaries.entry(current).or_default() -= 1;
                *primaries.entry(set[best]).or_default() += 1;
                set.swap(0, best);
                changed = true;
            }
        }
    }
}

/// The owner with the fewest replicas that is not in `set`; ties go to the lowest id.
fn least_loaded(load: &BTreeMap<NodeId, usize>, set: &[NodeId]) -> Option<NodeId> {
    load.iter()
        .filter(|(id, _)| !set.contains(id))
        .min_by_key(|(id, n)| (**n, **id))
        .map(|(id, _)| *id)
}

fn even_out(table: &mut [Vec<NodeId>], load: &mut BTreeMap<NodeId, usize>) {
    loop {
        let Some((&heavy, &most)) = load
            .iter()
            .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
        else {
            return;
        };
        let moved = table.iter_mut().find_map(|set| {
            let slot = set.iter().position(|id| *id == heavy)?;
            let light = least_loaded(load, set)?;
            (load[&light] + 1 < most).then(|| {
                set[slot] = light;
                light
            })
        });
        let Some(light) = moved else {
            return;
        };
        *load.entry(heavy).or_default() -= 1;
        *load.entry(light).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(table: &[Vec<NodeId>]) -> BTreeMap<NodeId, usize> {
        let mut load = BTreeMap::new();
        for id in table.iter().flatten() {
            *load.entry(*id).or_default() += 1;
        }
        load
    }

    #[test]
    fn a_joining_node_takes_a_fair_share_and_moves_little() {
        let before = place(&vec![Vec::new(); 64], &[1, 2, 3], 2);
        let after = place(&before, &[1, 2, 3, 4], 2);
        let load = loads(&after);
        assert!(load.values().all(|n| (31..=33).contains(n)), "{load:?}");
        let moved: usize = before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.iter().filter(|id| !b.contains(id)).count())
            .sum();
        assert_eq!(moved, load[&4]);
    }

    #[test]
    fn a_lost_owner_is_replaced_from_the_survivors() {
        let before = place(&vec![Vec::new(); 16], &[1, 2, 3], 2);
        let after = place(&before, &[1, 3], 2);
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(a.len(), 2);
            assert!(!a.contains(&2));
            for id in b.iter().filter(|id| **id != 2) {
                assert!(a.contains(id), "survivor {id} lost its replica");
            }
        }
    }

    #[test]
    fn primaries_are_spread_over_the_owners() {
        let mut table = vec![Vec::new(); 30];
        for owners in [&[1][..], &[1, 2], &[1, 2, 3]] {
            table = place(&table, owners, 2);
        }
        let mut primaries: BTreeMap<NodeId, usize> = BTreeMap::new();
        for set in &table {
            *primaries.entry(set[0]).or_default() += 1;
        }
        assert!(primaries.values().all(|n| *n == 10), "{primaries:?}");
    }

    #[test]
    fn replication_is_capped_by_the_owner_count() {
        let table = place(&vec![Vec::new(); 4], &[1], 3);
        assert!(table.iter().all(|set| set == &vec![1]));
        assert!(place(&table, &[], 3).iter().all(|set| set.is_empty()));
    }
}
