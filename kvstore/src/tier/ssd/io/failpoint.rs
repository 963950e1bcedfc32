//! Failpoints at the I/O seam: an engine wrapper whose writes, reads or syncs fail with a
//! chosen errno (ENOSPC, EIO, ...) while a failpoint is set.
//!
//! Open a log over [`FailpointEngine::wrap`]'s engine, keep the [`Failpoints`] handle, and
//! set or clear failures at any time from any thread; they apply to the next operation.

use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use super::{ActiveEngine, IoEngine};

/// Errors to inject; 0 means "let the operation through".
#[derive(Debug, Default)]
pub struct Failpoints {
    write: AtomicI32,
    read: AtomicI32,
    sync: AtomicI32,
}

impl Failpoints {
    /// Makes every write fail with `errno` (for example `libc::ENOSPC`); `None` clears it.
    pub fn fail_writes(&self, errno: Option<i32>) {
        self.write.store(errno.unwrap_or(0), Ordering::SeqCst);
    }

    /// Makes every read fail with `errno`; `None` clears it.
    pub fn fail_reads(&self, errno: Option<i32>) {
        self.read.store(errno.unwrap_or(0), Ordering::SeqCst);
    }

    /// Makes every data sync fail with `errno`; `None` clears it.
    pub fn fail_syncs(&self, errno: Option<i32>) {
        self.sync.store(errno.unwrap_or(0), Ordering::SeqCst);
    }

    /// Clears every failpoint.
    pub fn clear(&self) {
        self.fail_writes(None);
        self.fail_reads(None);
        self.fail_syncs(None);
    }

    fn check(point: &AtomicI32) -> io::Result<()> {
        match point.load(Ordering::SeqCst) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// An engine that consults [`Failpoints`] before handing each operation to `inner`.
#[derive(Debug)]
pub struct FailpointEngine {
    inner: Arc<dyn IoEngine>,
    points: Arc<Failpoints>,
}

impl FailpointEngine {
    /// Wraps `inner`; the returned handle controls the failures.
    pub fn wrap(inner: Arc<dyn IoEngine>) -> (Arc<FailpointEngine>, Arc<Failpoints>) {
        let points = Arc::new(Failpoints::default());
        let engine = FailpointEngine {
            inner,
            points: points.clone(),
        };
        (Arc::new(engine), points)
    }
}

// SAFETY: reads either fail before touching `dst` or return exactly what the inner engine,
// which upholds the same contract, returned.
unsafe impl IoEngine for FailpointEngine {
    fn active(&self) -> ActiveEngine {
        self.inner.active()
    }

    fn write_at(&self, file: &File, src: &[u8], offset: u64) -> io::Result<usize> {
        Failpoints::check(&self.points.write)?;
        self.inner.write_at(file, src, offset)
    }

    fn read_at(&self, file: &File, dst: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize> {
        Failpoints::check(&self.points.read)?;
        self.inner.read_at(file, dst, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        Failpoints::check(&self.points.sync)?;
        self.inner.sync_data(file)
    }
}
