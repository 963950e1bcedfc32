//! Prefetch: moving the blocks a request is about to read into the hottest tier there is
//! (pinned, else dram), before the request is scheduled.
//!
//! Each block is leased while it moves, so neither eviction nor demotion touches it; the
//! old memory copy is freed only after the catalog points at the new one. A block that is
//! missing, pending, unreadable or does not fit is skipped: prefetch is a hint, and a
//! reader that comes later still finds the block where it was.

use bytes::Bytes;

use super::counters::bump;
use super::{hex, verify, Inner, NamespaceSpec, Store};
use crate::tier::{Slot, TierKind};
use crate::Key;

/// What a prefetch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefetchOutcome {
    pub promoted: u32,
    pub already_hot: u32,
    pub skipped: u32,
}

enum Moved {
    Promoted,
    AlreadyHot,
    Skipped,
}

impl Store {
    /// Promotes the held blocks of `keys`, then those put under `conversation`, toward the
    /// pinned tier, in chain order (a prefix is worth more than its tail).
    pub fn prefetch(
        &self,
        namespace: &NamespaceSpec,
        keys: &[Key],
        conversation: Option<&str>,
    ) -> PrefetchOutcome {
        let mut wanted = keys.to_vec();
        if let Some(id) = conversation {
            let mut catalog = self.inner.catalog();
            let interned = catalog.conversation(id);
            catalog.conversation_returned(&interned, self.inner.clock.now_ms());
            wanted.extend(catalog.conversation_keys(id));
        }
        let mut outcome = PrefetchOutcome::default();
        let mut seen = std::collections::HashSet::new();
        for key in wanted.iter().filter(|k| seen.insert(**k)) {
            match self.inner.promote_hot(namespace, key) {
                Moved::Promoted => outcome.promoted += 1,
                Moved::AlreadyHot => outcome.already_hot += 1,
                Moved::Skipped => outcome.skipped += 1,
            }
        }
        tracing::debug!(
            promoted = outcome.promoted,
            already_hot = outcome.already_hot,
            skipped = outcome.skipped,
            "prefetch"
        );
        outcome
    }
}

impl Inner {
    fn hottest(&self) -> TierKind {
        if self.tiers.pinned.is_some() {
            TierKind::Pinned
        } else {
            TierKind::Dram
        }
    }

    /// Copies one block into the hottest tier and repoints the catalog at the copy.
    fn promote_hot(&self, namespace: &NamespaceSpec, key: &Key) -> Moved {
        let target = self.hottest();
        let (from, slot) = {
            let mut catalog = self.catalog();
            let Some(meta) = catalog.get_mut(key).filter(|m| !m.pending) else {
                return Moved::Skipped;
            };
            let source = match (&meta.memory, meta.disk) {
                (Some((tier, _)), _) if *tier == target => return Moved::AlreadyHot,
                (Some((tier, slot)), _) => (*tier, slot.clone()),
                (None, Some(location)) => (TierKind::Ssd, Slot::Disk(location)),
                (None, None) => return Moved::Skipped,
            };
            meta.leases += 1;
            source
        };
        let moved = self.copy_into(namespace, key, from, &slot, target);
        let mut catalog = self.catalog();
        let result = match moved {
            Some(new_slot) => {
                let still_there = catalog
                    .get(key)
                    .is_some_and(|m| m.memory.as_ref().map(|(t, _)| *t) == memory_of(from));
                if still_there {
                    let old = catalog.set_memory(key, target, new_slot);
                    drop(catalog);
                    if let Some((tier, old_slot)) = old {
                        if let Some(t) = self.tiers.get(tier) {
                            t.free(&old_slot);
                        }
                    }
                    bump(&self.counters.tier(from).promotions);
                    catalog = self.catalog();
                    Moved::Promoted
                } else {
                    drop(catalog);
                    if let Some(t) = self.tiers.get(target) {
                        t.free(&new_slot);
                    }
                    catalog = self.catalog();
                    Moved::Skipped
                }
            }
            None => Moved::Skipped,
        };
        if let Some(meta) = catalog.get_mut(key) {
            meta.leases = meta.leases.saturating_sub(1);
        }
        result
    }

    /// Reads a leased block from `from`, checks it and writes it into `target`.
    fn copy_into(
        &self,
        namespace: &NamespaceSpec,
        key: &Key,
        from: TierKind,
        slot: &Slot,
        target: TierKind,
    ) -> Option<Slot> {
        let bytes: Bytes = match self.tiers.get(from)?.read(key, slot) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::debug!(key = %hex(key), %error, "prefetch read failed");
                return None;
            }
        };
        if let Err(reason) = verify(Some(&namespace.fingerprint), &bytes) {
            tracing::debug!(key = %hex(key), %reason, "prefetch found a bad block");
            return None;
        }
        self.write_memory(target, key, &bytes).ok()
    }
}

/// The memory tier a block read from `from` had: none when it came from ssd.
fn memory_of(from: TierKind) -> Option<TierKind> {
    (from != TierKind::Ssd).then_some(from)
}
