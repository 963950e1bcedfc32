//! The pread/pwrite engine: one system call per operation on the caller's thread.

use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use super::{ActiveEngine, IoEngine};

/// Positioned I/O through pread(2), pwrite(2) and fdatasync(2).
#[derive(Debug, Default, Clone, Copy)]
pub struct PsyncEngine;

// SAFETY: `read_at` reports exactly the count pread(2) returned, which is the number of
// bytes the kernel stored at the start of `dst`, and nothing writes `dst` afterwards.
unsafe impl IoEngine for PsyncEngine {
    fn active(&self) -> ActiveEngine {
        ActiveEngine::Psync
    }

    fn write_at(&self, file: &File, src: &[u8], offset: u64) -> io::Result<usize> {
        file.write_at(src, offset)
    }

    fn read_at(&self, file: &File, dst: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `dst` is valid for writes of `dst.len()` bytes for the whole call, and
        // pread only stores into that range.
        let n =
            unsafe { libc::pread(file.as_raw_fd(), dst.as_mut_ptr().cast(), dst.len(), offset) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}
