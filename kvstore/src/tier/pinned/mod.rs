//! The `pinned` tier: blocks in one region of page-locked host memory, ready for DMA into a
//! GPU.
//!
//! The region is allocated once, at open, as the best locked memory the machine gives (see
//! `region.rs`: CUDA pinned memory, else `mmap` + `mlock`, else unlocked pages with one
//! warning); [`Pinned::locking`] says which. An extent allocator (`extents.rs`) hands out
//! disjoint, 64-byte aligned ranges of it, so the tier never holds more than its capacity.
//!
//! Protocol, beyond [`Tier`]'s: the extent of a slot is reserved under the allocator's
//! mutex, but bytes are copied in and out with no lock held, so copies of different blocks
//! run in parallel. That is sound because a slot is known only once `write` has returned
//! it, and callers never free a slot while a read of it is in flight. A free of a slot the
//! tier did not hand out, or a second free, is refused with a warning and changes nothing.

mod cuda;
mod extents;
mod region;

use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use self::extents::{rounded, Extents};
use self::region::Region;
pub use self::region::{LockPages, Locking};
use super::{Slot, Tier, TierError, TierKind};
use crate::Key;

const NAME: &str = "pinned";

/// Page-locked host memory, bounded by the size of its region.
pub struct Pinned {
    region: Region,
    extents: Mutex<Extents>,
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinned")
            .field("capacity", &self.region.len())
            .field("locking", &self.locking())
            .finish()
    }
}

impl Pinned {
    /// A tier of `capacity` bytes of the best page-locked memory available.
    pub fn new(capacity: u64) -> Self {
        Pinned::over(Region::allocate(region_len(capacity)))
    }

    /// A tier on an anonymous mapping locked with `lock` instead of `mlock`, so tests can
    /// force the unlocked path.
    pub fn mapped(capacity: u64, lock: LockPages) -> Self {
        Pinned::over(Region::mapped(region_len(capacity), lock))
    }

    fn over(region: Region) -> Self {
        let extents = Mutex::new(Extents::new(region.len()));
        Pinned { region, extents }
    }

    /// How the region's pages are kept resident.
    pub fn locking(&self) -> Locking {
        self.region.locking()
    }

    fn extents(&self) -> MutexGuard<'_, Extents> {
        // The allocator's methods finish every update before anything that can panic, so a
        // poisoned lock still guards consistent free lists.
        self.extents
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The extent of `slot`, when it is one this tier handed out and has not freed.
    fn live_extent(&self, slot: &Slot) -> Result<(usize, usize), TierError> {
        match slot {
            Slot::Extent { offset, len } if self.extents().is_live(*offset, *len) => {
                Ok((*offset, *len))
            }
            _ => Err(TierError::ForeignSlot { tier: NAME }),
        }
    }
}

/// A capacity too large for the address space maps nothing, which disables the tier.
fn region_len(capacity: u64) -> usize {
    usize::try_from(capacity).unwrap_or(usize::MAX)
}

fn out_of_region(error: region::OutOfRegion) -> TierError {
    TierError::Corrupt {
        tier: NAME,
        reason: error.to_string(),
    }
}

impl Tier for Pinned {
    fn kind(&self) -> TierKind {
        TierKind::Pinned
    }

    fn capacity(&self) -> u64 {
        self.region.len() as u64
    }

    fn used(&self) -> u64 {
        self.extents().used() as u64
    }

    fn has_room_for(&self, needed: u64) -> bool {
        let largest = self.extents().largest_free() as u64;
        usize::try_from(needed)
            .ok()
            .and_then(rounded)
            .is_some_and(|needed| needed as u64 <= largest)
    }

    fn write(&self, _key: &Key, block: &Bytes, _durable: bool) -> Result<Slot, TierError> {
        let extent = {
            let mut extents = self.extents();
            extents.alloc(block.len()).ok_or_else(|| TierError::Full {
                tier: NAME,
                needed: block.len() as u64,
                free: (extents.capacity() - extents.used()) as u64,
            })?
        };
        // SAFETY: the extent was just carved out of the free space, so no other slot covers
        // these bytes and nobody can read them before this function returns the slot.
        let copied = unsafe { self.region.copy_in(extent.offset, block) };
        if let Err(error) = copied {
            self.free(&Slot::Extent {
                offset: extent.offset,
                len: block.len(),
            });
            return Err(out_of_region(error));
        }
        Ok(Slot::Extent {
            offset: extent.offset,
            len: block.len(),
        })
    }

