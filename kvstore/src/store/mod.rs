//! The store: namespaces, the block catalog, the tiers and the index, behind `&self`.
//!
//! Puts land in dram (pinned when hinted hot) and, by durability, reach the ssd tier in
//! the background (`async`), before the acknowledgement (`sync`) or only under memory
//! pressure (`none`). Pressure demotes pinned -> dram -> ssd before anything is dropped;
//! only chain tails are dropped, so what the store holds stays prefix-closed. A hit from
//! ssd is promoted back to dram. Every read is verified; a block that fails is a miss, a
//! warning and a removed entry, together with its descendants.
//!
//! Locking: one mutex guards the [`Catalog`]; tier I/O happens outside it. A block being
//! read or moved holds a lease in the catalog, so it is neither evicted nor moved under
//! the reader. A put reserves its key (pending) before writing, so two puts of one key
//! store one copy. Lock order: catalog -> namespaces; the segment log's own locks are
//! taken only outside the catalog lock, except by compaction callbacks.

mod clock;
mod counters;
mod placement;
mod prefetch;
mod recode;
mod recovery;
mod scan;
mod stats;
mod writeback;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use kvtier_format::{BlockShape, BlockView};

pub use self::clock::{Clock, ManualClock, SystemClock};
use self::counters::{bump, Counters};
pub use self::prefetch::PrefetchOutcome;
pub use self::scan::HeldBlock;
pub use self::stats::{StoreStats, TierStats};
use crate::catalog::{Catalog, Meta};
use crate::codecs::{NamespaceCodecs, TierCodecs};
use crate::index::{Index, IndexChange, IndexEntry};
use crate::policy::PolicyWeights;
use crate::tier::dram::Dram;
use crate::tier::pinned::Pinned;
use crate::tier::ssd::Ssd;
use crate::tier::{Slot, Tier, TierError, TierKind};
use crate::{Config, Durability, Key, StoreError};

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

/// What a put may say beyond the block itself.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Place the block in the pinned tier when it has room.
    pub hot: bool,
    /// The conversation the block belongs to, for the eviction policy.
    pub conversation: Option<String>,
    /// Overrides the store's durability for this block.
    pub durability: Option<Durability>,
}

/// Why a store could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    #[error("cannot open the ssd tier: {0}")]
    Ssd(#[from] crate::tier::ssd::SsdError),
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
}

pub(crate) struct Tiers {
    pub pinned: Option<Pinned>,
    pub dram: Dram,
    pub ssd: Option<Ssd>,
}

impl Tiers {
    pub fn get(&self, kind: TierKind) -> Option<&dyn Tier> {
        match kind {
            TierKind::Pinned => self.pinned.as_ref().map(|p| p as &dyn Tier),
            TierKind::Dram => Some(&self.dram),
            TierKind::Ssd => self.ssd.as_ref().map(|s| s as &dyn Tier),
        }
    }

    /// The next colder tier that exists.
    pub fn colder(&self, kind: TierKind) -> Option<TierKind> {
        match kind {
            TierKind::Pinned => Some(TierKind::Dram),
            TierKind::Dram => self.ssd.as_ref().map(|_| TierKind::Ssd),
            TierKind::Ssd => None,
        }
    }
}

pub(crate) struct Inner {
    catalog: Mutex<Catalog>,
    namespaces: Mutex<HashMap<Key, BlockShape>>,
    /// Per-namespace codec overrides, by fingerprint.
    namespace_codecs: Mutex<HashMap<Key, NamespaceCodecs>>,
    codecs: TierCodecs,
    tiers: Tiers,
    index: Option<Index>,
    counters: Counters,
    weights: PolicyWeights,
    max_block_bytes: u64,
    durability: Durability,
    clock: Arc<dyn Clock>,
}

