//! Damage and failures: torn tails, flipped bytes, a full device.

mod ssd_support;

use std::fs::OpenOptions;

use kvtier_store::tier::ssd::{
    io, CorruptRange, FailpointEngine, Location, SegmentLog, SsdError, TornTail,
};
use kvtier_store::Key;
use ssd_support::{config, engines, flip_byte, key, open, payload, segment_path};

const MIB: u64 = 1 << 20;

/// Appends `count` records of 10,000 bytes to a fresh log in `dir`, durably, and closes it.
fn write_records(dir: &std::path::Path, count: u64) -> Vec<(Key, Location, Vec<u8>)> {
    let log = open(&config(dir, io_kind(), MIB));
    let written = (0..count)
        .map(|n| {
            let bytes = payload(n, 10_000);
            (key(n), log.append(&key(n), &bytes, true).unwrap(), bytes)
        })
        .collect();
    drop(log);
    written
}

fn io_kind() -> kvtier_store::tier::ssd::IoEngineKind {
    kvtier_store::tier::ssd::IoEngineKind::Auto
}

fn reads_back(log: &SegmentLog, records: &[(Key, Location, Vec<u8>)]) {
    for (key, location, bytes) in records {
        assert_eq!(log.read(key, location).unwrap()[..], bytes[..]);
    }
}

#[test]
fn a_truncated_last_record_is_dropped_at_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_records(dir.path(), 5);
    let last = written[4].1;
    let file = OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), 1))
        .unwrap();
    file.set_len(last.offset + 5000).unwrap();

    let (log, recovery) = SegmentLog::open(config(dir.path(), io_kind(), MIB)).unwrap();
    let torn = TornTail {
        segment: 1,
        offset: last.offset,
        dropped_bytes: 5000,
    };
    assert_eq!(recovery.torn_tails, vec![torn]);
    assert_eq!(recovery.records.len(), 4);
    reads_back(&log, &written[..4]);
    assert!(log.read(&key(4), &last).unwrap_err().is_miss());

    let again = log.append(&key(9), b"after the tear", true).unwrap();
    assert_eq!(again.offset, last.offset);
    drop(log);
    let (log, recovery) = SegmentLog::open(config(dir.path(), io_kind(), MIB)).unwrap();
    assert!(recovery.torn_tails.is_empty());
    assert_eq!(&log.read(&key(9), &again).unwrap()[..], b"after the tear");
}

#[test]
fn a_garbled_last_record_is_dropped_at_reopen() {
    // A flipped byte in the payload, then one in the header, of the segment's last record.
    for byte_in_record in [64 + 5000, 20] {
        let dir = tempfile::tempdir().unwrap();
        let written = write_records(dir.path(), 4);
        let last = written[3].1;
        flip_byte(&segment_path(dir.path(), 1), last.offset + byte_in_record);

        let (log, recovery) = SegmentLog::open(config(dir.path(), io_kind(), MIB)).unwrap();
        assert_eq!(recovery.torn_tails.len(), 1, "byte {byte_in_record}");
        assert_eq!(recovery.torn_tails[0].offset, last.offset);
        assert_eq!(recovery.records.len(), 3);
        reads_back(&log, &written[..3]);
        assert!(log.append(&key(7), b"x", true).is_ok());
    }
}

#[test]
fn a_segment_torn_at_creation_is_removed_at_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_records(dir.path(), 2);
    let torn_file = segment_path(dir.path(), 2);
    std::fs::write(&torn_file, [0u8; 100]).unwrap();

    let (log, recovery) = SegmentLog::open(config(dir.path(), io_kind(), MIB)).unwrap();
    let torn = TornTail {
        segment: 2,
        offset: 0,
        dropped_bytes: 100,
    };
    assert_eq!(recovery.torn_tails, vec![torn]);
    assert!(!torn_file.exists());
    reads_back(&log, &written);
}