    fn read(&self, key: &Key, slot: &Slot) -> Result<Bytes, TierError> {
        let mut out = Vec::new();
        self.read_into(key, slot, &mut out)?;
        Ok(Bytes::from(out))
    }

    fn read_into(&self, _key: &Key, slot: &Slot, out: &mut Vec<u8>) -> Result<(), TierError> {
        let (offset, len) = self.live_extent(slot)?;
        // SAFETY: the extent is live and was fully written before its slot existed; the
        // caller holds the slot and, by the tier protocol, does not free it while this read
        // runs, so nothing writes these bytes meanwhile.
        unsafe { self.region.copy_out(offset, len, out) }.map_err(out_of_region)
    }

    fn free(&self, slot: &Slot) {
        let Slot::Extent { offset, len } = slot else {
            return;
        };
        if let Err(error) = self.extents().free(*offset, *len) {
            tracing::warn!(%error, "pinned tier refused to free an extent it does not hold");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::ptr::NonNull;

    use super::*;
    use crate::tier::conformance;

    fn refuse_lock(_: NonNull<u8>, _: usize) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }

    #[test]
    fn pinned_passes_the_tier_conformance_suite() {
        conformance::run_all(Pinned::new);
    }

    #[test]
    fn pinned_on_unlocked_pages_passes_the_tier_conformance_suite() {
        conformance::run_all(|capacity| {
            let tier = Pinned::mapped(capacity, refuse_lock);
            assert_eq!(tier.locking(), Locking::Unlocked);
            tier
        });
    }

    #[test]
    fn without_a_cuda_driver_the_region_is_mapped_memory() {
        let tier = Pinned::new(1 << 20);
        if !cuda::driver_present() {
            assert_ne!(tier.locking(), Locking::Cuda);
        }
        assert_eq!(tier.capacity(), 1 << 20);
    }

    #[test]
    fn a_freed_slot_no_longer_reads() {
        let tier = Pinned::new(1 << 20);
        let slot = tier
            .write(&[1; 32], &Bytes::from_static(b"kv"), false)
            .unwrap();
        tier.free(&slot);
        let err = tier.read(&[1; 32], &slot).unwrap_err();
        assert!(err.is_miss(), "{err}");
    }

    #[test]
    fn a_double_free_changes_nothing() {
        let tier = Pinned::new(1 << 20);
        let kept = tier
            .write(&[1; 32], &Bytes::from(vec![3; 1000]), false)
            .unwrap();
        let freed = tier
            .write(&[2; 32], &Bytes::from(vec![4; 1000]), false)
            .unwrap();
        tier.free(&freed);
        let used = tier.used();
        tier.free(&freed);
        tier.free(&Slot::Extent { offset: 64, len: 5 });
        assert_eq!(tier.used(), used);
        assert_eq!(tier.read(&[1; 32], &kept).unwrap(), vec![3; 1000]);
    }

    #[test]
    fn room_means_one_free_extent_large_enough() {
        let tier = Pinned::new(64 * 4);
        let slots: Vec<Slot> = (0..4u8)
            .map(|i| {
                tier.write(&[i; 32], &Bytes::from(vec![i; 64]), false)
                    .unwrap()
            })
            .collect();
        tier.free(&slots[0]);
        tier.free(&slots[2]);
        // 128 bytes are free, but in two separate 64-byte holes.
        assert_eq!(tier.capacity() - tier.used(), 128);
        assert!(tier.has_room_for(64));
        assert!(!tier.has_room_for(65));
        let err = tier
            .write(&[9; 32], &Bytes::from(vec![9; 128]), false)
            .unwrap_err();
        assert!(matches!(err, TierError::Full { .. }), "{err}");
    }

    #[test]
    fn parallel_writers_and_readers_see_their_own_bytes() {
        let tier = Pinned::new(8 << 20);
        std::thread::scope(|scope| {
            for thread in 0..4u8 {
                let tier = &tier;
                scope.spawn(move || {
                    for round in 0..200u32 {
                        let fill = thread.wrapping_mul(31).wrapping_add(round as u8);
                        let block = Bytes::from(vec![fill; 1000 + round as usize * 37]);
                        let slot = tier.write(&[thread; 32], &block, false).unwrap();
                        assert_eq!(tier.read(&[thread; 32], &slot).unwrap(), block);
                        tier.free(&slot);
                    }
                });
            }
        });
        assert_eq!(tier.used(), 0);
    }
}
