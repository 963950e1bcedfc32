//! What the store knows about every block: its chain links, where its copies live and the
//! state the policy scores. The catalog does no I/O; the store holds it under one lock and
//! does tier I/O around it.
//!
//! Invariants (checked by [`Catalog::check`]): a block's parent is in the catalog
//! (prefix closure); children lists mirror parent links; every block has at least one
//! copy unless it is `pending` (reserved by a put whose write is in flight); per-tier
//! membership sets list exactly the blocks with a copy in that tier.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;

use crate::policy::BlockState;
use crate::tier::{ssd::Location, Slot, TierKind};
use crate::Key;

/// One block's metadata.
#[derive(Debug, Clone)]
pub struct Meta {
    pub parent: Option<Key>,
    pub position: u32,
    pub children: Vec<Key>,
    /// The memory copy: in `pinned` or `dram`.
    pub memory: Option<(TierKind, Slot)>,
    /// The ssd copy.
    pub disk: Option<Location>,
    pub created_ms: u64,
    pub last_access_ms: u64,
    pub hits: u32,
    pub conversation: Option<Arc<str>>,
    /// In-flight reads or moves; a leased block is neither evicted nor moved.
    pub leases: u32,
    /// Reserved by a put whose first copy is being written; invisible to readers.
    pub pending: bool,
}

impl Meta {
    pub fn new(parent: Option<Key>, position: u32, now_ms: u64) -> Self {
        Meta {
            parent,
            position,
            children: Vec::new(),
            memory: None,
            disk: None,
            created_ms: now_ms,
            last_access_ms: now_ms,
            hits: 0,
            conversation: None,
            leases: 0,
            pending: true,
        }
    }

    pub fn in_tier(&self, tier: TierKind) -> bool {
        match tier {
            TierKind::Ssd => self.disk.is_some(),
            memory => self
                .memory
                .as_ref()
                .is_some_and(|(kind, _)| *kind == memory),
        }
    }
}

/// Keys with a copy in one tier, sampled uniformly in O(1).
#[derive(Debug, Default)]
struct Members {
    keys: Vec<Key>,
    slots: HashMap<Key, usize>,
}

impl Members {
    fn insert(&mut self, key: Key) {
        if !self.slots.contains_key(&key) {
            self.slots.insert(key, self.keys.len());
            self.keys.push(key);
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(index) = self.slots.remove(key) {
            self.keys.swap_remove(index);
            if let Some(moved) = self.keys.get(index) {
                self.slots.insert(*moved, index);
            }
        }
    }
}

/// The store-wide block catalog.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: HashMap<Key, Meta>,
    members: [Members; 3],
    conversations: HashMap<Arc<str>, Activity>,
}

/// What the catalog knows of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// Its last put, read or prefetch.
    pub last_ms: u64,
    /// Times it came back (read or prefetched its blocks) after a pause, counting the
    /// first request as one.
    pub turns: u32,
}

/// Reads of one conversation closer together than this belong to one turn.
pub const TURN_GAP_MS: u64 = 1_000;

fn tier_index(tier: TierKind) -> usize {
    tier as usize
}

impl Catalog {
    pub fn get(&self, key: &Key) -> Option<&Meta> {
        self.entries.get(key)
    }

    pub fn get_mut(&mut self, key: &Key) -> Option<&mut Meta> {
        self.entries.get_mut(key)
    }

    /// Present and readable (not a pending reservation).
    pub fn holds(&self, key: &Key) -> bool {
        self.entries.get(key).is_some_and(|meta| !meta.pending)
    }

