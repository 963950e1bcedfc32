//! The block index in RocksDB: key -> [`IndexEntry`] for every block with a durable copy.
//!
//! The database carries its own format version under a meta key; opening a database
//! written by another version fails instead of misreading it. Writes that back a
//! `sync`-durable put are made with RocksDB's WAL synced before they return; others are
//! left to the WAL's normal flushing. The in-memory policy state is rebuilt from
//! [`Index::entries`] at start.

mod entry;

use std::path::{Path, PathBuf};

pub use entry::{EntryError, IndexEntry, ENTRY_VERSION};
use rocksdb::{IteratorMode, Options, WriteBatch, WriteOptions, DB};

use crate::Key;

/// Version of the index database layout.
pub const INDEX_FORMAT: u32 = 1;
const FORMAT_KEY: &[u8] = b"meta:format";
const BLOCK_PREFIX: u8 = b'b';

/// Why the index failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index database at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("index database at {path} has format {found}; this build reads {INDEX_FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("index write failed: {0}")]
    Write(#[source] rocksdb::Error),
    #[error("index read failed: {0}")]
    Read(#[source] rocksdb::Error),
}

/// One change in an atomic batch.
#[derive(Debug, Clone)]
pub enum IndexChange {
    Put(Key, IndexEntry),
    Delete(Key),
}

/// The RocksDB-backed block index.
pub struct Index {
    db: DB,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("path", &self.db.path())
            .finish()
    }
}

fn db_key(key: &Key) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = BLOCK_PREFIX;
    out[1..].copy_from_slice(key);
    out
}

impl Index {
    /// Opens (or creates) the index in `dir`.
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        let open_error = |source| IndexError::Open {
            path: dir.to_path_buf(),
            source,
        };
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_max_open_files(256);
        options.set_keep_log_file_num(2);
        let db = DB::open(&options, dir).map_err(open_error)?;
        match db.get(FORMAT_KEY).map_err(open_error)? {
            None => {
                db.put(FORMAT_KEY, INDEX_FORMAT.to_le_bytes())
                    .map_err(open_error)?;
            }
            Some(bytes) => {
                let found = <[u8; 4]>::try_from(bytes.as_slice()).map_or(0, u32::from_le_bytes);
                if found != INDEX_FORMAT {
                    return Err(IndexError::Format {
                        path: dir.to_path_buf(),
                        found,
                    });
                }
            }
        }
        Ok(Index { db })
    }

    /// Applies `changes` atomically; with `sync` the WAL is on disk before this returns.
    pub fn apply(&self, changes: &[IndexChange], sync: bool) -> Result<(), IndexError> {
        let mut batch = WriteBatch::default();
        for change in changes {
            match change {
                IndexChange::Put(key, entry) => batch.put(db_key(key), entry.encode()),
                IndexChange::Delete(key) => batch.delete(db_key(key)),
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db
            .write_opt(batch, &options)
            .map_err(IndexError::Write)
    }

    pub fn put(&self, key: &Key, entry: &IndexEntry, sync: bool) -> Result<(), IndexError> {
        self.apply(&[IndexChange::Put(*key, entry.clone())], sync)
    }

    pub fn delete(&self, key: &Key, sync: bool) -> Result<(), IndexError> {
        self.apply(&[IndexChange::Delete(*key)], sync)
    }

    /// The entry of `key`; an undecodable entry reads as absent (and is logged).
    pub fn get(&self, key: &Key) -> Result<Option<IndexEntry>, IndexError> {
        let Some(bytes) = self.db.get(db_key(key)).map_err(IndexError::Read)? else {
            return Ok(None);
        };
        Ok(decode_logged(&bytes))
    }

    /// Every decodable entry, in key order. Undecodable ones are skipped with a warning.
    pub fn entries(&self) -> Result<Vec<(Key, IndexEntry)>, IndexError> {
        let mut out = Vec::new();
        let from = [BLOCK_PREFIX];
        let mode = IteratorMode::From(&from, rocksdb::Direction::Forward);
        for item in self.db.iterator(mode) {
            let (db_key, value) = item.map_err(IndexError::Read)?;
            if db_key.first() != Some(&BLOCK_PREFIX) || db_key.len() != 33 {
                break;
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(&db_key[1..]);
            if let Some(entry) = decode_logged(&value) {
                out.push((key, entry));
            }
        }
        Ok(out)
    }

    /// Makes everything written so far durable.
    pub fn flush_wal(&self) -> Result<(), IndexError> {
        self.db.flush_wal(true).map_err(IndexError::Write)
    }
}

fn decode_logged(bytes: &[u8]) -> Option<IndexEntry> {
    match IndexEntry::decode(bytes) {
        Ok(entry) => Some(entry),
        Err(error) => {
            tracing::warn!(%error, "undecodable index entry skipped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(segment: u32) -> IndexEntry {
        IndexEntry {
            codec: 0,
            location: crate::tier::ssd::Location {
                segment: segment as u64,
                offset: 4096,
                len: 100,
            },
            checksum: 1,
            raw_bytes: 100,
            position: 0,
            parent: None,
            created_ms: 1,
            last_access_ms: 2,
            hits: 0,
            lease_until_ms: 0,
            conversation: String::new(),
        }
    }

    #[test]
    fn entries_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = Index::open(dir.path()).unwrap();
            index.put(&[1; 32], &entry(1), true).unwrap();
            index.put(&[2; 32], &entry(2), true).unwrap();
            index.delete(&[1; 32], true).unwrap();
        }
        let index = Index::open(dir.path()).unwrap();
        assert_eq!(index.entries().unwrap(), vec![([2; 32], entry(2))]);
        assert_eq!(index.get(&[2; 32]).unwrap(), Some(entry(2)));
        assert_eq!(index.get(&[1; 32]).unwrap(), None);
    }

    #[test]
    fn a_database_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = DB::open_default(dir.path()).unwrap();
            db.put(FORMAT_KEY, 99u32.to_le_bytes()).unwrap();
        }
        let err = Index::open(dir.path()).unwrap_err();
        assert!(matches!(err, IndexError::Format { found: 99, .. }), "{err}");
    }
}
