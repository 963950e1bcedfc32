//! Best-fit allocation of byte ranges ("extents") of one fixed-size region.
//!
//! Free space is kept twice: by offset (to find and merge the neighbours of a freed extent)
//! and by (length, offset) (to find the smallest free extent that fits). Every allocation is
//! rounded up to [`GRANULE`] bytes, so offsets stay 64-byte aligned and no two live extents
//! share an offset. Live extents are remembered too, so that a free of something that was
//! never allocated, or is freed twice, is refused instead of corrupting the free lists.
//!
//! The allocator only does arithmetic; it never touches the region's memory. It is not
//! synchronised: the pinned tier keeps it behind a mutex.

use std::collections::{BTreeMap, BTreeSet};

/// Allocation granularity and alignment of every extent, in bytes.
pub const GRANULE: usize = 64;

/// A live extent: `len` is the rounded length charged to `used`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: usize,
    pub len: usize,
}

/// Why [`Extents::free`] refused an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no live extent of {len} bytes at offset {offset}")]
pub struct NotAllocated {
    pub offset: usize,
    pub len: usize,
}

/// The free and live extents of a region of `capacity` bytes.
#[derive(Debug)]
pub struct Extents {
    capacity: usize,
    used: usize,
    /// offset -> length of each free extent; neighbours are always merged.
    free_by_offset: BTreeMap<usize, usize>,
    /// (length, offset) of each free extent, for best fit.
    free_by_len: BTreeSet<(usize, usize)>,
    /// offset -> rounded length of each live extent.
    live: BTreeMap<usize, usize>,
}

/// `len` rounded up to a whole number of granules, at least one; `None` on overflow.
pub fn rounded(len: usize) -> Option<usize> {
    len.max(1).checked_next_multiple_of(GRANULE)
}

