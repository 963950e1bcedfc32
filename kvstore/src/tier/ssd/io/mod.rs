//! The I/O seam: every byte the segment log moves goes through an [`IoEngine`].
//!
//! An engine does one positioned read, one positioned write or one data sync per call and
//! may return short counts; [`write_all_at`] and [`read_up_to`] loop over it. Callers pass
//! buffers, offsets and lengths aligned to 4 KiB, since segment files are opened with
//! O_DIRECT where the filesystem supports it.
//!
//! [`open_engine`] picks the implementation: `uring` (io_uring, [`uring`]), `psync`
//! (pread/pwrite, [`psync`]) or `auto`, which probes io_uring and falls back to psync with
//! one warning. [`FailpointEngine`] wraps any engine to inject errors such as ENOSPC.

mod failpoint;
mod psync;
mod uring;

use std::fmt;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::sync::Arc;

pub use failpoint::{FailpointEngine, Failpoints};
pub use psync::PsyncEngine;
pub use uring::UringEngine;

use super::aligned::AlignedBuf;
use super::config::IoEngineKind;
use super::error::SsdError;

/// The engine actually moving bytes, as reported in stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActiveEngine {
    Uring,
    Psync,
}

impl ActiveEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            ActiveEngine::Uring => "uring",
            ActiveEngine::Psync => "psync",
        }
    }
}

impl fmt::Display for ActiveEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Positioned I/O on files.
///
/// # Safety
/// When [`IoEngine::read_at`] returns `Ok(n)`, the first `n` bytes of `dst` must have been
/// initialised, and no byte of `dst` may be written after it returns: callers expose those
/// bytes as `&[u8]`.
pub unsafe trait IoEngine: Send + Sync + fmt::Debug {
    fn active(&self) -> ActiveEngine;

    /// Writes up to `src.len()` bytes at `offset`; returns how many were written.
    fn write_at(&self, file: &File, src: &[u8], offset: u64) -> io::Result<usize>;

    /// Reads up to `dst.len()` bytes at `offset`; returns how many, 0 at end of file.
    fn read_at(&self, file: &File, dst: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize>;

    /// Makes written data durable (fdatasync).
    fn sync_data(&self, file: &File) -> io::Result<()>;
}

/// The engine `kind` asks for. `Auto` warns once and uses psync where io_uring fails.
pub fn open_engine(kind: IoEngineKind) -> Result<Arc<dyn IoEngine>, SsdError> {
    match kind {
        IoEngineKind::Psync => Ok(Arc::new(PsyncEngine)),
        IoEngineKind::Uring => match UringEngine::new() {
            Ok(engine) => Ok(Arc::new(engine)),
            Err(err) => Err(SsdError::UringUnavailable(err)),
        },
        IoEngineKind::Auto => match UringEngine::new() {
            Ok(engine) => Ok(Arc::new(engine)),
            Err(err) => {
                tracing::warn!(error = %err, "io_uring unavailable, using pread/pwrite");
                Ok(Arc::new(PsyncEngine))
            }
        },
    }
}

/// Writes all of `buf` at `offset`, retrying interrupted and short writes.
pub fn write_all_at(engine: &dyn IoEngine, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match engine.write_at(file, &buf[done..], offset + done as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Clears `buf` and reads `len` bytes at `offset` into it, fewer at end of file; afterwards
/// `buf.len()` is the count read. `len` must not exceed `buf.capacity()`.
pub fn read_up_to(
    engine: &dyn IoEngine,
    file: &File,
    buf: &mut AlignedBuf,
    len: usize,
    offset: u64,
) -> io::Result<()> {
    buf.clear();
    while buf.len() < len {
        let done = buf.len();
        let dst = &mut buf.spare_capacity_mut()[..len - done];
        match engine.read_at(file, dst, offset + done as u64) {
            Ok(0) => break,
            // SAFETY: the IoEngine contract says the first `n` bytes of `dst`, which start at
            // the buffer's current length, are initialised.
            Ok(n) => unsafe { buf.assume_init(n.min(len - done)) },
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn engines() -> Vec<Arc<dyn IoEngine>> {
        let mut engines: Vec<Arc<dyn IoEngine>> = vec![Arc::new(PsyncEngine)];
        match UringEngine::new() {
            Ok(engine) => engines.push(Arc::new(engine)),
            Err(err) => eprintln!("io_uring unavailable here, testing psync only: {err}"),
        }
        engines
    }

    #[test]
    fn engines_write_read_and_sync_the_same_bytes() {
        for engine in engines() {
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(&[0; 100]).unwrap();
            let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
            write_all_at(&*engine, &file, &data, 4096).unwrap();
            engine.sync_data(&file).unwrap();

            let mut buf = AlignedBuf::with_capacity(64 << 10);
            read_up_to(&*engine, &file, &mut buf, 32 << 10, 4096).unwrap();
            assert_eq!(&buf[..], &data[..], "{}", engine.active());
        }
    }

    #[test]
    fn reads_past_the_end_of_file_come_back_short() {
        for engine in engines() {
            let file = tempfile::tempfile().unwrap();
            write_all_at(&*engine, &file, &[3; 5000], 0).unwrap();
            let mut buf = AlignedBuf::with_capacity(8192);
            read_up_to(&*engine, &file, &mut buf, 8192, 0).unwrap();
            assert_eq!(buf.len(), 5000);
            read_up_to(&*engine, &file, &mut buf, 8192, 8192).unwrap();
            assert!(buf.is_empty());
        }
    }
}
