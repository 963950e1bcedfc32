//! The Raft log and state machine in one RocksDB database under the node's data directory.
//!
//! Column families: `log` (entries by big-endian index), `meta` (vote, committed id, last
//! purged id) and `machine` (applied id, membership, the cluster map, the last snapshot).
//! Every write is synced before it is acknowledged: metadata changes are rare, and a node
//! that forgot its vote could vote twice in one term.

mod log;
mod machine;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use log::LogStore;
pub use machine::{SharedMap, StateMachine};

use crate::error::RaftError;

const LOG: &str = "log";
const META: &str = "meta";
const MACHINE: &str = "machine";

/// Format of the stored records; bumped when their encoding changes.
const FORMAT_KEY: &[u8] = b"format";
const FORMAT_VERSION: &[u8] = b"1";

/// Opens (or creates) the database and returns the log store and the state machine.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine), RaftError> {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let families =
        [LOG, META, MACHINE].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db =
        DB::open_cf_descriptors(&options, dir, families).map_err(|source| RaftError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
    let db = Arc::new(Db(db));
    db.check_format()?;
    let machine = StateMachine::open(db.clone())?;
    Ok((LogStore::new(db), machine))
}

/// The database with typed helpers; every method names its column family.
pub(crate) struct Db(DB);

impl Db {
    fn check_format(&self) -> Result<(), RaftError> {
        match self.get_raw(META, FORMAT_KEY)? {
            None => {
                let mut batch = WriteBatch::default();
                self.put_raw(&mut batch, META, FORMAT_KEY, FORMAT_VERSION);
                self.write(batch)
            }
            Some(found) if found == FORMAT_VERSION => Ok(()),
            Some(found) => Err(RaftError::Format {
                found: String::from_utf8_lossy(&found).into_owned(),
            }),
        }
    }

    fn family(&self, name: &str) -> &rocksdb::ColumnFamily {
        // The families are created by `open`; a missing one is a programming error.
        self.0
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn get_raw(&self, family: &str, key: &[u8]) -> Result<Option<Vec<u8>>, RaftError> {
        Ok(self.0.get_cf(self.family(family), key)?)
    }

    pub(crate) fn get<T: DeserializeOwned>(
        &self,
        family: &str,
        key: &[u8],
    ) -> Result<Option<T>, RaftError> {
        match self.get_raw(family, key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        }
    }

    fn put_raw(&self, batch: &mut WriteBatch, family: &str, key: &[u8], value: &[u8]) {
        batch.put_cf(self.family(family), key, value);
    }

    pub(crate) fn put<T: Serialize>(
        &self,
        batch: &mut WriteBatch,
        family: &str,
        key: &[u8],
        value: &T,
    ) -> Result<(), RaftError> {
        let bytes = serde_json::to_vec(value)?;
        self.put_raw(batch, family, key, &bytes);
        Ok(())
    }

    pub(crate) fn write(&self, batch: WriteBatch) -> Result<(), RaftError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        Ok(self.0.write_opt(batch, &options)?)
    }
}
