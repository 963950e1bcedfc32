//! The pinned tier's one region of page-locked host memory, and byte copies in and out.
//!
//! [`Region::allocate`] tries CUDA pinned memory first (see `cuda.rs`), then an anonymous
//! `mmap` locked with `mlock`; when `mlock` is refused (typically `RLIMIT_MEMLOCK`) the
//! region still works, unlocked, after one warning per process. It never fails: a region whose mapping
//! cannot be made at all is empty (zero bytes), which disables the tier.
//!
//! The region does no bookkeeping of its own. Its copy methods check bounds, but callers
//! must make sure no two threads touch the same bytes at once with a write among them;
//! the tier's extent allocator hands out disjoint extents for exactly that.

use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, Ordering};

use super::cuda::HostMemory;

/// How the region's pages are kept resident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Locking {
    /// CUDA pinned host memory: page-locked and registered with the driver for DMA.
    Cuda,
    /// An anonymous mapping locked with `mlock`.
    Mlocked,
    /// An anonymous mapping the kernel may swap (`mlock` was refused), or no memory at all.
    Unlocked,
}

impl Locking {
    pub fn as_str(self) -> &'static str {
        match self {
            Locking::Cuda => "cuda",
            Locking::Mlocked => "mlocked",
            Locking::Unlocked => "unlocked",
        }
    }
}

/// Locks `len` bytes of mapped memory at `base` into RAM.
pub type LockPages = fn(NonNull<u8>, usize) -> io::Result<()>;

/// A copy that does not fit inside the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes at offset {offset} lie outside a region of {region} bytes")]
pub struct OutOfRegion {
    pub offset: usize,
    pub len: usize,
    pub region: usize,
}

enum Backing {
    /// Zero bytes: nothing to free.
    Empty,
    /// An anonymous mapping of `len` bytes, released with `munmap`.
    Mapped { locked: bool },
    /// CUDA pinned memory, released with `cuMemFreeHost` when the owner is dropped.
    Cuda { _owner: HostMemory },
}

/// `len` bytes of host memory at `base`, owned until drop.
pub struct Region {
    base: NonNull<u8>,
    len: usize,
    backing: Backing,
}

// SAFETY: the region exclusively owns plain host memory that stays valid and at the same
// address until drop, on whichever thread that runs. Nothing in it is tied to a thread: the
// CUDA context handle names the process-wide primary context, which is made current only
// for the duration of the free in `HostMemory::drop`.
unsafe impl Send for Region {}

// SAFETY: shared access only copies bytes through `copy_in` and `copy_out`, whose contracts
// forbid concurrent access to overlapping bytes with a write among them; disjoint ranges
// may be copied from many threads at once, as with any `[u8]` split into parts.
unsafe impl Sync for Region {}

impl Region {
    /// `capacity` bytes of the best page-locked memory available; see the module docs.
    pub fn allocate(capacity: usize) -> Region {
        if capacity == 0 {
            return Region::empty();
        }
        match HostMemory::alloc(capacity) {
            Ok(memory) => {
                let base = memory.base();
                return Region {
                    base,
                    len: capacity,
                    backing: Backing::Cuda { _owner: memory },
                };
            }
            Err(reason) => tracing::debug!(%reason, "no CUDA pinned memory for the pinned tier"),
        }
        Region::mapped(capacity, mlock_pages)
    }

    /// An anonymous mapping of `capacity` bytes, locked with `lock`.
    pub fn mapped(capacity: usize, lock: LockPages) -> Region {
        if capacity == 0 {
            return Region::empty();
        }
        let base = match map_anonymous(capacity) {
            Ok(base) => base,
            Err(err) => {
                tracing::warn!(
                    errno = err.raw_os_error(),
                    capacity,
                    "mmap failed; pinned tier off"
                );
                return Region::empty();
            }
        };
        let locked = match lock(base, capacity) {
            Ok(()) => true,
            Err(err) => {
                warn_unlocked(&err, capacity);
                false
            }
        };
        Region {
            base,
            len: capacity,
            backing: Backing::Mapped { locked },
        }
    }

    fn empty() -> Region {
        Region {
            base: NonNull::dangling(),
            len: 0,
            backing: Backing::Empty,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn locking(&self) -> Locking {
        match self.backing {
            Backing::Cuda { .. } => Locking::Cuda,
            Backing::Mapped { locked: true } => Locking::Mlocked,
            Backing::Mapped { locked: false } | Backing::Empty => Locking::Unlocked,
        }
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), OutOfRegion> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(OutOfRegion {
                offset,
                len,
                region: self.len,
            }),
        }
    }

