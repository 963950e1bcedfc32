//! The store: namespaces, the dram tier and the counters behind `Stats`.
//!
//! Every method takes `&self`; one mutex guards the tier and is never held while a
//! checksum is computed, so reads of large blocks do not serialise on it. A block is
//! verified twice: in full when it is put, and again on every read, where a mismatch
//! removes the block (and its descendants), logs a warning and answers a miss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use kvtier_format::{BlockShape, BlockView};

use crate::tier::dram::{DramTier, InsertError, Inserted};
use crate::{Config, Key, StoreError};

/// A namespace as a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSpec {
    pub tenant: String,
    pub fingerprint: Key,
    pub shape: BlockShape,
}

/// The answer to a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    pub stored: bool,
    pub already_present: bool,
}

#[derive(Debug, Default)]
struct Counters {
    puts: AtomicU64,
    puts_duplicate: AtomicU64,
    puts_declined: AtomicU64,
    lookups: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    checksum_failures: AtomicU64,
}

/// A snapshot of the store's counters and occupancy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub blocks: u64,
    pub puts: u64,
    pub puts_duplicate: u64,
    pub puts_declined: u64,
    pub lookups: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub checksum_failures: u64,
    pub max_block_bytes: u64,
}

/// kvtier's block store.
#[derive(Debug)]
pub struct Store {
    dram: Mutex<DramTier>,
    namespaces: Mutex<HashMap<Key, BlockShape>>,
    counters: Counters,
    max_block_bytes: u64,
}

impl Store {
    pub fn new(config: &Config) -> Self {
        Store {
            dram: Mutex::new(DramTier::new(config.dram_capacity.as_u64())),
            namespaces: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            max_block_bytes: config.max_block_bytes.as_u64(),
        }
    }

    /// Stores a block after checking it against its namespace. Idempotent: the same key
    /// again is acknowledged and the first copy kept.
    pub fn put(
        &self,
        namespace: &NamespaceSpec,
        key: Key,
        parent: Option<Key>,
        position: u32,
        block: Bytes,
    ) -> Result<PutOutcome, StoreError> {
        self.check_block(namespace, &block)?;
        self.register(namespace)?;
        let inserted = lock(&self.dram).insert(key, parent, position, block);
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        match inserted {
            Ok(Inserted::Stored { evicted }) => {
                self.counters
                    .evictions
                    .fetch_add(evicted, Ordering::Relaxed);
                Ok(PutOutcome {
                    stored: true,
                    already_present: false,
                })
            }
            Ok(Inserted::AlreadyPresent) => {
                self.counters.puts_duplicate.fetch_add(1, Ordering::Relaxed);
                Ok(PutOutcome {
                    stored: true,
                    already_present: true,
                })
            }
            Ok(Inserted::Orphan) => {
                self.counters.puts_declined.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(position, "put declined: parent not held");
                Ok(PutOutcome {
                    stored: false,
                    already_present: false,
                })
            }
            Err(InsertError::Full { needed, capacity }) => {
                Err(StoreError::Full { needed, capacity })
            }
            Err(InsertError::PositionMismatch {
                parent_position,
                position,
            }) => Err(StoreError::invalid(
                "position",
                format!("{position} does not follow the parent's position {parent_position}"),
            )),
        }
    }

    /// Length of the longest prefix of `keys` that is held.
    pub fn lookup(&self, keys: &[Key]) -> usize {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let dram = lock(&self.dram);
        keys.iter().take_while(|key| dram.contains(key)).count()
    }

    /// The verified block under `key`, or `None` for a miss. A block that fails its
    /// checksum, or belongs to another namespace, is a miss.
    pub fn read(&self, namespace: &NamespaceSpec, key: &Key) -> Option<Bytes> {
        let Some(block) = lock(&self.dram).get(key) else {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        match verify(namespace, &block) {
            Ok(()) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                Some(block)
            }
            Err(reason) => {
                self.counters
                    .checksum_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                let removed = lock(&self.dram).remove_subtree(key);
                tracing::warn!(key = %hex(key), %reason, removed, "corrupt block dropped");
                None
            }
        }
    }

    /// Removes the blocks under `keys` and their descendants.
    pub fn delete(&self, keys: &[Key]) -> u64 {
        let mut dram = lock(&self.dram);
        keys.iter().map(|key| dram.remove_subtree(key)).sum()
    }

    pub fn stats(&self) -> StoreStats {
        let (capacity_bytes, used_bytes, blocks) = {
            let dram = lock(&self.dram);
            (dram.capacity(), dram.used(), dram.len() as u64)
        };
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StoreStats {
            capacity_bytes,
            used_bytes,
            blocks,
            puts: get(&c.puts),
            puts_duplicate: get(&c.puts_duplicate),
            puts_declined: get(&c.puts_declined),
            lookups: get(&c.lookups),
            hits: get(&c.hits),
            misses: get(&c.misses),
            evictions: get(&c.evictions),
            checksum_failures: get(&c.checksum_failures),
            max_block_bytes: self.max_block_bytes,
        }
    }

    /// Flips one payload byte of a held block in memory, bypassing every check. Exists so
    /// tests can prove that corruption is detected on read.
    #[doc(hidden)]
    pub fn corrupt_for_test(&self, key: &Key) -> bool {
        let mut dram = lock(&self.dram);
        let Some(block) = dram.get(key) else {
            return false;
        };
        let mut bytes = block.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x5a;
        dram.replace_bytes_unchecked(key, Bytes::from(bytes))
    }

    /// Checks the tier's invariants (capacity, prefix closure); for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        lock(&self.dram).check_invariants()
    }

    fn check_block(&self, namespace: &NamespaceSpec, block: &Bytes) -> Result<(), StoreError> {
        if block.len() as u64 > self.max_block_bytes {
            return Err(StoreError::invalid(
                "block",
                format!(
                    "{} bytes is over the {}-byte block limit",
                    block.len(),
                    self.max_block_bytes
                ),
            ));
        }
        let view =
            BlockView::parse(block).map_err(|e| StoreError::invalid("block", e.to_string()))?;
        if view.fingerprint != namespace.fingerprint {
            return Err(StoreError::invalid(
                "block",
                "header fingerprint differs from namespace.fingerprint",
            ));
        }
        if view.shape != namespace.shape {
            return Err(StoreError::invalid(
                "block",
                format!(
                    "shape {:?} does not match namespace.layout {:?}",
                    view.shape, namespace.shape
                ),
            ));
        }
        view.verify_payload()
            .map_err(|e| StoreError::invalid("block", e.to_string()))
    }

    /// Records a namespace's shape on first use; a later request with the same fingerprint
    /// and another shape is refused.
    fn register(&self, namespace: &NamespaceSpec) -> Result<(), StoreError> {
        let mut namespaces = lock(&self.namespaces);
        let shape = namespaces
            .entry(namespace.fingerprint)
            .or_insert(namespace.shape);
        if *shape != namespace.shape {
            return Err(StoreError::invalid(
                "namespace.layout",
                format!(
                    "{:?} differs from the layout this fingerprint was first used with",
                    namespace.shape
                ),
            ));
        }
        Ok(())
    }
}

fn verify(namespace: &NamespaceSpec, block: &[u8]) -> Result<(), String> {
    let view = BlockView::parse(block).map_err(|e| e.to_string())?;
    if view.fingerprint != namespace.fingerprint {
        return Err("block belongs to another namespace".to_string());
    }
    view.verify_payload().map_err(|e| e.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the tier half-updated in a way later
    // calls misread (every mutation completes before anything can panic), so keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn hex(key: &Key) -> String {
    key.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
