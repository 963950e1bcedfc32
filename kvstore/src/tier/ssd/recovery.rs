//! Recovery at open: every segment file is scanned, torn tails are cut off, and what the log
//! holds is reported so the caller can check its index against it.

use std::path::Path;
use std::time::Instant;

use super::aligned::{AlignedBuf, ALIGN};
use super::error::SsdError;
use super::io::{read_up_to, IoEngine};
use super::location::Location;
use super::record::record_bytes;
use super::scan::{Scanner, Step};
use super::segment::{parse_file_name, sync_dir, Segment, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::Key;

/// An intact record found at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedRecord {
    pub key: Key,
    pub location: Location,
    pub seq: u64,
}

/// Bytes at the end of a segment that held no complete record and were cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    pub segment: u64,
    /// Where the segment now ends.
    pub offset: u64,
    pub dropped_bytes: u64,
}

/// Bytes inside a segment that hold no intact record; they stay on disk until compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptRange {
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
}

/// What the scan at open found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Every intact record in log order (ascending sequence numbers), duplicates included.
    pub records: Vec<ScannedRecord>,
    pub torn_tails: Vec<TornTail>,
    pub corrupt: Vec<CorruptRange>,
    /// Segments whose header page is damaged; their records were scanned all the same.
    pub damaged_headers: Vec<u64>,
    /// Segment files open after recovery.
    pub segments: usize,
}

pub(crate) struct Recovered {
    pub segments: Vec<Segment>,
    pub next_seq: u64,
    pub report: Recovery,
}

/// Scans the segments in `dir`, oldest first, truncating torn tails.
pub(crate) fn recover(dir: &Path, engine: &dyn IoEngine) -> Result<Recovered, SsdError> {
    let started = Instant::now();
    let mut recovered = Recovered {
        segments: Vec::new(),
        next_seq: 1,
        report: Recovery::default(),
    };
    for id in segment_ids(dir)? {
        if let Some(segment) = recover_segment(dir, id, engine, &mut recovered)? {
            recovered.segments.push(segment);
        }
    }
    let report = &mut recovered.report;
    report.segments = recovered.segments.len();
    tracing::info!(
        dir = %dir.display(),
        engine = %engine.active(),
        segments = report.segments,
        records = report.records.len(),
        torn = report.torn_tails.len(),
        corrupt = report.corrupt.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ssd log recovered"
    );
    Ok(recovered)
}

fn segment_ids(dir: &Path) -> Result<Vec<u64>, SsdError> {
    let entries = std::fs::read_dir(dir).map_err(|e| SsdError::io("listing", dir, e))?;
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SsdError::io("listing", dir, e))?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_file_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Scans one segment; None when the file was a torn creation and has been removed.
fn recover_segment(
    dir: &Path,
    id: u64,
    engine: &dyn IoEngine,
    out: &mut Recovered,
) -> Result<Option<Segment>, SsdError> {
    let segment = Segment::open(dir, id)?;
    let file_len = segment
        .file
        .metadata()
        .map_err(|e| SsdError::io("inspecting", &segment.path, e))?
        .len();
    if file_len < SEGMENT_HEADER_LEN {
        return remove_torn_creation(dir, segment, file_len, out).map(|()| None);
    }
    check_header(&segment, engine, out)?;

    let (end, live) = scan_records(&segment, file_len, engine, out)?;
    if end < file_len {
        cut_torn_tail(&segment, end, file_len, out)?;
    }
    segment.set_len(end);
    segment.add_live(live);
    Ok(Some(segment))
}

/// Reports the intact records and corrupt ranges of `segment`; returns where its log ends
/// and how many record bytes it holds.
fn scan_records(
    segment: &Segment,
    file_len: u64,
    engine: &dyn IoEngine,
    out: &mut Recovered,
) -> Result<(u64, u64), SsdError> {
    let id = segment.id;
    let mut scanner = Scanner::new(engine, &segment.file, &segment.path, file_len);
    let mut live = 0;
    loop {
        match scanner.next_step()? {
            Step::Record { header, offset, .. } => {
                let location = Location {
                    segment: id,
                    offset,
                    len: header.len,
                };
                out.report.records.push(ScannedRecord {
                    key: header.key,
                    location,
                    seq: header.seq,
                });
                live += record_bytes(header.len);
                out.next_seq = out.next_seq.max(header.seq.saturating_add(1));
            }
            Step::Corrupt { offset, len } => {
                tracing::warn!(segment = id, offset, len, "corrupt bytes in ssd segment");
                let range = CorruptRange {
                    segment: id,
                    offset,
                    len,
                };
                out.report.corrupt.push(range);
            }
            Step::End { end } => return Ok((end, live)),
        }
    }
}

fn check_header(
    segment: &Segment,
    engine: &dyn IoEngine,
    out: &mut Recovered,
) -> Result<(), SsdError> {
    let mut page = AlignedBuf::with_capacity(ALIGN);
    read_up_to(engine, &segment.file, &mut page, ALIGN, 0)
        .map_err(|e| SsdError::io("reading", &segment.path, e))?;
    match SegmentHeader::decode(&page) {
        Some(header) if header.id == segment.id => {
            out.next_seq = out.next_seq.max(header.first_seq);
        }
        _ => {
            tracing::warn!(segment = segment.id, "damaged ssd segment header");
            out.report.damaged_headers.push(segment.id);
        }
    }
    Ok(())
}

fn cut_torn_tail(
    segment: &Segment,
    end: u64,
    file_len: u64,
    out: &mut Recovered,
) -> Result<(), SsdError> {
    tracing::warn!(
        segment = segment.id,
        offset = end,
        dropped = file_len - end,
        "torn tail dropped"
    );
    segment
        .file
        .set_len(end)
        .and_then(|()| segment.file.sync_data())
        .map_err(|e| SsdError::io("truncating", &segment.path, e))?;
    out.report.torn_tails.push(TornTail {
        segment: segment.id,
        offset: end,
        dropped_bytes: file_len - end,
    });
    Ok(())
}

fn remove_torn_creation(
    dir: &Path,
    segment: Segment,
    file_len: u64,
    out: &mut Recovered,
) -> Result<(), SsdError> {
    tracing::warn!(segment = segment.id, "removing segment torn at creation");
    std::fs::remove_file(&segment.path)
        .and_then(|()| sync_dir(dir))
        .map_err(|e| SsdError::io("removing", &segment.path, e))?;
    out.report.torn_tails.push(TornTail {
        segment: segment.id,
        offset: 0,
        dropped_bytes: file_len,
    });
    Ok(())
}