/// kvtier's block store.
pub struct Store {
    inner: Arc<Inner>,
    writeback: Option<writeback::WriteBack>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("blocks", &self.inner.catalog().len())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every catalog mutation completes before anything that can panic, so a poisoned
    // lock still guards consistent state: keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn hex(key: &Key) -> String {
    key.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// A memory-only store (no data directory). Panics only if `config` asks for a data
    /// directory, which [`Store::open`] handles.
    pub fn new(config: &Config) -> Self {
        let memory_only = Config {
            data_dir: None,
            ..config.clone()
        };
        Store::open(&memory_only).expect("a memory-only store cannot fail to open")
    }

    /// Opens the store: tiers, and with a data directory the segment log and index, checked
    /// against each other.
    pub fn open(config: &Config) -> Result<Self, OpenError> {
        Store::open_with_io(config, None)
    }

    /// [`Store::open`] with the ssd tier on a given I/O engine (tests wrap one with
    /// failpoints).
    #[doc(hidden)]
    pub fn open_with_io(
        config: &Config,
        engine: Option<Arc<dyn crate::tier::ssd::IoEngine>>,
    ) -> Result<Self, OpenError> {
        Store::open_with(config, engine, Arc::new(SystemClock))
    }

    /// [`Store::open`] on a clock the caller moves (trace replays, tests of aging).
    pub fn open_with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<Self, OpenError> {
        Store::open_with(config, None, clock)
    }