    /// Copies `src` into the region at `offset`.
    ///
    /// # Safety
    ///
    /// No other thread may read or write `[offset, offset + src.len())` while this runs.
    pub unsafe fn copy_in(&self, offset: usize, src: &[u8]) -> Result<(), OutOfRegion> {
        self.check(offset, src.len())?;
        // SAFETY: the range is inside the region (checked above) and nobody else touches it
        // (the caller's contract); `src` is caller memory, so the two cannot overlap.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(offset), src.len())
        };
        Ok(())
    }

    /// Replaces the contents of `out` with the `len` bytes at `offset`.
    ///
    /// # Safety
    ///
    /// No other thread may write `[offset, offset + len)` while this runs.
    pub unsafe fn copy_out(
        &self,
        offset: usize,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), OutOfRegion> {
        self.check(offset, len)?;
        out.clear();
        out.reserve(len);
        // SAFETY: the source range is inside the region (checked above) and not written
        // meanwhile (the caller's contract); `out` has room for `len` bytes after `reserve`
        // and is a separate allocation. `set_len` follows the copy that initialised them.
        unsafe {
            ptr::copy_nonoverlapping(self.base.as_ptr().add(offset), out.as_mut_ptr(), len);
            out.set_len(len);
        }
        Ok(())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // CUDA memory is freed by `HostMemory`'s own drop; an empty region holds nothing.
        if let Backing::Mapped { .. } = self.backing {
            // SAFETY: `base..base + len` is the mapping made in `map_anonymous`, unmapped
            // once, here; `&mut self` means no copy is in flight.
            if unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) } != 0 {
                let err = io::Error::last_os_error();
                tracing::warn!(
                    errno = err.raw_os_error(),
                    "munmap of the pinned region failed"
                );
            }
        }
    }
}

/// Says once per process that pinned memory runs unlocked; later refusals (a store opened
/// again, tests) only log at debug level, since stats and metrics already report the mode.
fn warn_unlocked(err: &io::Error, capacity: usize) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if WARNED.swap(true, Ordering::Relaxed) {
        tracing::debug!(errno = err.raw_os_error(), capacity, "mlock refused again");
    } else {
        tracing::warn!(
            errno = err.raw_os_error(),
            %err,
            capacity,
            "mlock failed (RLIMIT_MEMLOCK?); pinned tier runs on unlocked pages"
        );
    }
}

fn map_anonymous(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a private anonymous mapping at an address the kernel picks cannot alias any
    // memory the process already uses.
    let ptr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// The real lock step: `mlock(2)`, which also faults every page in.
fn mlock_pages(base: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: mlock only changes the residency of pages of a mapping this module made; it
    // reads and writes no memory visible to Rust.
    if unsafe { libc::mlock(base.as_ptr().cast(), len) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse_lock(_: NonNull<u8>, _: usize) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOMEM))
    }

    fn accept_lock(_: NonNull<u8>, _: usize) -> io::Result<()> {
        Ok(())
    }

    #[test]
    fn a_refused_mlock_leaves_a_working_unlocked_region() {
        let region = Region::mapped(1 << 16, refuse_lock);
        assert_eq!(region.locking(), Locking::Unlocked);
        assert_eq!(region.len(), 1 << 16);
        let mut out = Vec::new();
        // SAFETY: this test is the only user of the region.
        unsafe {
            region.copy_in(100, b"still usable").unwrap();
            region.copy_out(100, 12, &mut out).unwrap();
        }
        assert_eq!(out, b"still usable");
    }

    #[test]
    fn an_accepted_lock_reports_mlocked() {
        assert_eq!(
            Region::mapped(4096, accept_lock).locking(),
            Locking::Mlocked
        );
    }

    #[test]
    fn copies_outside_the_region_are_refused() {
        let region = Region::mapped(4096, accept_lock);
        let mut out = vec![7u8; 3];
        // SAFETY: this test is the only user of the region.
        unsafe {
            assert!(region.copy_in(4090, &[0; 7]).is_err());
            assert!(region.copy_out(usize::MAX, 2, &mut out).is_err());
            assert!(region.copy_out(4096, 1, &mut out).is_err());
            region.copy_out(4096, 0, &mut out).unwrap();
        }
        assert!(out.is_empty());
    }

    #[test]
    fn a_zero_capacity_region_is_empty_and_unlocked() {
        let region = Region::allocate(0);
        assert_eq!((region.len(), region.locking()), (0, Locking::Unlocked));
    }
}
