//! Plain LRU over blocks: every reference refreshes a block, and the least recently
//! referenced block goes first, whatever its place in its chain.

use std::collections::BTreeMap;

use super::replay::{Access, Cache};

pub struct Lru {
    capacity: usize,
    clock: u64,
    /// Last reference stamp of every held block.
    stamps: Vec<Option<u64>>,
    by_stamp: BTreeMap<u64, u32>,
}

impl Lru {
    pub fn new(capacity: usize, blocks: usize) -> Self {
        Lru {
            capacity,
            clock: 0,
            stamps: vec![None; blocks],
            by_stamp: BTreeMap::new(),
        }
    }

    fn stamp(&mut self, block: u32) {
        self.clock += 1;
        if let Some(old) = self.stamps[block as usize].replace(self.clock) {
            self.by_stamp.remove(&old);
        }
        self.by_stamp.insert(self.clock, block);
    }
}

impl Cache for Lru {
    fn contains(&self, block: u32) -> bool {
        self.stamps[block as usize].is_some()
    }

    fn touch(&mut self, access: &Access) {
        self.stamp(access.block);
    }

    fn insert(&mut self, access: &Access) -> bool {
        if self.capacity == 0 {
            return false;
        }
        while self.by_stamp.len() >= self.capacity {
            if let Some((_, victim)) = self.by_stamp.pop_first() {
                self.stamps[victim as usize] = None;
            }
        }
        self.stamp(access.block);
        true
    }
}
