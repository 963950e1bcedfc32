//! The state machine: the cluster map, the last applied log id and membership, and the
//! last snapshot, all in the `machine` column family.
//!
//! The map is also held in memory behind a lock that readers ([`SharedMap`]) take only to
//! clone or inspect it; apply holds it for one command at a time.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use super::{Db, MACHINE};
use crate::error::RaftError;
use crate::map::{ClusterMap, Outcome};
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const APPLIED: &[u8] = b"applied";
const MEMBERSHIP: &[u8] = b"membership";
const MAP: &[u8] = b"map";
const SNAPSHOT: &[u8] = b"snapshot";

/// The cluster map as last applied on this node.
pub type SharedMap = Arc<RwLock<ClusterMap>>;

/// What a snapshot holds; its bytes are this as JSON.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    map: ClusterMap,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

pub struct StateMachine {
    db: Arc<Db>,
    applied: Option<LogId>,
    membership: StoredMembership,
    map: SharedMap,
}

fn sm_write(error: RaftError) -> StorageError {
    StorageIOError::write_state_machine(&error).into()
}

fn sm_read(error: RaftError) -> StorageError {
    StorageIOError::read_state_machine(&error).into()
}

impl StateMachine {
    pub(super) fn open(db: Arc<Db>) -> Result<Self, RaftError> {
        let applied = db.get(MACHINE, APPLIED)?.flatten();
        let membership = db.get(MACHINE, MEMBERSHIP)?.unwrap_or_default();
        let map: ClusterMap = db.get(MACHINE, MAP)?.unwrap_or_default();
        Ok(StateMachine {
            db,
            applied,
            membership,
            map: Arc::new(RwLock::new(map)),
        })
    }

    /// A handle on the map that stays current as entries are applied.
    pub fn map(&self) -> SharedMap {
        self.map.clone()
    }

    fn snapshot_of(&self) -> ClusterMap {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn persist(&self) -> Result<(), RaftError> {
        let mut batch = WriteBatch::default();
        self.db.put(&mut batch, MACHINE, APPLIED, &self.applied)?;
        self.db
            .put(&mut batch, MACHINE, MEMBERSHIP, &self.membership)?;
        self.db.put(&mut batch, MACHINE, MAP, &self.snapshot_of())?;
        self.db.write(batch)
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, RaftError> {
        let data = serde_json::to_vec(&SnapshotBody {
            map: self.snapshot_of(),
        })?;
        let snapshot_id = match self.applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let mut batch = WriteBatch::default();
        self.db.put(&mut batch, MACHINE, SNAPSHOT, &stored)?;
        self.db.write(batch)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    fn install(&mut self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), RaftError> {
        let body: SnapshotBody = serde_json::from_slice(&data)?;
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = body.map;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.persist()?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let mut batch = WriteBatch::default();
        self.db.put(&mut batch, MACHINE, SNAPSHOT, &stored)?;
        self.db.write(batch)
    }
}

/// Builds snapshots from a copy of the map taken when the builder was made.
pub struct SnapshotBuilder {
    machine: StateMachine,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.machine
            .build()
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            self.applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Outcome::Applied,
                EntryPayload::Normal(command) => {
                    let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
                    map.apply(&command)
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Outcome::Applied
                }
            };
            outcomes.push(outcome);
        }
        self.persist().map_err(sm_write)?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let copy = StateMachine {
            db: self.db.clone(),
            applied: self.applied,
            membership: self.membership.clone(),
            map: Arc::new(RwLock::new(self.snapshot_of())),
        };
        SnapshotBuilder { machine: copy }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.install(meta, snapshot.into_inner())
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let stored: Option<StoredSnapshot> = self.db.get(MACHINE, SNAPSHOT).map_err(sm_read)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
