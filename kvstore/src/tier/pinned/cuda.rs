//! Page-locked host memory from the CUDA driver (`cuMemHostAlloc`), when a driver loads.
//!
//! The driver library is loaded at run time (cudarc's `dynamic-loading`), so a build without
//! CUDA runs everywhere. cudarc's loader panics when the library or one of its symbols is
//! missing, so [`HostMemory::alloc`] first probes for the library and then runs every driver
//! call inside `catch_unwind`: any failure, panicking or not, is an `Err` and the caller
//! falls back to `mmap`.
//!
//! The memory is allocated in device 0's primary context (the one the CUDA runtime and
//! cudarc's `CudaContext` share, so copies issued there use it as pinned memory) with flags
//! 0: cacheable, not write-combined, because the CPU reads blocks back out of it. Each
//! allocation holds a reference on the primary context until it is freed. The calling
//! thread's current context is restored after every call, so using the tier never changes
//! which context another part of the process sees as current.

use std::panic::{self, AssertUnwindSafe};
use std::ptr::{self, NonNull};

use cudarc::driver::{result, sys, DriverError};

/// Whether the CUDA driver library can be loaded; never panics.
pub fn driver_present() -> bool {
    // SAFETY: the probe only tries `dlopen` on the driver's library names and closes what it
    // opened; it runs no library initialisation of ours and touches no shared state.
    unsafe { sys::is_culib_present() }
}

/// `len` bytes of page-locked host memory owned through device 0's primary context.
#[derive(Debug)]
pub struct HostMemory {
    base: NonNull<u8>,
    ctx: sys::CUcontext,
    device: sys::CUdevice,
}

impl HostMemory {
    /// Allocates `len` (> 0) bytes, or says why CUDA could not provide them.
    pub fn alloc(len: usize) -> Result<Self, String> {
        if !driver_present() {
            return Err("the CUDA driver library is not present".to_owned());
        }
        match panic::catch_unwind(|| alloc_on_device_zero(len)) {
            Ok(Ok(memory)) => Ok(memory),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("the CUDA driver loader panicked".to_owned()),
        }
    }

    pub fn base(&self) -> NonNull<u8> {
        self.base
    }
}

fn alloc_on_device_zero(len: usize) -> Result<HostMemory, DriverError> {
    result::init()?;
    let device = result::device::get(0)?;
    // SAFETY: `device` was just returned by `device::get`.
    let ctx = unsafe { result::primary_ctx::retain(device)? };
    // SAFETY: `ctx` is the retained primary context; flags 0 ask for plain page-locked
    // memory, which this module only reads and writes as bytes.
    let allocated = with_current(ctx, || unsafe { result::malloc_host(len, 0) });
    match allocated.map(|ptr| NonNull::new(ptr.cast::<u8>())) {
        Ok(Some(base)) => Ok(HostMemory { base, ctx, device }),
        Ok(None) => {
            release_primary(device);
            Err(DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY))
        }
        Err(err) => {
            release_primary(device);
            Err(err)
        }
    }
}

/// Runs `f` with `ctx` current on this thread, then makes the previous context current.
fn with_current<T>(
    ctx: sys::CUcontext,
    f: impl FnOnce() -> Result<T, DriverError>,
) -> Result<T, DriverError> {
    let previous = result::ctx::get_current()?;
    // SAFETY: `ctx` is a primary context this module holds a reference on.
    unsafe { result::ctx::set_current(ctx)? };
    let out = f();
    // SAFETY: `previous` was current on this thread a moment ago (or null: no context).
    let restored = unsafe { result::ctx::set_current(previous.unwrap_or(ptr::null_mut())) };
    if let Err(err) = restored {
        tracing::warn!(%err, "could not restore the thread's CUDA context");
    }
    out
}

fn release_primary(device: sys::CUdevice) {
    // SAFETY: `device` came from `device::get` and this module retained its primary context.
    if let Err(err) = unsafe { result::primary_ctx::release(device) } {
        tracing::warn!(%err, "releasing the CUDA primary context failed");
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        let (base, ctx, device) = (self.base, self.ctx, self.device);
        let freed = panic::catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `base` came from `malloc_host` in `ctx` and is freed once, here; the
            // region that owned it is being dropped, so no copy into it is in flight.
            let freed = with_current(ctx, || unsafe { result::free_host(base.as_ptr().cast()) });
            if let Err(err) = freed {
                tracing::warn!(%err, "cuMemFreeHost failed; the pinned region leaks");
            }
            release_primary(device);
        }));
        if freed.is_err() {
            tracing::warn!("the CUDA driver panicked while freeing the pinned region");
        }
    }
}
