//! Helpers shared by the `ssd_*` test binaries.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use kvtier_store::tier::ssd::{io, IoEngineKind, SegmentLog, SsdConfig};
use kvtier_store::Key;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// The engines to test: psync always, uring where the kernel allows it.
pub fn engines() -> Vec<IoEngineKind> {
    let mut kinds = vec![IoEngineKind::Psync];
    match io::open_engine(IoEngineKind::Uring) {
        Ok(_) => kinds.push(IoEngineKind::Uring),
        Err(err) => eprintln!("io_uring unavailable, uring cases skipped: {err}"),
    }
    kinds
}

pub fn config(dir: &Path, engine: IoEngineKind, segment_bytes: u64) -> SsdConfig {
    SsdConfig {
        dir: dir.to_path_buf(),
        segment_bytes: ByteSize::b(segment_bytes),
        io_engine: engine,
        ..SsdConfig::default()
    }
}

pub fn open(config: &SsdConfig) -> SegmentLog {
    SegmentLog::open(config.clone()).unwrap().0
}

/// A key derived from `n`, the same in every process.
pub fn key(n: u64) -> Key {
    let mut rng = StdRng::seed_from_u64(n ^ 0x6b76_7469_6572);
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    key
}

/// `len` bytes derived from `seed`, the same in every process.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    bytes
}

pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:06}.log"))
}

/// Flips one bit of the file at `offset`.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x10;
    file.write_all_at(&byte, offset).unwrap();
    file.sync_all().unwrap();
}