#[test]
fn a_flipped_payload_byte_is_a_checksum_error_and_neighbours_still_read() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_records(dir.path(), 3);
        let victim = written[1].1;
        flip_byte(&segment_path(dir.path(), 1), victim.offset + 64 + 1234);

        let (log, recovery) = SegmentLog::open(config(dir.path(), engine, MIB)).unwrap();
        let corrupt = CorruptRange {
            segment: 1,
            offset: victim.offset,
            len: victim.disk_bytes(),
        };
        assert_eq!(recovery.corrupt, vec![corrupt]);
        assert_eq!(recovery.records.len(), 2);

        let err = log.read(&key(1), &victim).unwrap_err();
        assert!(
            matches!(err, SsdError::Checksum { segment: 1, .. }),
            "{err:?}"
        );
        assert!(err.is_miss());
        reads_back(&log, &[written[0].clone(), written[2].clone()]);
        assert_eq!(log.stats().checksum_errors, 1);
    }
}

#[test]
fn a_flipped_header_byte_mid_segment_is_skipped_by_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_records(dir.path(), 3);
    let victim = written[1].1;
    flip_byte(&segment_path(dir.path(), 1), victim.offset + 20);

    let (log, recovery) = SegmentLog::open(config(dir.path(), io_kind(), MIB)).unwrap();
    assert_eq!(recovery.corrupt.len(), 1);
    assert_eq!(recovery.corrupt[0].offset, victim.offset);
    assert_eq!(recovery.corrupt[0].len, victim.disk_bytes());
    assert_eq!(recovery.records.len(), 2);
    assert!(matches!(
        log.read(&key(1), &victim),
        Err(SsdError::Checksum { .. })
    ));
    reads_back(&log, &[written[0].clone(), written[2].clone()]);
}

#[test]
fn injected_enospc_fails_appends_with_no_space_until_cleared() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), engine, 256 << 10);
        let inner = io::open_engine(engine).unwrap();
        let (faulty, failpoints) = FailpointEngine::wrap(inner);
        let (log, _) = SegmentLog::open_with_engine(config.clone(), faulty).unwrap();
        let before = log.append(&key(1), &payload(1, 100_000), true).unwrap();

        failpoints.fail_writes(Some(libc::ENOSPC));
        let small = log.append(&key(2), b"small", false);
        assert!(matches!(small, Err(SsdError::NoSpace { .. })), "{small:?}");
        // Too big for what is left of the head segment: fails while starting the next one.
        let rolling = log.append(&key(3), &payload(3, 200_000), true);
        assert!(
            matches!(rolling, Err(SsdError::NoSpace { .. })),
            "{rolling:?}"
        );
        assert!(!segment_path(dir.path(), 2).exists());
        assert_eq!(
            log.read(&key(1), &before).unwrap()[..],
            payload(1, 100_000)[..]
        );

        failpoints.clear();
        let after = log.append(&key(4), &payload(4, 200_000), true).unwrap();
        assert_eq!(after.segment, 2);
        assert_eq!(
            log.read(&key(4), &after).unwrap()[..],
            payload(4, 200_000)[..]
        );
        drop(log);

        let (_, recovery) = SegmentLog::open(config).unwrap();
        let keys: Vec<Key> = recovery.records.iter().map(|r| r.key).collect();
        assert_eq!(keys, vec![key(1), key(4)], "{engine:?}");
    }
}

#[test]
fn a_failing_sync_fails_durable_appends_only() {
    let dir = tempfile::tempdir().unwrap();
    let inner = io::open_engine(io_kind()).unwrap();
    let (faulty, failpoints) = FailpointEngine::wrap(inner);
    let (log, _) =
        SegmentLog::open_with_engine(config(dir.path(), io_kind(), MIB), faulty).unwrap();

    failpoints.fail_syncs(Some(libc::ENOSPC));
    let durable = log.append(&key(1), b"durable", true);
    assert!(
        matches!(durable, Err(SsdError::NoSpace { .. })),
        "{durable:?}"
    );
    let relaxed = log.append(&key(2), b"relaxed", false).unwrap();
    assert!(matches!(log.sync(), Err(SsdError::NoSpace { .. })));

    failpoints.fail_reads(Some(libc::EIO));
    let read = log.read(&key(2), &relaxed).unwrap_err();
    assert!(
        matches!(read, SsdError::Io { .. }) && !read.is_miss(),
        "{read:?}"
    );

    failpoints.clear();
    log.sync().unwrap();
    assert!(log.append(&key(3), b"durable again", true).is_ok());
    assert_eq!(&log.read(&key(2), &relaxed).unwrap()[..], b"relaxed");
}
