//! The data directory's lock: one process at a time may own a segment log.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::error::SsdError;

/// Holds an exclusive flock(2) on `LOCK` in the data directory until dropped. The kernel
/// releases it when the process dies, so a crash never leaves the directory locked.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock, SsdError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SsdError::io("opening", &path, e))?;
    // SAFETY: flock only takes the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(SsdError::Locked { path });
        }
        return Err(SsdError::io("locking", &path, err));
    }
    Ok(DirLock { _file: file })
}
