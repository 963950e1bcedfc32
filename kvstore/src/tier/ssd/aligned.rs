//! Page-aligned heap buffers, as O_DIRECT requires of every buffer it reads into or writes
//! from.
//!
//! An [`AlignedBuf`] has a capacity (a multiple of [`ALIGN`]) and a length: the bytes
//! `[0, len)` are initialised, the rest of the capacity may not be. I/O engines read into
//! the spare capacity and the caller then extends the length by what they reported.

use std::alloc::{self, Layout};
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of buffers, file offsets and I/O sizes.
pub const ALIGN: usize = 4096;

/// Rounds `n` up to a multiple of [`ALIGN`].
pub const fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN as u64) * ALIGN as u64
}

/// A heap buffer whose start is aligned to [`ALIGN`] bytes.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out `&[u8]`; nothing is mutated through `&self`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An empty buffer with room for at least `capacity` bytes (rounded up to [`ALIGN`]).
    pub fn with_capacity(capacity: usize) -> Self {
        let cap = capacity.max(1).next_multiple_of(ALIGN);
        let layout = Self::layout(cap);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len: 0, cap }
    }

    fn layout(cap: usize) -> Layout {
        match Layout::from_size_align(cap, ALIGN) {
            Ok(layout) => layout,
            Err(_) => panic!("aligned buffer of {cap} bytes overflows the address space"),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Forgets the contents; the capacity stays.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `bytes`. Panics if they do not fit in the capacity (a caller bug).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        assert!(end <= self.cap, "aligned buffer overflow");
        // SAFETY: `end <= cap`, so the destination lies inside our allocation, which cannot
        // overlap `bytes` because we hold it exclusively through `&mut self`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                bytes.len(),
            )
        };
        self.len = end;
    }

    /// Appends zeros up to length `new_len`. Panics past the capacity (a caller bug).
    pub fn pad_zeros(&mut self, new_len: usize) {
        assert!(new_len <= self.cap, "aligned buffer overflow");
        if new_len > self.len {
            // SAFETY: `[len, new_len)` lies inside the allocation.
            unsafe {
                std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), 0, new_len - self.len)
            };
            self.len = new_len;
        }
    }

    /// The uninitialised capacity after the current length.
    pub fn spare_capacity_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        // SAFETY: `[len, cap)` lies inside the allocation and is borrowed mutably with self;
        // MaybeUninit makes no claim about its contents.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.as_ptr().add(self.len).cast::<MaybeUninit<u8>>(),
                self.cap - self.len,
            )
        }
    }

    /// Extends the length over `n` bytes of spare capacity.
    ///
    /// # Safety
    /// The first `n` bytes of [`Self::spare_capacity_mut`] must have been initialised.
    pub unsafe fn assume_init(&mut self, n: usize) {
        debug_assert!(self.len + n <= self.cap);
        self.len += n;
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `[0, len)` is initialised and inside the allocation.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: `[0, len)` is initialised, inside the allocation and borrowed with self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc` with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_start_page_aligned_with_rounded_capacity() {
        for size in [0, 1, 4095, 4096, 4097, 1 << 20] {
            let buf = AlignedBuf::with_capacity(size);
            assert!((buf.as_ptr() as usize).is_multiple_of(ALIGN));
            assert!(buf.capacity() >= size && buf.capacity().is_multiple_of(ALIGN));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn extend_and_pad_keep_contents() {
        let mut buf = AlignedBuf::with_capacity(8192);
        buf.extend_from_slice(b"abc");
        buf.pad_zeros(4096);
        assert_eq!(&buf[..3], b"abc");
        assert!(buf[3..].iter().all(|&b| b == 0));
        assert_eq!(buf.len(), 4096);
    }

    #[test]
    fn align_up_rounds_to_pages() {
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(4097), 8192);
    }
}
