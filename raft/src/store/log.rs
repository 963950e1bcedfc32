//! The Raft log and vote.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::{Db, LOG, META};
use crate::error::RaftError;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"last_purged";

/// The log store; clones share the database (openraft reads with one while it appends
/// with another).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_error(error: RaftError) -> StorageError {
    StorageIOError::read_logs(&error).into()
}

fn write_error(error: RaftError) -> StorageError {
    StorageIOError::write_logs(&error).into()
}

impl LogStore {
    pub(super) fn new(db: Arc<Db>) -> Self {
        LogStore { db }
    }

    fn entries(&self, start: u64, end: Bound<u64>) -> Result<Vec<Entry>, RaftError> {
        let start_key = index_key(start);
        let family = self.db.family(LOG);
        let mode = IteratorMode::From(&start_key, Direction::Forward);
        let mut entries = Vec::new();
        for item in self.db.0.iterator_cf(family, mode) {
            let (key, value) = item?;
            let index = u64::from_be_bytes(key.as_ref().try_into().unwrap_or([0xff; 8]));
            let inside = match end {
                Bound::Included(last) => index <= last,
                Bound::Excluded(last) => index < last,
                Bound::Unbounded => true,
            };
            if !inside {
                break;
            }
            entries.push(serde_json::from_slice(&value)?);
        }
        Ok(entries)
    }

    fn last_entry(&self) -> Result<Option<Entry>, RaftError> {
        let family = self.db.family(LOG);
        match self.db.0.iterator_cf(family, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => Ok(Some(serde_json::from_slice(&item?.1)?)),
        }
    }

    fn delete_from(&self, batch: &mut WriteBatch, from: u64, to: u64) {
        batch.delete_range_cf(self.db.family(LOG), index_key(from), index_key(to));
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(first) => *first,
            Bound::Excluded(first) => first.saturating_add(1),
            Bound::Unbounded => 0,
        };
        self.entries(start, range.end_bound().cloned())
            .map_err(read_error)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> = self.db.get(META, PURGED).map_err(read_error)?;
        let last = self.last_entry().map_err(read_error)?.map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let written = self
            .db
            .put(&mut batch, META, VOTE, vote)
            .and_then(|()| self.db.write(batch));
        written.map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.db
            .get(META, VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let written = self
            .db
            .put(&mut batch, META, COMMITTED, &committed)
            .and_then(|()| self.db.write(batch));
        written.map_err(write_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let stored: Option<Option<LogId>> = self.db.get(META, COMMITTED).map_err(read_error)?;
        Ok(stored.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        for entry in entries {
            let key = index_key(entry.log_id.index);
            self.db
                .put(&mut batch, LOG, &key, &entry)
                .map_err(write_error)?;
        }
        let written = self.db.write(batch);
        let io_result = match &written {
            Ok(()) => Ok(()),
            Err(error) => Err(std::io::Error::other(error.to_string())),
        };
        callback.log_io_completed(io_result);
        written.map_err(write_error)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        self.delete_from(&mut batch, log_id.index, u64::MAX);
        self.db.write(batch).map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        self.db
            .put(&mut batch, META, PURGED, &log_id)
            .map_err(write_error)?;
        self.delete_from(&mut batch, 0, log_id.index.saturating_add(1));
        self.db.write(batch).map_err(write_error)
    }
}
