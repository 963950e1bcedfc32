//! The `dram` tier: blocks in ordinary memory under a byte capacity that is never exceeded.
//!
//! Chains are tracked explicitly: each entry knows its parent and children. Only leaves
//! (blocks with no stored child) are eviction candidates, oldest access first and deepest
//! position first among equals, so what the tier holds stays prefix-closed: no block is
//! kept while the block before it in its chain is gone. Removing a block (delete or a
//! failed checksum) removes its descendants with it for the same reason.
//!
//! The tier is not synchronised; the store wraps it in a lock.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;

use crate::Key;

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Newly stored; `evicted` blocks were dropped to make room.
    Stored { evicted: u64 },
    /// The key was already present; the first write wins.
    AlreadyPresent,
    /// Not stored because its parent is not held (it would break prefix closure).
    Orphan,
}

/// Why an insert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// Nothing evictable frees enough room.
    Full { needed: u64, capacity: u64 },
    /// The parent is held at a position that does not precede this block's.
    PositionMismatch { parent_position: u32, position: u32 },
}

#[derive(Debug)]
struct Entry {
    block: Bytes,
    parent: Option<Key>,
    position: u32,
    children: Vec<Key>,
    last_access: u64,
}

type LeafRank = (u64, Reverse<u32>, Key);

/// Blocks in memory, bounded by `capacity` bytes.
#[derive(Debug)]
pub struct DramTier {
    capacity: u64,
    used: u64,
    entries: HashMap<Key, Entry>,
    leaves: BTreeSet<LeafRank>,
    clock: u64,
}

impl DramTier {
    pub fn new(capacity: u64) -> Self {
        DramTier {
            capacity,
            used: 0,
            entries: HashMap::new(),
            leaves: BTreeSet::new(),
            clock: 0,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.entries.contains_key(key)
    }

    /// Stores `block` under `key`, evicting chain tails as needed. `parent` is `None`
    /// exactly for position 0.
    pub fn insert(
        &mut self,
        key: Key,
        parent: Option<Key>,
        position: u32,
        block: Bytes,
    ) -> Result<Inserted, InsertError> {
        if self.entries.contains_key(&key) {
            return Ok(Inserted::AlreadyPresent);
        }
        if let Some(parent) = &parent {
            let Some(entry) = self.entries.get(parent) else {
                return Ok(Inserted::Orphan);
            };
            if entry.position.checked_add(1) != Some(position) {
                return Err(InsertError::PositionMismatch {
                    parent_position: entry.position,
                    position,
                });
            }
        }
        let size = block.len() as u64;
        let evicted = self.make_room(size, parent.as_ref())?;
        if let Some(parent) = &parent {
            self.add_child(parent, key);
        }
        let last_access = self.tick();
        self.entries.insert(
            key,
            Entry {
                block,
                parent,
                position,
                children: Vec::new(),
                last_access,
            },
        );
        self.leaves.insert((last_access, Reverse(position), key));
        self.used += size;
        Ok(Inserted::Stored { evicted })
    }

    /// The block under `key`, marking it recently used.
    pub fn get(&mut self, key: &Key) -> Option<Bytes> {
        let now = self.tick();
        let entry = self.entries.get_mut(key)?;
        if entry.children.is_empty() {
            self.leaves
                .remove(&(entry.last_access, Reverse(entry.position), *key));
            self.leaves.insert((now, Reverse(entry.position), *key));
        }
        entry.last_access = now;
        Some(entry.block.clone())
    }

    /// Removes `key` and every block below it in its chains; returns how many went.
    pub fn remove_subtree(&mut self, key: &Key) -> u64 {
        let Some(entry) = self.entries.get(key) else {
            return 0;
        };
        if let Some(parent) = entry.parent {
            self.detach_child(&parent, key);
        }
        let mut removed = 0;
        let mut pending = vec![*key];
        while let Some(next) = pending.pop() {
            if let Some(entry) = self.entries.remove(&next) {
                self.leaves
                    .remove(&(entry.last_access, Reverse(entry.position), next));
                self.used -= entry.block.len() as u64;
                pending.extend(entry.children);
                removed += 1;
            }
        }
        removed
    }

    /// Replaces the bytes held under `key` without any check. Only for tests that need a
    /// block corrupted in memory.
    pub fn replace_bytes_unchecked(&mut self, key: &Key, block: Bytes) -> bool {
        match self.entries.get_mut(key) {
            Some(entry) if entry.block.len() == block.len() => {
                entry.block = block;
                true
            }
            _ => false,
        }
    }

    /// Checks the tier's invariants; for tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.used > self.capacity {
            return Err(format!(
                "used {} over capacity {}",
                self.used, self.capacity
            ));
        }
        let sum: u64 = self.entries.values().map(|e| e.block.len() as u64).sum();
        if sum != self.used {
            return Err(format!("used {} but blocks add up to {sum}", self.used));
        }
        for (key, entry) in &self.entries {
            if let Some(parent) = &entry.parent {
                if !self.entries.contains_key(parent) {
                    return Err(format!(
                        "block at position {} has no parent",
                        entry.position
                    ));
                }
            }
            let is_leaf = self
                .leaves
                .contains(&(entry.last_access, Reverse(entry.position), *key));
            if is_leaf != entry.children.is_empty() {
                return Err("leaf set out of date".to_string());
            }
        }
        Ok(())
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Evicts leaves, oldest first, until `size` more bytes fit. `keep` (the parent of the
    /// block being inserted) is never evicted.
    fn make_room(&mut self, size: u64, keep: Option<&Key>) -> Result<u64, InsertError> {
        let full = InsertError::Full {
            needed: size,
            capacity: self.capacity,
        };
        if size > self.capacity {
            return Err(full);
        }
        let mut evicted = 0;
        while self.used + size > self.capacity {
            let victim = self
                .leaves
                .iter()
                .map(|(_, _, key)| *key)
                .find(|key| Some(key) != keep)
                .ok_or(full)?;
            evicted += self.remove_subtree(&victim);
        }
        Ok(evicted)
    }

    fn add_child(&mut self, parent: &Key, child: Key) {
        if let Some(entry) = self.entries.get_mut(parent) {
            if entry.children.is_empty() {
                self.leaves
                    .remove(&(entry.last_access, Reverse(entry.position), *parent));
            }
            entry.children.push(child);
        }
    }

    fn detach_child(&mut self, parent: &Key, child: &Key) {
        if let Some(entry) = self.entries.get_mut(parent) {
            entry.children.retain(|c| c != child);
            if entry.children.is_empty() {
                self.leaves
                    .insert((entry.last_access, Reverse(entry.position), *parent));
            }
        }
    }
}

#[cfg(test)]
mod tests;
