//! Opening the durable half of the store: the segment log and the index, checked against
//! each other.
//!
//! An index entry survives only when the segment scan found an intact record for the same
//! key at the same location; entries whose record is torn, corrupt or gone are deleted.
//! Records no entry points at (written but never indexed, or superseded) are reclaimed.
//! Entries are then linked into chains in position order, and any whose parent did not
//! survive are dropped too, so the recovered store is prefix-closed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::OpenError;
use crate::catalog::{Catalog, Meta};
use crate::index::{Index, IndexChange};
use crate::tier::ssd::{IoEngine, Location, SegmentLog, Ssd};
use crate::{Config, Key};

pub(super) fn open_durable(
    config: &Config,
    engine: Option<Arc<dyn IoEngine>>,
) -> Result<(Option<Ssd>, Option<Index>, Catalog), OpenError> {
    config.validate()?;
    let (Some(ssd_config), Some(index_dir)) = (config.ssd_config(), config.index_dir()) else {
        return Ok((None, None, Catalog::default()));
    };
    let started = Instant::now();
    std::fs::create_dir_all(&index_dir).map_err(|source| crate::tier::ssd::SsdError::Io {
        op: "create",
        path: index_dir.clone(),
        source,
    })?;
    let (log, recovery) = match engine {
        Some(engine) => SegmentLog::open_with_engine(ssd_config, engine)?,
        None => SegmentLog::open(ssd_config)?,
    };
    let index = Index::open(&index_dir)?;

    let on_disk: HashSet<(Key, Location)> = recovery
        .records
        .iter()
        .map(|r| (r.key, r.location))
        .collect();
    let mut entries = index.entries()?;
    entries.sort_by_key(|(_, entry)| entry.position);

    let mut catalog = Catalog::default();
    let mut kept: HashMap<Key, Location> = HashMap::new();
    let mut stale = Vec::new();
    for (key, entry) in entries {
        let intact = on_disk.contains(&(key, entry.location));
        let linked = entry.parent.is_none_or(|parent| kept.contains_key(&parent));
        if !(intact && linked) {
            stale.push(IndexChange::Delete(key));
            continue;
        }
        let mut meta = Meta::new(entry.parent, entry.position, entry.last_access_ms);
        meta.created_ms = entry.created_ms;
        meta.hits = entry.hits;
        meta.pending = false;
        if !entry.conversation.is_empty() {
            meta.conversation = Some(catalog.conversation(&entry.conversation));
        }
        catalog.reserve(key, meta);
        catalog.set_disk(&key, entry.location);
        kept.insert(key, entry.location);
    }
    index.apply(&stale, true)?;

    let mut reclaimed = 0;
    for record in &recovery.records {
        if kept.get(&record.key) != Some(&record.location) {
            log.mark_dead(&record.location);
            reclaimed += 1;
        }
    }
    let live: u64 = kept.values().map(Location::disk_bytes).sum();
    tracing::info!(
        blocks = kept.len(),
        stale_entries = stale.len(),
        reclaimed_records = reclaimed,
        torn_tails = recovery.torn_tails.len(),
        corrupt_ranges = recovery.corrupt.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered the ssd tier"
    );
    let ssd = Ssd::new(log, config.ssd_capacity.as_u64(), live);
    Ok((Some(ssd), Some(index), catalog))
}
