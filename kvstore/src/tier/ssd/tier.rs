//! The segment log as a [`Tier`]: a byte capacity over the records it holds live.
//!
//! Capacity counts the on-disk size of live records (header and padding included), not
//! dead space awaiting compaction, so a full tier is one whose live data fills it.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{Location, SegmentLog, SsdError};
use crate::tier::{Slot, Tier, TierError, TierKind};
use crate::Key;

/// The `ssd` tier.
#[derive(Debug)]
pub struct Ssd {
    log: SegmentLog,
    capacity: u64,
    used: AtomicU64,
}

impl Ssd {
    /// Wraps an opened log; `live` is the bytes of the records the caller keeps.
    pub fn new(log: SegmentLog, capacity: u64, live: u64) -> Self {
        Ssd {
            log,
            capacity,
            used: AtomicU64::new(live),
        }
    }

    pub fn log(&self) -> &SegmentLog {
        &self.log
    }

    fn location(slot: &Slot) -> Result<&Location, TierError> {
        match slot {
            Slot::Disk(location) => Ok(location),
            _ => Err(TierError::ForeignSlot { tier: "ssd" }),
        }
    }
}

pub(crate) fn tier_error(error: SsdError) -> TierError {
    match error {
        SsdError::NoSpace { .. } => TierError::NoSpace { tier: "ssd" },
        error if error.is_miss() => TierError::Corrupt {
            tier: "ssd",
            reason: error.to_string(),
        },
        error => TierError::Io {
            tier: "ssd",
            reason: error.to_string(),
        },
    }
}

impl Tier for Ssd {
    fn kind(&self) -> TierKind {
        TierKind::Ssd
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    fn write(&self, key: &Key, block: &Bytes, durable: bool) -> Result<Slot, TierError> {
        let needed = Location {
            segment: 0,
            offset: 0,
            len: block.len() as u32,
        }
        .disk_bytes();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(needed)
                    .filter(|&total| total <= self.capacity)
            })
            .map_err(|used| TierError::Full {
                tier: "ssd",
                needed,
                free: self.capacity - used,
            })?;
        match self.log.append(key, block, durable) {
            Ok(location) => Ok(Slot::Disk(location)),
            Err(error) => {
                self.used.fetch_sub(needed, Ordering::AcqRel);
                Err(tier_error(error))
            }
        }
    }

    /// The block under `slot`. Its record header is checked here; its payload is a block
    /// with its own checksum, which every reader of a tier verifies.
    fn read(&self, key: &Key, slot: &Slot) -> Result<Bytes, TierError> {
        self.log
            .read_for_caller_check(key, Self::location(slot)?)
            .map_err(tier_error)
    }

    fn free(&self, slot: &Slot) {
        if let Slot::Disk(location) = slot {
            self.log.mark_dead(location);
            self.used.fetch_sub(location.disk_bytes(), Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::ssd::{IoEngineKind, SsdConfig};

    fn open(dir: &std::path::Path, engine: IoEngineKind, capacity: u64) -> Ssd {
        let mut config = SsdConfig::new(dir);
        config.io_engine = engine;
        config.segment_bytes = bytesize::ByteSize::mib(4);
        let (log, _) = SegmentLog::open(config).unwrap();
        Ssd::new(log, capacity, 0)
    }

    #[test]
    fn ssd_passes_the_tier_conformance_suite_with_psync() {
        let dirs = std::cell::RefCell::new(Vec::new());
        crate::tier::conformance::run_all(|capacity| {
            let dir = tempfile::tempdir().unwrap();
            let tier = open(dir.path(), IoEngineKind::Psync, capacity);
            dirs.borrow_mut().push(dir);
            tier
        });
    }

    #[test]
    fn ssd_passes_the_tier_conformance_suite_with_io_uring() {
        if crate::tier::ssd::io::open_engine(IoEngineKind::Uring).is_err() {
            eprintln!("io_uring unavailable here: skipped");
            return;
        }
        let dirs = std::cell::RefCell::new(Vec::new());
        crate::tier::conformance::run_all(|capacity| {
            let dir = tempfile::tempdir().unwrap();
            let tier = open(dir.path(), IoEngineKind::Uring, capacity);
            dirs.borrow_mut().push(dir);
            tier
        });
    }
}
