//! Conformance of the segment log, run against every I/O engine: round trips, reopen against
//! an in-memory oracle, concurrency, limits.

mod ssd_support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use kvtier_store::tier::ssd::{IoEngineKind, Location, SegmentLog, SsdError};
use kvtier_store::Key;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssd_support::{config, engines, key, open, payload};

const MIB: u64 = 1 << 20;

#[test]
fn records_of_many_sizes_read_back_before_and_after_reopen() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), engine, 4 * MIB);
        let mut rng = StdRng::seed_from_u64(1);
        let mut sizes = vec![0, 1, 63, 64, 4031, 4032, 4033, 4095, 4096, 4097, 8192];
        sizes.extend([MIB as usize - 1, MIB as usize, MIB as usize + 1]);
        sizes.extend((0..50).map(|_| rng.random_range(0..200_000)));

        let log = open(&config);
        let written: Vec<(Key, Location, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(n, &size)| {
                let bytes = payload(n as u64, size);
                let location = log.append(&key(n as u64), &bytes, false).unwrap();
                assert_eq!(location.len as usize, size);
                (key(n as u64), location, bytes)
            })
            .collect();
        for (key, location, bytes) in &written {
            assert_eq!(
                &log.read(key, location).unwrap()[..],
                &bytes[..],
                "{engine:?}"
            );
        }
        assert_eq!(
            log.active_engine().as_str(),
            format!("{engine:?}").to_lowercase()
        );
        drop(log);

        let (log, recovery) = SegmentLog::open(config).unwrap();
        assert!(recovery.torn_tails.is_empty() && recovery.corrupt.is_empty());
        let scanned: Vec<Location> = recovery.records.iter().map(|r| r.location).collect();
        let expected: Vec<Location> = written.iter().map(|w| w.1).collect();
        assert_eq!(scanned, expected);
        for (key, location, bytes) in &written {
            assert_eq!(
                &log.read(key, location).unwrap()[..],
                &bytes[..],
                "{engine:?}"
            );
        }
    }
}

/// The index a store would keep: key -> (location, payload).
#[derive(Default)]
struct Oracle {
    entries: HashMap<Key, (Location, Vec<u8>)>,
    next_key: u64,
}

impl Oracle {
    fn random_key(&self, rng: &mut StdRng) -> Option<Key> {
        let n = self.entries.len();
        (n > 0).then(|| *self.entries.keys().nth(rng.random_range(0..n)).unwrap())
    }

    fn append(&mut self, log: &SegmentLog, rng: &mut StdRng) {
        let reuse = rng.random_bool(0.1) && self.next_key > 0;
        let n = if reuse {
            rng.random_range(0..self.next_key)
        } else {
            self.next_key += 1;
            self.next_key
        };
        let size = match rng.random_range(0..40) {
            0 => MIB as usize,
            1 => 0,
            2 => 4096,
            3 => 4032,
            _ => rng.random_range(0..64 << 10),
        };
        let bytes = payload(rng.random(), size);
        let location = log.append(&key(n), &bytes, rng.random_bool(0.2)).unwrap();
        if let Some((old, _)) = self.entries.insert(key(n), (location, bytes)) {
            log.mark_dead(&old);
        }
    }

    fn delete(&mut self, log: &SegmentLog, rng: &mut StdRng) {
        if let Some(key) = self.random_key(rng) {
            let (location, _) = self.entries.remove(&key).unwrap();
            log.mark_dead(&location);
        }
    }

    fn compact(&mut self, log: &SegmentLog) {
        let entries = &mut self.entries;
        let live = |key: &Key, at: &Location| entries.get(key).is_some_and(|e| e.0 == *at);
        let moves = log.compact(0.5, live, |_| {}).unwrap().moved;
        for moved in moves {
            let entry = entries.get_mut(&moved.key).unwrap();
            assert_eq!(entry.0, moved.from);
            entry.0 = moved.to;
        }
    }

    fn check_reads(&self, log: &SegmentLog) {
        for (key, (location, bytes)) in &self.entries {
            let read = log.read(key, location).unwrap();
            assert!(read[..] == bytes[..], "payload differs at {location:?}");
        }
    }

    /// What a store does at open: keep what the index knows, reclaim the rest.
    fn check_index(&self, log: &SegmentLog, records: &[kvtier_store::tier::ssd::ScannedRecord]) {
        let mut found = 0;
        for record in records {
            match self.entries.get(&record.key) {
                Some((location, _)) if *location == record.location => found += 1,
                _ => log.mark_dead(&record.location),
            }
        }
        assert_eq!(found, self.entries.len(), "records missing after reopen");
    }
}

