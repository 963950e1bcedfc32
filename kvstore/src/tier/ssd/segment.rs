//! One segment file: its name, its header page and its byte accounting.
//!
//! A segment is `seg-NNNNNN.log` in the data directory, NNNNNN its id in decimal (at least
//! six digits). The first 4 KiB page is the segment header, records follow back to back:
//!
//! ```text
//! offset  size  field
//!      0     4  magic "KVSG"
//!      4     2  format version (1)
//!      6     2  reserved, zero
//!      8     8  segment id (matches the file name)
//!     16     8  first sequence number the segment may hold
//!     24     4  record alignment in bytes (4096)
//!     28    32  reserved, zero
//!     60     4  CRC32C of bytes 0..60
//!     64     -  zeros to 4096
//! ```
//!
//! Files are opened with O_DIRECT; where the filesystem refuses it (EINVAL), they are
//! opened buffered with one warning and the same aligned I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::aligned::{AlignedBuf, ALIGN};
use super::error::SsdError;
use super::io::{write_all_at, IoEngine};

pub const SEGMENT_HEADER_LEN: u64 = ALIGN as u64;
const SEGMENT_MAGIC: [u8; 4] = *b"KVSG";
const SEGMENT_VERSION: u16 = 1;
const CRC_COVERED: usize = 60;

/// The decoded header page of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub id: u64,
    pub first_seq: u64,
}

impl SegmentHeader {
    fn encode(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[0..4].copy_from_slice(&SEGMENT_MAGIC);
        out[4..6].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        out[24..28].copy_from_slice(&(ALIGN as u32).to_le_bytes());
        let crc = crc32c::crc32c(&out[..CRC_COVERED]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// None unless `bytes` start with an intact version-1 header.
    pub(crate) fn decode(bytes: &[u8]) -> Option<SegmentHeader> {
        let bytes = bytes.get(..64)?;
        let word = |at: usize| -> [u8; 8] {
            let mut out = [0u8; 8];
            out.copy_from_slice(&bytes[at..at + 8]);
            out
        };
        let crc = u32::from_le_bytes([bytes[60], bytes[61], bytes[62], bytes[63]]);
        let intact = bytes[0..4] == SEGMENT_MAGIC
            && bytes[4..6] == SEGMENT_VERSION.to_le_bytes()
            && crc == crc32c::crc32c(&bytes[..CRC_COVERED]);
        intact.then(|| SegmentHeader {
            id: u64::from_le_bytes(word(8)),
            first_seq: u64::from_le_bytes(word(16)),
        })
    }
}

pub(crate) fn file_name(id: u64) -> String {
    format!("seg-{id:06}.log")
}

/// The id in a segment file name, or None for any other file.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// An open segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub id: u64,
    pub path: PathBuf,
    pub file: File,
    /// Bytes of the file that belong to the log: header page plus whole records.
    len: AtomicU64,
    /// Bytes of records not yet marked dead.
    live: AtomicU64,
    /// Written since the last data sync.
    dirty: AtomicBool,
}

impl Segment {
    /// Creates segment `id`, writes its header page and makes the file's name durable.
    /// Its `bytes` are allocated up front (where the filesystem can), so appends write
    /// into allocated blocks instead of allocating them one O_DIRECT write at a time; the
    /// file's size still grows only with what is written, which recovery reads.
    pub(crate) fn create(
        dir: &Path,
        id: u64,
        first_seq: u64,
        bytes: u64,
        engine: &dyn IoEngine,
    ) -> Result<Segment, SsdError> {
        let path = dir.join(file_name(id));
        let file = open_file(&path, true).map_err(|e| SsdError::io("creating", &path, e))?;
        preallocate(&file, bytes);
        let segment = Segment::new(id, path, file, 0);
        if let Err(err) = segment.write_header(first_seq, engine, dir) {
            let _ = std::fs::remove_file(&segment.path);
            return Err(err);
        }
        Ok(segment)
    }

    fn write_header(
        &self,
        first_seq: u64,
        engine: &dyn IoEngine,
        dir: &Path,
    ) -> Result<(), SsdError> {
        let mut page = AlignedBuf::with_capacity(ALIGN);
        page.extend_from_slice(
            &SegmentHeader {
                id: self.id,
                first_seq,
            }
            .encode(),
        );
        page.pad_zeros(ALIGN);
        write_all_at(engine, &self.file, &page, 0)
            .map_err(|e| SsdError::io("writing", &self.path, e))?;
        sync_dir(dir).map_err(|e| SsdError::io("syncing", dir, e))?;
        self.len.store(SEGMENT_HEADER_LEN, Ordering::Release);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Opens an existing segment file; its length is set once it has been scanned.
    pub(crate) fn open(dir: &Path, id: u64) -> Result<Segment, SsdError> {
        let path = dir.join(file_name(id));
        let file = open_file(&path, false).map_err(|e| SsdError::io("opening", &path, e))?;
        Ok(Segment::new(id, path, file, 0))
    }

    fn new(id: u64, path: PathBuf, file: File, len: u64) -> Segment {
        Segment {
            id,
            path,
            file,
            len: AtomicU64::new(len),
            live: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Publishes a new end of the log in this file; readers may then read up to it.
    pub(crate) fn set_len(&self, len: u64) {
        self.len.store(len, Ordering::Release);
    }

    pub(crate) fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    pub(crate) fn add_live(&self, bytes: u64) {
        self.live.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn sub_live(&self, bytes: u64) {
        let _ = self
            .live
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |live| {
                Some(live.saturating_sub(bytes))
            });
    }

    /// Live record bytes over all record bytes; 1 for a segment with no records.
    pub(crate) fn live_ratio(&self) -> f64 {
        let records = self.len().saturating_sub(SEGMENT_HEADER_LEN);
        if records == 0 {
            return 1.0;
        }
        self.live() as f64 / records as f64
    }

    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Clears the dirty flag, returning whether it was set.
    pub(crate) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }
}

fn open_file(path: &Path, create: bool) -> io::Result<File> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let open = |flags: i32| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_DIRECT) {
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(path = %path.display(), "O_DIRECT refused, using buffered I/O");
            }
            open(0)
        }
        other => other,
    }
}

/// Makes creations and removals in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Allocates `bytes` of `file` without changing its size; best effort, since a
/// filesystem without fallocate only loses the head start.
fn preallocate(file: &File, bytes: u64) {
    let Ok(len) = libc::off_t::try_from(bytes) else {
        return;
    };
    // SAFETY: fallocate only reads the descriptor, which `file` keeps open for the call.
    let done = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
    if done != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "segment preallocation skipped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(file_name(1), "seg-000001.log");
        assert_eq!(file_name(12_345_678), "seg-12345678.log");
        assert_eq!(parse_file_name("seg-000001.log"), Some(1));
        assert_eq!(parse_file_name("seg-12345678.log"), Some(12_345_678));
        assert_eq!(parse_file_name("seg-01.log"), None);
        assert_eq!(parse_file_name("seg-00000a.log"), None);
        assert_eq!(parse_file_name("LOCK"), None);
    }

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let header = SegmentHeader {
            id: 7,
            first_seq: 99,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Some(header));
        let mut damaged = bytes;
        damaged[9] ^= 1;
        assert_eq!(SegmentHeader::decode(&damaged), None);
        assert_eq!(SegmentHeader::decode(&[0; 64]), None);
    }
}
