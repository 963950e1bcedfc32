//! Where blocks go: placing new blocks, making room by demotion (pinned -> dram -> ssd)
//! and eviction of chain tails, promotion on hits, and compaction of the ssd tier.

use bytes::Bytes;

use super::counters::{add, bump};
use super::{hex, Inner};
use crate::policy::least_valuable;
use crate::tier::pinned::Pinned;
use crate::tier::{Slot, Tier, TierError, TierKind};
use crate::{Config, Durability, Key, StoreError};

/// Blocks sampled per eviction decision.
const SAMPLE: usize = 16;
/// Bound on victims moved to make room for one block.
const MAX_ROUNDS: usize = 4096;

/// The pinned tier, when the config gives it capacity.
pub(super) fn pinned_tier(config: &Config) -> Option<Pinned> {
    let capacity = config.pinned_capacity.as_u64();
    if capacity == 0 {
        return None;
    }
    let pinned = Pinned::new(capacity);
    tracing::info!(
        capacity = pinned.capacity(),
        locking = pinned.locking().as_str(),
        "pinned tier ready"
    );
    Some(pinned)
}

fn full_error(error: TierError) -> StoreError {
    match error {
        TierError::Full { needed, free, .. } => StoreError::Full {
            needed,
            capacity: free,
        },
        TierError::NoSpace { .. } => StoreError::DiskFull,
        other => StoreError::Io(other.to_string()),
    }
}

impl Inner {
    /// Writes a reserved block's first copies and commits the reservation.
    pub(super) fn place_new(
        &self,
        key: &Key,
        block: &Bytes,
        hot: bool,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let mut disk = None;
        if durability == Durability::Sync {
            let location = self.write_disk(key, block, true).map_err(full_error)?;
            disk = Some(location);
        }
        let first = if hot && self.tiers.pinned.is_some() {
            TierKind::Pinned
        } else {
            TierKind::Dram
        };
        let mut memory = None;
        for tier in [first, TierKind::Dram] {
            match self.write_memory(tier, key, block) {
                Ok(slot) => {
                    memory = Some((tier, slot));
                    break;
                }
                Err(error) if tier == TierKind::Dram && disk.is_none() => {
                    return Err(full_error(error));
                }
                Err(_) => {}
            }
        }
        let mut catalog = self.catalog();
        if let Some((tier, slot)) = memory {
            catalog.set_memory(key, tier, slot);
        }
        if let Some(location) = disk {
            catalog.set_disk(key, location);
        }
        if let Some(meta) = catalog.get_mut(key) {
            meta.pending = false;
        }
        Ok(())
    }

    pub(super) fn write_memory(
        &self,
        tier: TierKind,
        key: &Key,
        block: &Bytes,
    ) -> Result<Slot, TierError> {
        let block = &self.encode_for(tier, block)?;
        self.make_room(tier, block.len() as u64)?;
        let Some(target) = self.tiers.get(tier) else {
            return Err(TierError::Full {
                tier: tier.as_str(),
                needed: block.len() as u64,
                free: 0,
            });
        };
        target.write(key, block, false)
    }

    /// Appends a block to the ssd tier and records it in the index.
    pub(super) fn write_disk(
        &self,
        key: &Key,
        block: &Bytes,
        durable: bool,
    ) -> Result<crate::tier::ssd::Location, TierError> {
        let Some(ssd) = &self.tiers.ssd else {
            return Err(TierError::Full {
                tier: "ssd",
                needed: block.len() as u64,
                free: 0,
            });
        };
        let block = &self.encode_for(TierKind::Ssd, block)?;
        let needed = crate::tier::ssd::Location {
            segment: 0,
            offset: 0,
            len: block.len() as u32,
        };
        self.make_room(TierKind::Ssd, needed.disk_bytes())?;
        let Slot::Disk(location) = ssd.write(key, block, durable)? else {
            return Err(TierError::ForeignSlot { tier: "ssd" });
        };
        let entry = {
            let catalog = self.catalog();
            catalog
                .get(key)
                .map(|meta| self.index_entry(meta, location, block))
        };
        if let (Some(entry), Some(index)) = (entry, &self.index) {
            if let Err(error) = index.put(key, &entry, durable) {
                ssd.free(&Slot::Disk(location));
                return Err(TierError::Io {
                    tier: "ssd",
                    reason: error.to_string(),
                });
            }
        }
        Ok(location)
    }

    /// Frees at least `needed` bytes in `tier` by demoting to the next colder tier, or by
    /// evicting chain tails from the coldest one.
    pub(super) fn make_room(&self, tier: TierKind, needed: u64) -> Result<(), TierError> {
        let Some(target) = self.tiers.get(tier) else {
            return Err(TierError::Full {
                tier: tier.as_str(),
                needed,
                free: 0,
            });
        };
        if needed > target.capacity() {
            return Err(TierError::Full {
                tier: tier.as_str(),
                needed,
                free: target.capacity(),
            });
        }
        let colder = self.tiers.colder(tier);
        for _ in 0..MAX_ROUNDS {
            if target.has_room_for(needed) {
                return Ok(());
            }
            let Some(victim) = self.choose_victim(tier, colder.is_none()) else {
                let free = target.capacity() - target.used();
                return Err(TierError::Full {
                    tier: tier.as_str(),
                    needed,
                    free,
                });
            };
            let moved = match colder {
                Some(colder) => self.demote(&victim, tier, colder),
                None => Err(TierError::Full {
                    tier: tier.as_str(),
                    needed,
                    free: 0,
                }),
            };
            if moved.is_err() && !self.evict(&victim, tier) {
                self.unlease(&victim);
            }
        }
        let free = target.capacity() - target.used();
        Err(TierError::Full {
            tier: tier.as_str(),
            needed,
            free,
        })
    }