#[test]
fn reopen_matches_an_oracle_across_random_rounds() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), engine, 2 * MIB);
        let mut rng = StdRng::seed_from_u64(2024);
        let mut oracle = Oracle::default();
        let mut log = open(&config);
        for _round in 0..12 {
            for _ in 0..60 {
                match rng.random_range(0..20) {
                    0..=10 => oracle.append(&log, &mut rng),
                    11..=16 => oracle.delete(&log, &mut rng),
                    17 => oracle.compact(&log),
                    _ => oracle.check_reads(&log),
                }
            }
            oracle.check_reads(&log);
            drop(log);
            let (reopened, recovery) = SegmentLog::open(config.clone()).unwrap();
            assert!(recovery.torn_tails.is_empty() && recovery.corrupt.is_empty());
            let seqs: Vec<u64> = recovery.records.iter().map(|r| r.seq).collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "sequence numbers not increasing"
            );
            oracle.check_index(&reopened, &recovery.records);
            oracle.check_reads(&reopened);
            log = reopened;
        }
        println!(
            "{engine:?}: {} live records, {:?}",
            oracle.entries.len(),
            log.stats()
        );
    }
}

#[test]
fn concurrent_appenders_and_readers_each_see_their_records() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(&config(dir.path(), engine, MIB));
        let written = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for writer in 0..2u64 {
                let (log, written) = (&log, &written);
                scope.spawn(move || {
                    for i in 0..150 {
                        let n = writer * 1000 + i;
                        let bytes = payload(n, (n as usize * 97) % 20_000);
                        let location = log.append(&key(n), &bytes, i.is_multiple_of(10)).unwrap();
                        written.lock().unwrap().push((n, location, bytes.len()));
                    }
                });
            }
            for reader in 0..2u64 {
                let (log, written) = (&log, &written);
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(reader);
                    for _ in 0..300 {
                        let pick = {
                            let written = written.lock().unwrap();
                            (!written.is_empty())
                                .then(|| written[rng.random_range(0..written.len())])
                        };
                        if let Some((n, location, len)) = pick {
                            let read = log.read(&key(n), &location).unwrap();
                            assert_eq!(read[..], payload(n, len)[..]);
                        }
                    }
                });
            }
        });
        assert_eq!(written.into_inner().unwrap().len(), 300);
    }
}

#[test]
fn a_payload_larger_than_a_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&config(dir.path(), IoEngineKind::Psync, MIB));
    let max = log.max_payload() as usize;
    assert!(log.append(&key(1), &vec![1; max], false).is_ok());
    let refused = log.append(&key(2), &vec![1; max + 1], false);
    assert!(
        matches!(refused, Err(SsdError::TooLarge { .. })),
        "{refused:?}"
    );
}

#[test]
fn a_locked_directory_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), IoEngineKind::Psync, MIB);
    let first = open(&config);
    let second = SegmentLog::open(config.clone());
    assert!(matches!(second, Err(SsdError::Locked { .. })), "{second:?}");
    drop(first);
    assert!(SegmentLog::open(config).is_ok());
}

#[test]
fn a_read_with_the_wrong_key_or_a_bad_location_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&config(dir.path(), IoEngineKind::Psync, MIB));
    let location = log.append(&key(1), b"abc", false).unwrap();
    let wrong_key = log.read(&key(2), &location).unwrap_err();
    assert!(matches!(wrong_key, SsdError::LocationMismatch { .. }) && wrong_key.is_miss());
    let wrong_len = Location { len: 4, ..location };
    assert!(log.read(&key(1), &wrong_len).unwrap_err().is_miss());
    let past_end = Location {
        offset: location.offset + 4096,
        ..location
    };
    assert!(matches!(
        log.read(&key(1), &past_end),
        Err(SsdError::OutOfRange { .. })
    ));
    let unknown = Location {
        segment: 99,
        ..location
    };
    assert!(matches!(
        log.read(&key(1), &unknown),
        Err(SsdError::UnknownSegment { .. })
    ));
}

/// Not a benchmark (debug build, shared machine): a sanity check that 1 MiB records move at
/// disk speed, printed for the record.
#[test]
fn mib_records_append_and_read_at_disk_speed() {
    const RECORDS: u64 = 128;
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(&config(dir.path(), engine, 64 * MIB));
        let bytes = payload(9, MIB as usize);

        let started = Instant::now();
        let locations: Vec<Location> = (0..RECORDS)
            .map(|n| log.append(&key(n), &bytes, false).unwrap())
            .collect();
        log.sync().unwrap();
        let write_s = started.elapsed().as_secs_f64();

        let started = Instant::now();
        for (n, location) in locations.iter().enumerate() {
            let read = log.read(&key(n as u64), location).unwrap();
            assert_eq!(read.len(), MIB as usize);
        }
        let read_s = started.elapsed().as_secs_f64();
        let mb = (RECORDS * MIB) as f64 / 1e6;
        println!(
            "{engine:?}: append+sync {:.0} MB/s, read {:.0} MB/s ({} x 1 MiB)",
            mb / write_s,
            mb / read_s,
            RECORDS
        );
    }
}
