//! The on-disk half of the `ssd` tier: an append-only log of segment files holding opaque
//! records under 32-byte keys. The index (key -> [`Location`]) lives elsewhere; this module
//! knows nothing of it and only answers questions about bytes.
//!
//! # Protocol
//!
//! 1. [`SegmentLog::open`] locks the directory, scans every segment (cutting off torn
//!    tails) and returns a [`Recovery`] listing every intact record. The caller checks its
//!    index against it: an index entry whose location is not among the records is gone
//!    (torn, corrupt or compacted away) and must be dropped; a record the index does not
//!    point at is either recovered into the index or reclaimed with
//!    [`SegmentLog::mark_dead`]. Until then every scanned record counts as live.
//! 2. [`SegmentLog::append`] returns the record's [`Location`] for the index. With
//!    `durable`, it returns after fdatasync; otherwise [`SegmentLog::sync`] later makes all
//!    appends so far durable. After a process crash, every append that returned survives;
//!    after a power loss, every append that was made durable does.
//! 3. [`SegmentLog::read`] checks the record's checksums and key. An error for which
//!    [`SsdError::is_miss`] holds means this record cannot be served: answer a miss, drop
//!    the index entry and call `mark_dead`.
//! 4. When the index lets go of a location (delete, eviction), call `mark_dead` once.
//! 5. [`SegmentLog::compact`] rewrites the live records of mostly-dead segments; see
//!    [`compact`](SegmentLog::compact) for the callbacks. A read racing with compaction may
//!    see [`SsdError::UnknownSegment`] for a location that was just moved: a miss.
//!
//! All methods take `&self`. Appends are serialised; reads run concurrently with each other
//! and with appends. Lock order: compaction run -> head segment -> segment map; no lock is
//! held while `compact`'s callbacks run except the compaction run's own, so they may call
//! back into the log (but not `compact`).
//!
//! # Format
//!
//! Segment files and their header page are described in `segment.rs`, records in
//! `record.rs`; both carry a format version (1). Records start on 4 KiB boundaries and are
//! padded to 4 KiB so that every write and read is one aligned O_DIRECT transfer.

mod aligned;
mod compact;
mod config;
mod error;
pub mod io;
mod location;
mod lock;
mod log;
mod pool;
mod record;
mod recovery;
mod scan;
mod segment;
mod stats;
mod tier;

pub use aligned::{AlignedBuf, ALIGN};
pub use compact::{Compaction, Moved};
pub use config::{IoEngineKind, SsdConfig, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES};
pub use error::SsdError;
pub use io::{ActiveEngine, FailpointEngine, Failpoints, IoEngine};
pub use location::Location;
pub use log::{SegmentLog, SegmentUsage};
pub use record::{HEADER_LEN as RECORD_HEADER_LEN, RECORD_VERSION};
pub use recovery::{CorruptRange, Recovery, ScannedRecord, TornTail};
pub use stats::SsdStats;
pub use tier::Ssd;
