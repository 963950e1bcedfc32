//! Belady's offline policy: knowing the future, evict the block whose next use is
//! farthest (deepest first among equals), and do not store a block that would itself be
//! that victim. A parent is never used later than its child, so this keeps chains
//! prefix-closed by itself.

use std::collections::BTreeSet;

use super::replay::{Access, Cache};

pub struct Belady {
    capacity: usize,
    /// (next use, position) of every held block.
    held: Vec<Option<(u32, u32)>>,
    by_next_use: BTreeSet<(u32, u32, u32)>,
}

impl Belady {
    pub fn new(capacity: usize, blocks: usize) -> Self {
        Belady {
            capacity,
            held: vec![None; blocks],
            by_next_use: BTreeSet::new(),
        }
    }

    fn set(&mut self, access: &Access) {
        let entry = (access.next_use, access.position);
        if let Some((next, position)) = self.held[access.block as usize].replace(entry) {
            self.by_next_use.remove(&(next, position, access.block));
        }
        self.by_next_use
            .insert((access.next_use, access.position, access.block));
    }
}

impl Cache for Belady {
    fn contains(&self, block: u32) -> bool {
        self.held[block as usize].is_some()
    }

    fn touch(&mut self, access: &Access) {
        self.set(access);
    }

    fn insert(&mut self, access: &Access) -> bool {
        if self.capacity == 0 {
            return false;
        }
        if self.by_next_use.len() >= self.capacity {
            let Some(&farthest) = self.by_next_use.last() else {
                return false;
            };
            if (access.next_use, access.position) > (farthest.0, farthest.1) {
                return false;
            }
            self.by_next_use.remove(&farthest);
            self.held[farthest.2 as usize] = None;
        }
        self.set(access);
        true
    }
}
