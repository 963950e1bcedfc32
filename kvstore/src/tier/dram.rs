//! The `dram` tier: blocks in ordinary memory, shared without copies.
//!
//! A slot owns a reference to the block's bytes, so a write of bytes that arrived from
//! the network costs no copy and a read hands out another reference. Capacity counts the
//! bytes of every slot not yet freed.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{Slot, Tier, TierError, TierKind};
use crate::Key;

/// Ordinary memory, bounded by a byte capacity.
#[derive(Debug)]
pub struct Dram {
    capacity: u64,
    used: AtomicU64,
}

impl Dram {
    pub fn new(capacity: u64) -> Self {
        Dram {
            capacity,
            used: AtomicU64::new(0),
        }
    }
}

impl Tier for Dram {
    fn kind(&self) -> TierKind {
        TierKind::Dram
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    fn write(&self, _key: &Key, block: &Bytes, _durable: bool) -> Result<Slot, TierError> {
        let needed = block.len() as u64;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(needed)
                    .filter(|&total| total <= self.capacity)
            })
            .map_err(|used| TierError::Full {
                tier: "dram",
                needed,
                free: self.capacity - used,
            })?;
        Ok(Slot::Memory(block.clone()))
    }

    fn read(&self, _key: &Key, slot: &Slot) -> Result<Bytes, TierError> {
        match slot {
            Slot::Memory(bytes) => Ok(bytes.clone()),
            _ => Err(TierError::ForeignSlot { tier: "dram" }),
        }
    }

    fn free(&self, slot: &Slot) {
        if let Slot::Memory(bytes) = slot {
            self.used.fetch_sub(bytes.len() as u64, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dram_passes_the_tier_conformance_suite() {
        crate::tier::conformance::run_all(Dram::new);
    }

    #[test]
    fn a_write_shares_the_callers_bytes() {
        let tier = Dram::new(1 << 20);
        let block = Bytes::from(vec![1u8; 1000]);
        let slot = tier.write(&[0; 32], &block, false).unwrap();
        assert_eq!(tier.read(&[0; 32], &slot).unwrap().as_ptr(), block.as_ptr());
    }
}
