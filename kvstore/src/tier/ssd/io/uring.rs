//! The io_uring engine: a few small rings, each behind a mutex, one operation in flight per
//! ring.
//!
//! A caller takes a free ring (or waits for the one its thread maps to), pushes one entry
//! and waits for its completion before returning. The buffer an entry points to is borrowed
//! from the caller for the whole call, so the kernel never sees a pointer that outlives it:
//! if the kernel refuses a submission, the ring is replaced so the entry is never submitted
//! later; once an entry is in flight, only its completion ends the wait.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use io_uring::{opcode, squeue, types, IoUring};

use super::{ActiveEngine, IoEngine};

const RING_ENTRIES: u32 = 8;
/// Larger transfers are split; the loop in the caller continues with the rest.
const MAX_TRANSFER: usize = 1 << 30;
/// Attempts to hand an entry to a busy kernel before giving up on it.
const MAX_SUBMIT_ATTEMPTS: u32 = 10_000;
/// Failed waits on an in-flight entry tolerated before giving up on the process.
const MAX_WAIT_FAILURES: u32 = 1000;

/// Positioned I/O through io_uring.
pub struct UringEngine {
    rings: Box<[Mutex<Ring>]>,
}

struct Ring {
    /// None after a failed replacement; operations on it then fail.
    uring: Option<IoUring>,
    next_id: u64,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("rings", &self.rings.len())
            .finish()
    }
}

impl UringEngine {
    /// Sets up one ring per CPU (at most 8) and checks that a no-op completes.
    pub fn new() -> io::Result<Self> {
        let count = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
        let rings = (0..count)
            .map(|_| {
                let uring = IoUring::new(RING_ENTRIES)?;
                Ok(Mutex::new(Ring {
                    uring: Some(uring),
                    next_id: 0,
                }))
            })
            .collect::<io::Result<Box<[_]>>>()?;
        let engine = UringEngine { rings };
        engine.run(opcode::Nop::new().build())?;
        Ok(engine)
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        let home = thread_slot() % self.rings.len();
        for step in 0..self.rings.len() {
            if let Ok(ring) = self.rings[(home + step) % self.rings.len()].try_lock() {
                return ring;
            }
        }
        self.rings[home]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Submits `entry` and waits for its completion; returns the operation's result.
    ///
    /// Every buffer `entry` points to must stay valid until this returns.
    fn run(&self, entry: squeue::Entry) -> io::Result<u32> {
        let mut ring = self.ring();
        let id = ring.next_id;
        ring.next_id = ring.next_id.wrapping_add(1);
        let Some(uring) = ring.uring.as_mut() else {
            return Err(io::Error::other(
                "io_uring ring lost after a failed submission",
            ));
        };
        let entry = entry.user_data(id);
        // SAFETY: the buffers of `entry` are borrowed by our caller until we return, and we
        // return only after the entry's completion, or after the ring holding an unsubmitted
        // entry has been dropped.
        let pushed = unsafe { uring.submission().push(&entry) };
        if pushed.is_err() {
            return Err(io::Error::other("io_uring submission queue is full"));
        }
        if let Err(err) = submit(uring) {
            ring.uring = IoUring::new(RING_ENTRIES).ok();
            return Err(err);
        }
        let result = wait_for(uring, id);
        if result < 0 {
            return Err(io::Error::from_raw_os_error(-result));
        }
        Ok(result as u32)
    }
}

/// Hands the queued entry to the kernel; an error means the kernel never took it.
fn submit(uring: &mut IoUring) -> io::Result<()> {
    let mut last = None;
    for _ in 0..MAX_SUBMIT_ATTEMPTS {
        match uring.submit() {
            Ok(_) | Err(_) if uring.submission().is_empty() => return Ok(()),
            Ok(_) => {}
            Err(err) if retryable(&err) => last = Some(err),
            Err(err) => return Err(err),
        }
        std::thread::yield_now();
    }
    Err(last.unwrap_or_else(|| io::Error::other("io_uring does not take submissions")))
}

/// Waits for the completion tagged `id` and returns its result.
fn wait_for(uring: &mut IoUring, id: u64) -> i32 {
    let mut failures = 0;
    loop {
        while let Some(cqe) = uring.completion().next() {
            if cqe.user_data() == id {
                return cqe.result();
            }
        }
        match uring.submit_and_wait(1) {
            Ok(_) => {}
            Err(err) if retryable(&err) => {}
            Err(err) => {
                failures += 1;
                if failures >= MAX_WAIT_FAILURES {
                    // The kernel still owns a buffer our caller is about to reuse or free;
                    // going on would be a use-after-free.
                    tracing::error!(error = %err, "io_uring wait keeps failing, aborting");
                    std::process::abort();
                }
            }
        }
    }
}

fn retryable(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

/// A small per-thread number that spreads threads over the rings.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SLOT.with(|slot| {
        let index = slot
            .get()
            .unwrap_or_else(|| NEXT.fetch_add(1, Ordering::Relaxed));
        slot.set(Some(index));
        index
    })
}

fn transfer_len(len: usize) -> u32 {
    len.min(MAX_TRANSFER) as u32
}

// SAFETY: `read_at` reports the completion's byte count, which is the number of bytes the
// kernel stored at the start of `dst`; `run` returns only after that completion, so nothing
// writes `dst` afterwards.
unsafe impl IoEngine for UringEngine {
    fn active(&self) -> ActiveEngine {
        ActiveEngine::Uring
    }

    fn write_at(&self, file: &File, src: &[u8], offset: u64) -> io::Result<usize> {
        let fd = types::Fd(file.as_raw_fd());
        let entry = opcode::Write::new(fd, src.as_ptr(), transfer_len(src.len()))
            .offset(offset)
            .build();
        self.run(entry).map(|n| n as usize)
    }

    fn read_at(&self, file: &File, dst: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize> {
        let fd = types::Fd(file.as_raw_fd());
        let len = transfer_len(dst.len());
        let entry = opcode::Read::new(fd, dst.as_mut_ptr().cast(), len)
            .offset(offset)
            .build();
        self.run(entry).map(|n| n as usize)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        let fd = types::Fd(file.as_raw_fd());
        let entry = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.run(entry).map(|_| ())
    }
}
