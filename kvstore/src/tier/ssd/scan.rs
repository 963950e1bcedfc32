//! Sequential reading of a segment's records, for recovery and compaction.
//!
//! The scanner reads the file through a window of large aligned reads and walks it record
//! by record from the first page after the segment header:
//!
//! - an intact record (header checksum, then payload checksum) is returned as such;
//! - a record whose header is intact but whose payload is not is skipped whole and reported
//!   as corrupt, unless it is the last one in the file: then it is a torn tail;
//! - a damaged header is skipped by looking for the next page that starts an intact header;
//!   the bytes in between are corrupt. With no intact header after it, it is a torn tail.
//!
//! A torn tail ends the scan: what follows the last intact record is not part of the log.
//!
//! After a damaged header, a payload that itself holds an encoded record on a page boundary
//! would be taken for a record. Its checksums hold, so it is a key with the bytes once
//! appended for it; an index that does not point there reclaims it.

use std::fs::File;

use super::aligned::{align_up, AlignedBuf, ALIGN};
use super::error::SsdError;
use super::io::{read_up_to, IoEngine};
use super::record::{record_bytes, RecordHeader, HEADER_LEN};
use super::segment::SEGMENT_HEADER_LEN;

/// Bytes read per window refill.
const WINDOW: usize = 4 << 20;

/// One step of a scan.
#[derive(Debug)]
pub(crate) enum Step<'a> {
    Record {
        header: RecordHeader,
        offset: u64,
        payload: &'a [u8],
    },
    /// `len` bytes at `offset` hold no intact record.
    Corrupt { offset: u64, len: u64 },
    /// The log in this file ends at `end`; bytes after it, if any, are a torn tail.
    End { end: u64 },
}

pub(crate) struct Scanner<'a> {
    engine: &'a dyn IoEngine,
    file: &'a File,
    path: &'a std::path::Path,
    file_len: u64,
    pos: u64,
    window: AlignedBuf,
    window_start: u64,
    large: Option<AlignedBuf>,
}

impl<'a> Scanner<'a> {
    /// Scans `[SEGMENT_HEADER_LEN, file_len)` of `file`.
    pub(crate) fn new(
        engine: &'a dyn IoEngine,
        file: &'a File,
        path: &'a std::path::Path,
        file_len: u64,
    ) -> Self {
        Scanner {
            engine,
            file,
            path,
            file_len,
            pos: SEGMENT_HEADER_LEN,
            window: AlignedBuf::with_capacity(WINDOW),
            window_start: 0,
            large: None,
        }
    }

    pub(crate) fn next_step(&mut self) -> Result<Step<'_>, SsdError> {
        if self.pos >= self.file_len {
            return Ok(Step::End { end: self.pos });
        }
        let offset = self.pos;
        let head_len = (self.file_len - offset).min(ALIGN as u64) as usize;
        let head = self.bytes_at(offset, head_len)?;
        let header = match RecordHeader::decode(head) {
            Ok(header) => header,
            Err(_) => return self.resync(offset),
        };
        let len = record_bytes(header.len);
        if offset + len > self.file_len {
            return Ok(self.torn_at(offset));
        }
        // Whatever the record holds, the scan continues after it: a record reaching the end of
        // the file that fails its checksum is a torn tail, and nothing follows it anyway.
        self.pos = offset + len;
        let at_tail = self.pos >= self.file_len;
        let record = self.bytes_at(offset, len as usize)?;
        let payload = record.get(HEADER_LEN..HEADER_LEN + header.len as usize);
        match payload {
            Some(payload) if header.matches_payload(payload) => Ok(Step::Record {
                header,
                offset,
                payload,
            }),
            _ if at_tail => Ok(Step::End { end: offset }),
            _ => Ok(Step::Corrupt { offset, len }),
        }
    }

    fn torn_at(&mut self, offset: u64) -> Step<'static> {
        self.pos = self.file_len;
        Step::End { end: offset }
    }

    /// After a damaged header at `offset`: skips to the next page with an intact header.
    fn resync(&mut self, offset: u64) -> Result<Step<'static>, SsdError> {
        let mut candidate = offset + ALIGN as u64;
        while candidate + HEADER_LEN as u64 <= self.file_len {
            let head = self.bytes_at(candidate, HEADER_LEN)?;
            if RecordHeader::decode(head).is_ok() {
                self.pos = candidate;
                return Ok(Step::Corrupt {
                    offset,
                    len: candidate - offset,
                });
            }
            candidate += ALIGN as u64;
        }
        Ok(self.torn_at(offset))
    }

    /// Up to `len` bytes at `offset` (fewer only at end of file).
    fn bytes_at(&mut self, offset: u64, len: usize) -> Result<&[u8], SsdError> {
        let window_end = self.window_start + self.window.len() as u64;
        let cached = offset >= self.window_start && offset + len as u64 <= window_end;
        if !cached && len <= WINDOW {
            let want = align_up((self.file_len - offset).min(WINDOW as u64)) as usize;
            self.read_into_window(offset, want)?;
        }
        if len > WINDOW {
            let mut large = self
                .large
                .take()
                .filter(|buf| buf.capacity() >= len)
                .unwrap_or_else(|| AlignedBuf::with_capacity(len));
            read_up_to(
                self.engine,
                self.file,
                &mut large,
                align_up(len as u64) as usize,
                offset,
            )
            .map_err(|e| SsdError::io("reading", self.path, e))?;
            let large = self.large.insert(large);
            return Ok(&large[..len.min(large.len())]);
        }
        let start = (offset - self.window_start) as usize;
        let end = (start + len).min(self.window.len());
        Ok(&self.window[start.min(end)..end])
    }

    fn read_into_window(&mut self, offset: u64, want: usize) -> Result<(), SsdError> {
        self.window_start = offset;
        read_up_to(self.engine, self.file, &mut self.window, want, offset)
            .map_err(|e| SsdError::io("reading", self.path, e))
    }
}