impl Extents {
    pub fn new(capacity: usize) -> Self {
        let mut extents = Extents {
            capacity,
            used: 0,
            free_by_offset: BTreeMap::new(),
            free_by_len: BTreeSet::new(),
            live: BTreeMap::new(),
        };
        if capacity > 0 {
            extents.insert_free(0, capacity);
        }
        extents
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes in live extents (rounded lengths); never more than the capacity.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Number of free extents; one (or zero when full) once everything is freed.
    #[cfg(test)]
    pub fn free_extent_count(&self) -> usize {
        self.free_by_offset.len()
    }

    /// The smallest free extent that holds `len` bytes, carved from its start; `None` when
    /// no single free extent is large enough (which fragmentation can cause even when the
    /// total free space would be).
    pub fn alloc(&mut self, len: usize) -> Option<Extent> {
        let need = rounded(len)?;
        let &(free_len, offset) = self.free_by_len.range((need, 0)..).next()?;
        self.remove_free(offset, free_len);
        if free_len > need {
            self.insert_free(offset + need, free_len - need);
        }
        self.live.insert(offset, need);
        self.used += need;
        Some(Extent { offset, len: need })
    }

    /// Returns the live extent at `offset` (allocated for `len` bytes) to the free space,
    /// merged with its free neighbours.
    pub fn free(&mut self, offset: usize, len: usize) -> Result<(), NotAllocated> {
        let refused = NotAllocated { offset, len };
        let need = rounded(len).ok_or(refused)?;
        if self.live.get(&offset) != Some(&need) {
            return Err(refused);
        }
        self.live.remove(&offset);
        self.used -= need;

        let (mut start, mut end) = (offset, offset + need);
        if let Some((&prev, &prev_len)) = self.free_by_offset.range(..start).next_back() {
            if prev + prev_len == start {
                self.remove_free(prev, prev_len);
                start = prev;
            }
        }
        if let Some(&next_len) = self.free_by_offset.get(&end) {
            self.remove_free(end, next_len);
            end += next_len;
        }
        self.insert_free(start, end - start);
        Ok(())
    }

    /// Whether `[offset, offset + len)` lies inside the live extent that starts at `offset`.
    pub fn is_live(&self, offset: usize, len: usize) -> bool {
        matches!((self.live.get(&offset), rounded(len)), (Some(&live), Some(need)) if live == need)
    }

    /// The largest single free extent: the biggest block a write could place now.
    pub fn largest_free(&self) -> usize {
        self.free_by_len.last().map_or(0, |&(len, _)| len)
    }

    fn insert_free(&mut self, offset: usize, len: usize) {
        self.free_by_offset.insert(offset, len);
        self.free_by_len.insert((len, offset));
    }

    fn remove_free(&mut self, offset: usize, len: usize) {
        self.free_by_offset.remove(&offset);
        self.free_by_len.remove(&(len, offset));
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Checks that live and free extents tile `[0, capacity)` with no overlap or gap, that
    /// free neighbours are merged, and that `used` is the sum of live lengths.
    fn assert_consistent(extents: &Extents) {
        let mut ranges: Vec<(usize, usize, bool)> = extents
            .live
            .iter()
            .map(|(&off, &len)| (off, len, true))
            .collect();
        ranges.extend(
            extents
                .free_by_offset
                .iter()
                .map(|(&off, &len)| (off, len, false)),
        );
        ranges.sort_unstable();

        let mut cursor = 0;
        let mut previous_was_free = false;
        for &(offset, len, live) in &ranges {
            assert_eq!(offset, cursor, "gap or overlap at {offset}");
            assert!(
                live || !previous_was_free,
                "unmerged free neighbours at {offset}"
            );
            previous_was_free = !live;
            cursor = offset + len;
        }
        assert_eq!(cursor, extents.capacity());
        assert_eq!(extents.used(), extents.live.values().sum::<usize>());
        assert_eq!(extents.free_by_len.len(), extents.free_by_offset.len());
    }

    #[test]
    fn allocations_are_rounded_up_to_the_granule_and_aligned() {
        let mut extents = Extents::new(1 << 20);
        let a = extents.alloc(1).unwrap();
        let b = extents.alloc(65).unwrap();
        let c = extents.alloc(0).unwrap();
        assert_eq!((a.len, b.len, c.len), (64, 128, 64));
        assert!([a, b, c].iter().all(|e| e.offset % GRANULE == 0));
        assert_eq!(extents.used(), 256);
    }

    #[test]
    fn freeing_everything_coalesces_into_one_free_extent() {
        let mut extents = Extents::new(64 * 100);
        let held: Vec<Extent> = (0..100).map(|_| extents.alloc(64).unwrap()).collect();
        assert_eq!(extents.free_extent_count(), 0);
        // Free every other extent, then the rest, so each free merges on both sides.
        for extent in held.iter().step_by(2).chain(held.iter().skip(1).step_by(2)) {
            extents.free(extent.offset, extent.len).unwrap();
            assert_consistent(&extents);
        }
        assert_eq!(extents.free_extent_count(), 1);
        assert_eq!(extents.largest_free(), 64 * 100);
        assert_eq!(extents.used(), 0);
    }

    #[test]
    fn an_allocation_larger_than_every_free_extent_fails_without_change() {
        let mut extents = Extents::new(64 * 4);
        let a = extents.alloc(64).unwrap();
        let _b = extents.alloc(64).unwrap();
        extents.free(a.offset, a.len).unwrap();
        // 192 bytes are free in total, but as 64 + 128: a 192-byte block does not fit.
        assert_eq!(extents.alloc(192), None);
        assert_eq!(extents.used(), 64);
        assert_consistent(&extents);
    }

    #[test]
    fn best_fit_takes_the_smallest_free_extent_that_fits() {
        // 512 bytes allocated, leaving a 64-byte tail free.
        let mut extents = Extents::new(64 * 9);
        let held: Vec<Extent> = [64, 64, 192, 64, 128]
            .map(|len| extents.alloc(len).unwrap())
            .into();
        extents.free(held[0].offset, held[0].len).unwrap(); // hole of 64 at 0
        extents.free(held[2].offset, held[2].len).unwrap(); // hole of 192
        let placed = extents.alloc(100).unwrap();
        assert_eq!(placed.offset, held[2].offset);
        assert_eq!(extents.alloc(10).unwrap().offset, 0);
    }

    #[test]
    fn double_and_unknown_frees_are_refused() {
        let mut extents = Extents::new(1 << 16);
        let a = extents.alloc(1000).unwrap();
        assert!(extents.free(a.offset + 64, 64).is_err());
        assert!(extents.free(a.offset, 64).is_err());
        extents.free(a.offset, 1000).unwrap();
        assert_eq!(
            extents.free(a.offset, 1000),
            Err(NotAllocated {
                offset: 0,
                len: 1000
            })
        );
        assert_consistent(&extents);
        assert_eq!(extents.used(), 0);
    }

    #[test]
    fn zero_capacity_allocates_nothing() {
        let mut extents = Extents::new(0);
        assert_eq!(extents.alloc(1), None);
        assert_eq!(extents.free_extent_count(), 0);
        assert_eq!(extents.largest_free(), 0);
    }

    #[test]
    fn a_capacity_that_is_not_a_granule_multiple_is_used_to_the_last_granule() {
        let mut extents = Extents::new(64 * 3 + 10);
        let held: Vec<Extent> = (0..3).map(|_| extents.alloc(64).unwrap()).collect();
        assert_eq!(extents.alloc(1), None, "a 10-byte tail holds no granule");
        for extent in held {
            extents.free(extent.offset, extent.len).unwrap();
        }
        assert_eq!(extents.free_extent_count(), 1);
        assert_consistent(&extents);
    }

    #[test]
    fn random_alloc_and_free_never_overlap_or_exceed_capacity() {
        let capacity = 1 << 20;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut extents = Extents::new(capacity);
        let mut held: Vec<(Extent, usize)> = Vec::new();
        for _ in 0..20_000 {
            if rng.random_bool(0.55) {
                let len = rng.random_range(0..40_000);
                if let Some(extent) = extents.alloc(len) {
                    held.push((extent, len));
                }
            } else if !held.is_empty() {
                let (extent, len) = held.swap_remove(rng.random_range(0..held.len()));
                extents.free(extent.offset, len).unwrap();
            }
            assert!(extents.used() <= capacity);
        }
        assert_consistent(&extents);
        let mut live: Vec<Extent> = held.iter().map(|&(extent, _)| extent).collect();
        live.sort_by_key(|extent| extent.offset);
        assert!(live
            .windows(2)
            .all(|w| w[0].offset + w[0].len <= w[1].offset));

        for (extent, len) in held {
            extents.free(extent.offset, len).unwrap();
        }
        assert_eq!(extents.used(), 0);
        assert_eq!(extents.free_extent_count(), 1);
    }
}
