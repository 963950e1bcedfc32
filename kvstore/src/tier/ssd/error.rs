use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::ConfigError;

/// What went wrong in the segment log.
///
/// [`SsdError::is_miss`] separates "this record cannot be served" (the caller drops its index
/// entry and answers a miss) from failures of the device or the directory.
#[derive(Debug, Error)]
pub enum SsdError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The device is full. Reads keep working; appends work again once space returns.
    #[error("no space left on the device while {op}")]
    NoSpace { op: &'static str },
    #[error("a {len}-byte payload exceeds the {max}-byte record limit")]
    TooLarge { len: u64, max: u64 },
    /// The bytes at the location fail their checksum or are no record at all.
    #[error("checksum mismatch in segment {segment} at offset {offset}")]
    Checksum { segment: u64, offset: u64 },
    /// An intact record is there, but for another key or length.
    #[error("segment {segment} holds another record at offset {offset}")]
    LocationMismatch { segment: u64, offset: u64 },
    /// The segment was compacted away or never existed.
    #[error("segment {segment} does not exist")]
    UnknownSegment { segment: u64 },
    #[error("offset {offset} is outside segment {segment}")]
    OutOfRange { segment: u64, offset: u64 },
    #[error("io_uring is unavailable")]
    UringUnavailable(#[source] io::Error),
    #[error("{path} is locked by another process")]
    Locked { path: PathBuf },
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SsdError {
    /// True when this record is unreadable but the log is fine: the caller should treat it
    /// as a miss and forget the location.
    pub fn is_miss(&self) -> bool {
        matches!(
            self,
            SsdError::Checksum { .. }
                | SsdError::LocationMismatch { .. }
                | SsdError::UnknownSegment { .. }
                | SsdError::OutOfRange { .. }
        )
    }

    /// Wraps an I/O failure, turning a full device into [`SsdError::NoSpace`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => SsdError::NoSpace { op },
            _ => SsdError::Io {
                op,
                path: path.into(),
                source,
            },
        }
    }
}
