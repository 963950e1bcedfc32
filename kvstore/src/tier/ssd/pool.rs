//! Reuse of large I/O buffers. A fresh buffer costs a page fault and a zeroed page per 4 KiB
//! on first touch, which for a 1 MiB record costs about as much as reading it; the log takes
//! its read and append buffers from here and reads hand theirs back when the caller drops
//! the returned `Bytes`.

use std::sync::{Arc, Mutex, PoisonError};

use super::aligned::AlignedBuf;

/// Buffers below this size come from the allocator each time; it serves them cheaply.
const MIN_POOLED: usize = 64 << 10;

/// Free large buffers, at most `max_bytes` of them.
#[derive(Debug)]
pub(crate) struct BufPool {
    free: Mutex<Vec<AlignedBuf>>,
    max_bytes: usize,
}

impl BufPool {
    pub(crate) fn new(max_bytes: usize) -> Self {
        BufPool {
            free: Mutex::new(Vec::new()),
            max_bytes,
        }
    }

    /// An empty buffer with room for `capacity` bytes and at most about twice that.
    pub(crate) fn take(&self, capacity: usize) -> AlignedBuf {
        if capacity >= MIN_POOLED {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            let fits = |buf: &AlignedBuf| (capacity..=capacity * 2).contains(&buf.capacity());
            let best = (0..free.len())
                .filter(|&i| fits(&free[i]))
                .min_by_key(|&i| free[i].capacity());
            if let Some(index) = best {
                let mut buf = free.swap_remove(index);
                buf.clear();
                return buf;
            }
        }
        AlignedBuf::with_capacity(capacity)
    }

    /// Returns a buffer for reuse; it is dropped when small or when the pool is full.
    pub(crate) fn give(&self, buf: AlignedBuf) {
        if buf.capacity() < MIN_POOLED {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let held: usize = free.iter().map(AlignedBuf::capacity).sum();
        if held + buf.capacity() <= self.max_bytes {
            free.push(buf);
        }
    }
}

/// A pooled buffer that goes back to its pool when dropped; the owner behind the `Bytes`
/// that reads return.
#[derive(Debug)]
pub(crate) struct PooledBuf {
    buf: Option<AlignedBuf>,
    pool: Arc<BufPool>,
}

impl PooledBuf {
    pub(crate) fn new(buf: AlignedBuf, pool: Arc<BufPool>) -> Self {
        PooledBuf {
            buf: Some(buf),
            pool,
        }
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or_default()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_large_buffers_that_fit() {
        let pool = BufPool::new(1 << 20);
        let mut buf = pool.take(100_000);
        buf.extend_from_slice(&[7; 100]);
        let ptr = buf.as_ptr();
        pool.give(buf);
        assert_ne!(
            pool.take(10_000).as_ptr(),
            ptr,
            "too large for a 10 kB request"
        );
        let again = pool.take(90_000);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
    }

    #[test]
    fn pooled_buffers_return_to_the_pool_when_dropped() {
        let pool = Arc::new(BufPool::new(1 << 20));
        let buf = pool.take(200_000);
        let ptr = buf.as_ptr();
        drop(PooledBuf::new(buf, pool.clone()));
        assert_eq!(pool.take(200_000).as_ptr(), ptr);
        pool.give(AlignedBuf::with_capacity(900_000));
        pool.give(AlignedBuf::with_capacity(900_000));
        assert_eq!(
            pool.free.lock().unwrap().len(),
            1,
            "the pool keeps at most 1 MiB"
        );
    }
}
