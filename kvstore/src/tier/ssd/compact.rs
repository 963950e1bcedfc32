//! Compaction: live records of sealed segments whose live ratio fell under a threshold are
//! appended again at the head, then the old segment files are deleted.
//!
//! Per segment, emptiest first: scan it; ask `is_live(key, location)` for each intact
//! record; append the live ones; fdatasync what was written; hand the moves to `relocate`
//! (the caller points its index at the new locations there); only then remove the segment
//! from the log and delete its file. A crash at any point leaves every live record in at
//! least one segment. The head segment is never compacted.

use std::sync::PoisonError;

use super::aligned::AlignedBuf;
use super::error::SsdError;
use super::io::IoEngine;
use super::location::Location;
use super::log::{lock, SegmentLog};
use super::record::{encode_record, record_bytes};
use super::scan::{Scanner, Step};
use super::segment::{sync_dir, Segment};
use super::stats::Counters;
use crate::Key;

/// A record compaction moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub key: Key,
    pub from: Location,
    pub to: Location,
}

/// What one compaction run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compaction {
    pub moved: Vec<Moved>,
    pub segments_removed: Vec<u64>,
    /// Bytes of live records written again.
    pub bytes_rewritten: u64,
    /// Bytes of segment files deleted.
    pub bytes_removed: u64,
}

impl SegmentLog {
    /// Compacts every sealed segment whose live ratio is under `threshold`.
    ///
    /// `is_live` says whether the index still points at a record; `relocate` receives the
    /// moves of one segment after they are durable and before the old file goes away. A
    /// move whose index entry changed meanwhile should be passed to `mark_dead` (its `to`).
    /// Runs are serialised; appends and reads continue alongside. On error, segments already
    /// handed to `relocate` stay compacted, the segment being compacted stays and its new
    /// copies are marked dead.
    pub fn compact(
        &self,
        threshold: f64,
        mut is_live: impl FnMut(&Key, &Location) -> bool,
        mut relocate: impl FnMut(&[Moved]),
    ) -> Result<Compaction, SsdError> {
        let _running = lock(&self.compaction);
        let mut summary = Compaction::default();
        for segment in self.candidates(threshold) {
            let moved = self.rewrite_live(&segment, &mut is_live)?;
            relocate(&moved);
            let bytes = segment.len();
            self.remove_segment(&segment)?;
            tracing::debug!(
                segment = segment.id,
                moved = moved.len(),
                "ssd segment compacted"
            );

            summary.bytes_rewritten += moved.iter().map(|m| m.to.disk_bytes()).sum::<u64>();
            summary.bytes_removed += bytes;
            summary.segments_removed.push(segment.id);
            summary.moved.extend(moved);
        }
        Counters::add(&self.counters.compaction_bytes, summary.bytes_rewritten);
        let removed = summary.segments_removed.len() as u64;
        Counters::add(&self.counters.compacted_segments, removed);
        Ok(summary)
    }

    /// Sealed segments under `threshold`, emptiest first.
    fn candidates(&self, threshold: f64) -> Vec<std::sync::Arc<Segment>> {
        let head = lock(&self.head).segment.id;
        let mut candidates: Vec<_> = self
            .all_segments()
            .into_iter()
            .filter(|s| s.id != head && s.live_ratio() < threshold)
            .collect();
        candidates.sort_by(|a, b| a.live_ratio().total_cmp(&b.live_ratio()));
        candidates
    }

    /// Appends the live records of `segment` at the head and makes them durable.
    fn rewrite_live(
        &self,
        segment: &Segment,
        is_live: &mut impl FnMut(&Key, &Location) -> bool,
    ) -> Result<Vec<Moved>, SsdError> {
        let mut moved = Vec::new();
        let result = self
            .copy_live(segment, is_live, &mut moved)
            .and_then(|()| self.sync());
        if let Err(err) = result {
            for m in &moved {
                self.mark_dead(&m.to);
            }
            return Err(err);
        }
        Ok(moved)
    }

    fn copy_live(
        &self,
        segment: &Segment,
        is_live: &mut impl FnMut(&Key, &Location) -> bool,
        moved: &mut Vec<Moved>,
    ) -> Result<(), SsdError> {
        let engine: &dyn IoEngine = &*self.engine;
        let mut scanner = Scanner::new(engine, &segment.file, &segment.path, segment.len());
        let mut buf = AlignedBuf::with_capacity(0);
        loop {
            match scanner.next_step()? {
                Step::Record {
                    header,
                    offset,
                    payload,
                } => {
                    let from = Location {
                        segment: segment.id,
                        offset,
                        len: header.len,
                    };
                    if !is_live(&header.key, &from) {
                        continue;
                    }
                    let needed = record_bytes(header.len) as usize;
                    if buf.capacity() < needed {
                        buf = AlignedBuf::with_capacity(needed);
                    }
                    let encoded = encode_record(&mut buf, &header.key, payload);
                    let to = self.append_encoded(&mut buf, &encoded, false)?;
                    moved.push(Moved {
                        key: header.key,
                        from,
                        to,
                    });
                }
                Step::Corrupt { offset, len } => {
                    tracing::warn!(
                        segment = segment.id,
                        offset,
                        len,
                        "compaction skips corrupt bytes"
                    );
                }
                Step::End { .. } => return Ok(()),
            }
        }
    }

    fn remove_segment(&self, segment: &Segment) -> Result<(), SsdError> {
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&segment.id);
        std::fs::remove_file(&segment.path)
            .and_then(|()| sync_dir(&self.dir))
            .map_err(|e| SsdError::io("removing", &segment.path, e))
    }
}
