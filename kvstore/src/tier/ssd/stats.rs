//! Counters of the segment log, kept with relaxed atomics and read as one snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use super::io::ActiveEngine;

/// A snapshot of the log's counters and sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsdStats {
    pub engine: ActiveEngine,
    pub segments: u64,
    /// Bytes of all segment files: headers, records (live or dead) and padding.
    pub disk_bytes: u64,
    /// Bytes of records not marked dead.
    pub live_bytes: u64,
    pub appends: u64,
    /// Bytes written to segment files, compaction included.
    pub bytes_written: u64,
    pub reads: u64,
    pub bytes_read: u64,
    pub checksum_errors: u64,
    pub compacted_segments: u64,
    /// Bytes of live records compaction rewrote.
    pub compaction_bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub appends: AtomicU64,
    pub bytes_written: AtomicU64,
    pub reads: AtomicU64,
    pub bytes_read: AtomicU64,
    pub checksum_errors: AtomicU64,
    pub compacted_segments: AtomicU64,
    pub compaction_bytes: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