    fn open_with(
        config: &Config,
        engine: Option<Arc<dyn crate::tier::ssd::IoEngine>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OpenError> {
        let (ssd, index, catalog) = recovery::open_durable(config, engine)?;
        let codecs = config.tier_codecs()?;
        let inner = Arc::new(Inner {
            catalog: Mutex::new(catalog),
            namespaces: Mutex::new(HashMap::new()),
            namespace_codecs: Mutex::new(HashMap::new()),
            codecs,
            tiers: Tiers {
                pinned: placement::pinned_tier(config),
                dram: Dram::new(config.dram_capacity.as_u64()),
                ssd,
            },
            index,
            counters: Counters::default(),
            weights: PolicyWeights::default(),
            max_block_bytes: config.max_block_bytes.as_u64(),
            durability: config.durability,
            clock,
        });
        let writeback = inner
            .tiers
            .ssd
            .as_ref()
            .map(|_| writeback::WriteBack::start(inner.clone()));
        Ok(Store { inner, writeback })
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
        options: &PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        self.inner.check_block(namespace, &block)?;
        self.inner.register(namespace)?;
        bump(&self.inner.counters.puts);
        let Some(outcome) = self.inner.reserve(key, parent, position, options)? else {
            return Ok(PutOutcome {
                stored: true,
                already_present: true,
            });
        };
        if !outcome {
            return Ok(PutOutcome {
                stored: false,
                already_present: false,
            });
        }
        let durability = match &self.inner.tiers.ssd {
            Some(_) => options.durability.unwrap_or(self.inner.durability),
            None => Durability::None,
        };
        if let Err(error) = self.inner.place_new(&key, &block, options.hot, durability) {
            self.inner.abandon(&key);
            return Err(error);
        }
        if durability == Durability::Async {
            if let Some(writeback) = &self.writeback {
                writeback.enqueue(key);
            }
        }
        Ok(PutOutcome {
            stored: true,
            already_present: false,
        })
    }

    /// Length of the longest prefix of `keys` that is held.
    pub fn lookup(&self, keys: &[Key]) -> usize {
        bump(&self.inner.counters.lookups);
        let catalog = self.inner.catalog();
        keys.iter().take_while(|key| catalog.holds(key)).count()
    }

    /// The verified block under `key`, or `None` for a miss.
    pub fn read(&self, namespace: &NamespaceSpec, key: &Key) -> Option<Bytes> {
        self.inner.read(Some(&namespace.fingerprint), key)
    }

    /// Removes the blocks under `keys` and their descendants.
    pub fn delete(&self, keys: &[Key]) -> u64 {
        let removed: Vec<(Key, Meta)> = {
            let mut catalog = self.inner.catalog();
            keys.iter()
                .flat_map(|key| catalog.remove_subtree(key))
                .collect()
        };
        let count = removed.len() as u64;
        self.inner.release(removed);
        count
    }

    /// Sets the codecs of one namespace's blocks per tier; tiers left `None` follow the
    /// store's config. Applies to copies written from now on (puts, demotions, promotions);
    /// blocks already in a tier stay as they are until they move.
    pub fn set_namespace_codecs(&self, fingerprint: Key, codecs: NamespaceCodecs) {
        self.inner.set_namespace_codecs(fingerprint, codecs);
    }

    /// The codec each tier uses for a namespace, overrides and config combined.
    pub fn namespace_codecs(&self, fingerprint: &Key) -> TierCodecs {
        let overrides = self.inner.namespace_codecs(fingerprint);
        let resolve = |tier| self.inner.codecs.resolve(overrides.as_ref(), tier);
        TierCodecs {
            pinned: resolve(TierKind::Pinned),
            dram: resolve(TierKind::Dram),
            ssd: resolve(TierKind::Ssd),
        }
    }

    pub fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    /// Rewrites mostly-dead segments; returns the bytes rewritten.
    pub fn compact(&self) -> u64 {
        self.inner.compact()
    }

    /// Waits until every block put so far with `async` durability is on the ssd tier.
    pub fn flush(&self) {
        if let Some(writeback) = &self.writeback {
            writeback.flush();
        }
    }

    /// Flips one byte of a block's memory copy, bypassing every check, so tests can prove
    /// corruption is detected on read.
    #[doc(hidden)]
    pub fn corrupt_for_test(&self, key: &Key) -> bool {
        let mut catalog = self.inner.catalog();
        let Some(Some((tier, Slot::Memory(bytes)))) = catalog.get(key).map(|m| m.memory.clone())
        else {
            return false;
        };
        let mut flipped = bytes.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x5a;
        catalog.set_memory(key, tier, Slot::Memory(Bytes::from(flipped)));
        true
    }

    /// Checks the catalog's invariants and every tier's capacity; for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        self.inner.catalog().check()?;
        for kind in TierKind::ALL {
            if let Some(tier) = self.inner.tiers.get(kind) {
                if tier.used() > tier.capacity() {
                    return Err(format!(
                        "{} holds {} of {}",
                        kind.as_str(),
                        tier.used(),
                        tier.capacity()
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(writeback) = self.writeback.take() {
            writeback.stop();
        }
    }
}

impl Inner {
    pub(crate) fn catalog(&self) -> MutexGuard<'_, Catalog> {
        lock(&self.catalog)
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

    /// Records a namespace's shape on first use; a later request with the same
    /// fingerprint and another shape is refused.
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

    /// Reserves `key`: `None` when already present, `Some(false)` when its parent is not
    /// held, `Some(true)` when reserved.
    fn reserve(
        &self,
        key: Key,
        parent: Option<Key>,
        position: u32,
        options: &PutOptions,
    ) -> Result<Option<bool>, StoreError> {
        let now = self.clock.now_ms();
        let mut catalog = self.catalog();
        if catalog.get(&key).is_some() {
            bump(&self.counters.puts_duplicate);
            return Ok(None);
        }
        if let Some(parent) = &parent {
            let Some(parent_meta) = catalog.get(parent).filter(|m| !m.pending) else {
                bump(&self.counters.puts_declined);
                tracing::debug!(position, "put declined: parent not held");
                return Ok(Some(false));
            };
            if parent_meta.position.checked_add(1) != Some(position) {
                return Err(StoreError::invalid(
                    "position",
                    format!(
                        "{position} does not follow the parent's position {}",
                        parent_meta.position
                    ),
                ));
            }
        }
        let mut meta = Meta::new(parent, position, now);
        if let Some(id) = &options.conversation {
            let conversation = catalog.conversation(id);
            catalog.conversation_put(&conversation, now);
            meta.conversation = Some(conversation);
        }
        catalog.reserve(key, meta);
        Ok(Some(true))
    }

    /// Drops a reservation whose write failed.
    fn abandon(&self, key: &Key) {
        let removed = self.catalog().remove_subtree(key);
        self.release(removed);
    }

    /// Frees every copy of removed blocks and their index entries.
    pub(crate) fn release(&self, removed: Vec<(Key, Meta)>) {
        let mut changes = Vec::new();
        for (key, meta) in removed {
            if let Some((tier, slot)) = &meta.memory {
                if let Some(tier) = self.tiers.get(*tier) {
                    tier.free(slot);
                }
            }
            if let (Some(location), Some(ssd)) = (meta.disk, &self.tiers.ssd) {
                ssd.free(&Slot::Disk(location));
                changes.push(IndexChange::Delete(key));
            }
        }
        if let (false, Some(index)) = (changes.is_empty(), &self.index) {
            if let Err(error) = index.apply(&changes, false) {
                tracing::warn!(%error, "index delete failed; recovery will reclaim the records");
            }
        }
    }

    /// The index entry of a block with a disk copy.
    pub(crate) fn index_entry(
        &self,
        meta: &Meta,
        location: crate::tier::ssd::Location,
        block: &[u8],
    ) -> IndexEntry {
        let view = BlockView::parse(block).ok();
        IndexEntry {
            codec: 0,
            location,
            checksum: view.as_ref().map_or(0, |v| v.payload_crc),
            raw_bytes: view.as_ref().map_or(0, |v| v.shape.raw_bytes() as u32),
            position: meta.position,
            parent: meta.parent,
            created_ms: meta.created_ms,
            last_access_ms: meta.last_access_ms,
            hits: meta.hits,
            lease_until_ms: 0,
            conversation: meta.conversation.as_deref().unwrap_or_default().to_string(),
        }
    }

    /// The verified block under `key`; `fingerprint`, when given, must be its namespace's.
    fn read(&self, fingerprint: Option<&Key>, key: &Key) -> Option<Bytes> {
        let (tier_kind, slot) = {
            let mut catalog = self.catalog();
            let Some(meta) = catalog.get(key).filter(|m| !m.pending) else {
                bump(&self.counters.misses);
                return None;
            };
            let source = match (&meta.memory, meta.disk) {
                (Some((tier, slot)), _) => (*tier, slot.clone()),
                (None, Some(location)) => (TierKind::Ssd, Slot::Disk(location)),
                (None, None) => return None,
            };
            catalog.touch(key, self.clock.now_ms());
            if let Some(meta) = catalog.get_mut(key) {
                meta.leases += 1;
            }
            source
        };
        let result = self
            .tiers
            .get(tier_kind)
            .ok_or(TierError::ForeignSlot {
                tier: tier_kind.as_str(),
            })
            .and_then(|tier| tier.read(key, &slot))
            .map_err(|e| e.to_string())
            .and_then(|bytes| verify(fingerprint, &bytes).map(|()| bytes));
        if let Some(meta) = self.catalog().get_mut(key) {
            meta.leases -= 1;
        }
        match result {
            Ok(bytes) => {
                bump(&self.counters.tier(tier_kind).hits);
                if tier_kind == TierKind::Ssd {
                    self.promote(key, &bytes);
                }
                Some(bytes)
            }
            Err(reason) => {
                bump(&self.counters.checksum_failures);
                bump(&self.counters.misses);
                bump(&self.counters.tier(tier_kind).misses);
                let removed = self.catalog().remove_subtree(key);
                let count = removed.len();
                self.release(removed);
                tracing::warn!(key = %hex(key), tier = tier_kind.as_str(), %reason, removed = count, "unreadable block dropped");
                None
            }
        }
    }
}

fn verify(fingerprint: Option<&Key>, block: &[u8]) -> Result<(), String> {
    let view = BlockView::parse(block).map_err(|e| e.to_string())?;
    if fingerprint.is_some_and(|f| view.fingerprint != *f) {
        return Err("block belongs to another namespace".to_string());
    }
    view.verify_payload().map_err(|e| e.to_string())
}