    /// Every entry, pending ones included, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Meta)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn tier_len(&self, tier: TierKind) -> usize {
        self.members[tier_index(tier)].keys.len()
    }

    /// Adds a reserved (pending) entry and links it under its parent, which must exist.
    pub fn reserve(&mut self, key: Key, meta: Meta) {
        if let Some(parent) = meta.parent.and_then(|p| self.entries.get_mut(&p)) {
            parent.children.push(key);
        }
        self.entries.insert(key, meta);
    }

    /// Records that `key` has a copy in `tier` (memory slot or disk location).
    pub fn set_memory(
        &mut self,
        key: &Key,
        tier: TierKind,
        slot: Slot,
    ) -> Option<(TierKind, Slot)> {
        let meta = self.entries.get_mut(key)?;
        let old = meta.memory.replace((tier, slot));
        if let Some((old_tier, _)) = &old {
            self.members[tier_index(*old_tier)].remove(key);
        }
        self.members[tier_index(tier)].insert(*key);
        old
    }

    pub fn take_memory(&mut self, key: &Key) -> Option<(TierKind, Slot)> {
        let old = self.entries.get_mut(key)?.memory.take();
        if let Some((tier, _)) = &old {
            self.members[tier_index(*tier)].remove(key);
        }
        old
    }

    pub fn set_disk(&mut self, key: &Key, location: Location) -> Option<Location> {
        let meta = self.entries.get_mut(key)?;
        let old = meta.disk.replace(location);
        self.members[tier_index(TierKind::Ssd)].insert(*key);
        old
    }

    /// Marks a read: recency, hits and the conversation's activity.
    pub fn touch(&mut self, key: &Key, now_ms: u64) {
        if let Some(meta) = self.entries.get_mut(key) {
            meta.last_access_ms = now_ms;
            meta.hits = meta.hits.saturating_add(1);
            if let Some(conversation) = meta.conversation.clone() {
                self.conversation_returned(&conversation, now_ms);
            }
        }
    }

    /// Notes a put of the conversation: activity, but no new turn.
    pub fn conversation_put(&mut self, conversation: &Arc<str>, now_ms: u64) {
        self.conversations
            .entry(conversation.clone())
            .and_modify(|a| a.last_ms = a.last_ms.max(now_ms))
            .or_insert(Activity {
                last_ms: now_ms,
                turns: 1,
            });
    }

    /// Notes that the conversation came back for its blocks (a read or a prefetch); after
    /// a pause of [`TURN_GAP_MS`] that is a new turn.
    pub fn conversation_returned(&mut self, conversation: &Arc<str>, now_ms: u64) {
        let activity = self
            .conversations
            .entry(conversation.clone())
            .or_insert(Activity {
                last_ms: now_ms,
                turns: 1,
            });
        if now_ms.saturating_sub(activity.last_ms) >= TURN_GAP_MS {
            activity.turns = activity.turns.saturating_add(1);
        }
        activity.last_ms = activity.last_ms.max(now_ms);
    }

    /// The conversation's activity, if the catalog has seen it.
    #[cfg(test)]
    pub fn activity(&self, conversation: &str) -> Option<Activity> {
        self.conversations.get(conversation).copied()
    }

    /// Held blocks put under conversation `id`, in chain position order.
    pub fn conversation_keys(&self, id: &str) -> Vec<Key> {
        let mut keys: Vec<(u32, Key)> = self
            .entries
            .iter()
            .filter(|(_, m)| !m.pending && m.conversation.as_deref() == Some(id))
            .map(|(k, m)| (m.position, *k))
            .collect();
        keys.sort_unstable();
        keys.into_iter().map(|(_, k)| k).collect()
    }

    /// Interns a conversation id.
    pub fn conversation(&self, id: &str) -> Arc<str> {
        self.conversations
            .get_key_value(id)
            .map_or_else(|| Arc::from(id), |(k, _)| k.clone())
    }

    pub fn state(&self, meta: &Meta) -> BlockState {
        let activity = meta
            .conversation
            .as_ref()
            .and_then(|c| self.conversations.get(c));
        BlockState {
            last_access_ms: meta.last_access_ms,
            hits: meta.hits,
            position: meta.position,
            conversation_active_ms: activity.map(|a| a.last_ms),
            conversation_turns: activity.map_or(0, |a| a.turns),
        }
    }

    /// Up to `n` random unleased, non-pending blocks with a copy in `tier`; with
    /// `leaves_only`, blocks with no children (chain tails).
    pub fn sample(&self, tier: TierKind, n: usize, leaves_only: bool) -> Vec<(Key, BlockState)> {
        let members = &self.members[tier_index(tier)];
        if members.keys.is_empty() {
            return Vec::new();
        }
        let mut rng = rand::rng();
        let mut out = Vec::with_capacity(n);
        let tries = if members.keys.len() <= 4 * n {
            members.keys.len()
        } else {
            4 * n
        };
        for i in 0..tries {
            let key = if members.keys.len() <= 4 * n {
                members.keys[i]
            } else {
                members.keys[rng.random_range(0..members.keys.len())]
            };
            let Some(mut meta) = self.entries.get(&key) else {
                continue;
            };
            let mut key = key;
            if leaves_only {
                // Walk to the tail of this block's chain within the tier.
                while let Some(child) = meta.children.first() {
                    match self.entries.get(child) {
                        Some(next) if next.in_tier(tier) => {
                            key = *child;
                            meta = next;
                        }
                        _ => break,
                    }
                }
                if !meta.children.is_empty() {
                    continue;
                }
            }
            if meta.leases == 0 && !meta.pending && !out.iter().any(|(k, _)| *k == key) {
                out.push((key, self.state(meta)));
                if out.len() == n {
                    break;
                }
            }
        }
        out
    }

    /// Removes `key` and all its descendants; returns their metadata for the caller to
    /// free their copies.
    pub fn remove_subtree(&mut self, key: &Key) -> Vec<(Key, Meta)> {
        let Some(parent) = self.entries.get(key).map(|meta| meta.parent) else {
            return Vec::new();
        };
        if let Some(parent) = parent.and_then(|p| self.entries.get_mut(&p)) {
            parent.children.retain(|c| c != key);
        }
        let mut removed = Vec::new();
        let mut pending = vec![*key];
        while let Some(next) = pending.pop() {
            if let Some(meta) = self.entries.remove(&next) {
                for members in &mut self.members {
                    members.remove(&next);
                }
                pending.extend(meta.children.iter().copied());
                removed.push((next, meta));
            }
        }
        removed
    }

    /// Checks the invariants listed in the module doc.
    pub fn check(&self) -> Result<(), String> {
        for (key, meta) in &self.entries {
            if let Some(parent) = &meta.parent {
                let Some(parent_meta) = self.entries.get(parent) else {
                    return Err(format!("block at position {} has no parent", meta.position));
                };
                if !parent_meta.children.contains(key) {
                    return Err("parent does not list its child".into());
                }
            }
            if !meta.pending && meta.memory.is_none() && meta.disk.is_none() {
                return Err("a committed block has no copy".into());
            }
            for tier in TierKind::ALL {
                let listed = self.members[tier_index(tier)].slots.contains_key(key);
                if listed != meta.in_tier(tier) {
                    return Err(format!("{} membership out of date", tier.as_str()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_counts_a_turn_each_time_it_comes_back_after_a_pause() {
        let mut catalog = Catalog::default();
        let id: Arc<str> = Arc::from("chat-1");
        catalog.conversation_put(&id, 1_000);
        catalog.conversation_put(&id, 9_000);
        assert_eq!(catalog.activity("chat-1").map(|a| a.turns), Some(1));

        // The reads of one request come close together: one turn.
        catalog.conversation_returned(&id, 60_000);
        catalog.conversation_returned(&id, 60_200);
        assert_eq!(
            catalog.activity("chat-1"),
            Some(Activity {
                last_ms: 60_200,
                turns: 2
            })
        );
        catalog.conversation_returned(&id, 120_000);
        assert_eq!(catalog.activity("chat-1").map(|a| a.turns), Some(3));
        assert_eq!(catalog.activity("chat-2"), None);
    }
}
