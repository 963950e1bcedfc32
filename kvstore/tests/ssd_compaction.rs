//! Compaction reclaims the space of dead records and keeps live ones readable.

mod ssd_support;

use std::collections::HashMap;

use kvtier_store::tier::ssd::{Location, SegmentLog};
use kvtier_store::Key;
use ssd_support::{config, engines, key, open, payload, segment_path};

#[test]
fn compaction_reclaims_dead_space_and_moves_live_records() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), engine, 256 << 10);
        let log = open(&config);
        let mut index: HashMap<Key, Location> = HashMap::new();
        for n in 0..200 {
            let location = log
                .append(&key(n), &payload(n, 6000 + n as usize), false)
                .unwrap();
            index.insert(key(n), location);
        }
        // Keep one record in ten.
        for n in (0..200u64).filter(|n| !n.is_multiple_of(10)) {
            log.mark_dead(&index.remove(&key(n)).unwrap());
        }
        let before = log.disk_bytes();
        let segments_before = log.segment_usage().len();

        let mut relocated = 0;
        let live = |key: &Key, at: &Location| index.get(key) == Some(at);
        let summary = log
            .compact(0.5, live, |moves| relocated += moves.len())
            .unwrap();
        for moved in &summary.moved {
            assert_eq!(index.insert(moved.key, moved.to), Some(moved.from));
        }
        let after = log.disk_bytes();
        println!(
            "{engine:?}: {before} -> {after} bytes, {segments_before} segments, {} removed",
            summary.segments_removed.len()
        );
        assert!(after * 3 < before, "disk bytes {before} -> {after}");
        assert_eq!(relocated, summary.moved.len());
        assert!(!summary.segments_removed.is_empty());
        for id in &summary.segments_removed {
            assert!(!segment_path(dir.path(), *id).exists());
            let gone = Location {
                segment: *id,
                offset: 4096,
                len: 0,
            };
            assert!(log.read(&key(0), &gone).unwrap_err().is_miss());
        }
        for (n, location) in index.iter().map(|(k, l)| (k, *l)) {
            let expected = (0..200).find(|m| key(*m) == *n).unwrap();
            let read = log.read(n, &location).unwrap();
            assert_eq!(read[..], payload(expected, 6000 + expected as usize)[..]);
        }
        assert_eq!(log.stats().compaction_bytes, summary.bytes_rewritten);
        drop(log);

        let (_, recovery) = SegmentLog::open(config).unwrap();
        for location in index.values() {
            assert!(recovery.records.iter().any(|r| r.location == *location));
        }
    }
}

#[test]
fn segments_above_the_threshold_and_the_head_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let engine = kvtier_store::tier::ssd::IoEngineKind::Psync;
    let log = open(&config(dir.path(), engine, 128 << 10));
    let locations: Vec<Location> = (0..40)
        .map(|n| log.append(&key(n), &payload(n, 10_000), false).unwrap())
        .collect();
    let usage = log.segment_usage();
    assert!(usage.len() >= 3);
    let summary = log.compact(0.5, |_, _| true, |_| {}).unwrap();
    assert!(summary.moved.is_empty() && summary.segments_removed.is_empty());

    // Everything dead: all sealed segments go, the head stays.
    for location in &locations {
        log.mark_dead(location);
    }
    let summary = log.compact(0.5, |_, _| false, |_| {}).unwrap();
    assert_eq!(summary.segments_removed.len(), usage.len() - 1);
    assert_eq!(log.segment_usage().len(), 1);
    assert_eq!(log.segment_usage()[0].id, usage.last().unwrap().id);
}