    /// The least valuable unleased block of `tier` (a chain tail when `leaves_only`),
    /// leased for the caller.
    fn choose_victim(&self, tier: TierKind, leaves_only: bool) -> Option<Key> {
        let mut catalog = self.catalog();
        let now = self.clock.now_ms();
        let mut candidates = catalog.sample(tier, SAMPLE, leaves_only);
        if candidates.is_empty() && !leaves_only {
            candidates = catalog.sample(tier, SAMPLE, true);
        }
        let victim = least_valuable(candidates, now, &self.weights)?;
        catalog.get_mut(&victim)?.leases += 1;
        Some(victim)
    }

    fn unlease(&self, key: &Key) {
        if let Some(meta) = self.catalog().get_mut(key) {
            meta.leases = meta.leases.saturating_sub(1);
        }
    }

    /// Moves a leased block's copy from `from` to `to`, then drops the lease.
    fn demote(&self, key: &Key, from: TierKind, to: TierKind) -> Result<(), TierError> {
        let (slot, disk) = {
            let catalog = self.catalog();
            let meta = catalog.get(key).ok_or(TierError::ForeignSlot {
                tier: from.as_str(),
            })?;
            let slot = match (&meta.memory, from) {
                (Some((tier, slot)), _) if *tier == from => slot.clone(),
                _ => {
                    return Err(TierError::ForeignSlot {
                        tier: from.as_str(),
                    })
                }
            };
            (slot, meta.disk)
        };
        let source = self.tiers.get(from).ok_or(TierError::ForeignSlot {
            tier: from.as_str(),
        })?;
        let new_copy = match (to, disk) {
            (TierKind::Ssd, Some(_)) => None,
            (TierKind::Ssd, None) => {
                let bytes = source.read(key, &slot)?;
                Some((to, Slot::Disk(self.write_disk(key, &bytes, false)?)))
            }
            (memory_tier, _) => {
                let bytes = source.read(key, &slot)?;
                Some((memory_tier, self.write_memory(memory_tier, key, &bytes)?))
            }
        };
        let mut catalog = self.catalog();
        match new_copy {
            Some((TierKind::Ssd, Slot::Disk(location))) => {
                catalog.set_disk(key, location);
                catalog.take_memory(key);
            }
            Some((tier, slot)) => {
                catalog.set_memory(key, tier, slot);
            }
            None => {
                catalog.take_memory(key);
            }
        }
        if let Some(meta) = catalog.get_mut(key) {
            meta.leases = meta.leases.saturating_sub(1);
        }
        drop(catalog);
        source.free(&slot);
        bump(&self.counters.tier(from).demotions);
        Ok(())
    }

    /// Drops a leased block if it is still a chain tail; false when it is not.
    fn evict(&self, key: &Key, tier: TierKind) -> bool {
        let removed = {
            let mut catalog = self.catalog();
            match catalog.get(key) {
                Some(meta) if meta.children.is_empty() => catalog.remove_subtree(key),
                _ => return false,
            }
        };
        tracing::trace!(key = %hex(key), tier = tier.as_str(), "evicted");
        add(&self.counters.tier(tier).evictions, removed.len() as u64);
        self.release(removed);
        true
    }

    /// Copies a block read from ssd back into dram when that needs no disk writes.
    pub(super) fn promote(&self, key: &Key, bytes: &Bytes) {
        let Ok(bytes) = &self.encode_for(TierKind::Dram, bytes) else {
            return;
        };
        let dram = &self.tiers.dram;
        if dram.capacity() - dram.used() < bytes.len() as u64 {
            return;
        }
        let Ok(slot) = dram.write(key, bytes, false) else {
            return;
        };
        let mut catalog = self.catalog();
        match catalog.get(key) {
            Some(meta) if meta.memory.is_none() => {
                catalog.set_memory(key, TierKind::Dram, slot);
                bump(&self.counters.tier(TierKind::Ssd).promotions);
            }
            _ => {
                drop(catalog);
                dram.free(&slot);
            }
        }
    }

    /// Rewrites the live records of mostly-dead segments and repoints the catalog and the
    /// index at their new places.
    pub(super) fn compact(&self) -> u64 {
        let Some(ssd) = &self.tiers.ssd else { return 0 };
        let threshold = ssd.log().config().compaction_threshold;
        let is_live = |key: &Key, location: &crate::tier::ssd::Location| {
            self.catalog()
                .get(key)
                .is_some_and(|meta| meta.disk == Some(*location))
        };
        let relocate = |moved: &[crate::tier::ssd::Moved]| {
            let mut catalog = self.catalog();
            let mut changes = Vec::new();
            for m in moved {
                let current = catalog.get(&m.key).map(|meta| meta.disk == Some(m.from));
                if current == Some(true) {
                    catalog.set_disk(&m.key, m.to);
                    if let Some(index) = &self.index {
                        if let Ok(Some(mut entry)) = index.get(&m.key) {
                            entry.location = m.to;
                            changes.push(crate::index::IndexChange::Put(m.key, entry));
                        }
                    }
                } else {
                    ssd.log().mark_dead(&m.to);
                }
            }
            if let (false, Some(index)) = (changes.is_empty(), &self.index) {
                if let Err(error) = index.apply(&changes, true) {
                    tracing::warn!(%error, "index update after compaction failed");
                }
            }
        };
        match ssd.log().compact(threshold, is_live, relocate) {
            Ok(done) => {
                add(&self.counters.compaction_bytes, done.bytes_rewritten);
                done.bytes_rewritten
            }
            Err(error) => {
                tracing::warn!(%error, "compaction failed");
                0
            }
        }
    }
}
