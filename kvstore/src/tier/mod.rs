//! Tiers that hold block bytes: `pinned` (page-locked host memory), `dram` (ordinary
//! memory) and `ssd` (segment files). A tier only stores and returns bytes under a
//! [`Slot`]; which blocks live where, chains and eviction are the store's business.
//!
//! Protocol: [`Tier::write`] returns the slot a block now occupies, or [`TierError::Full`]
//! when it does not fit (the caller makes room first, until [`Tier::has_room_for`] holds:
//! a tier never exceeds its capacity); [`Tier::read`] and [`Tier::read_into`] return the
//! bytes of a slot the caller still holds; [`Tier::free`] gives the slot's space back exactly once. Callers must not free a
//! slot while a read of it is in flight (the store holds a lease for that).

pub mod dram;
pub mod pinned;
pub mod ssd;

#[cfg(test)]
pub(crate) mod conformance;

use bytes::Bytes;

use crate::Key;

/// The three kinds of tier, hottest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TierKind {
    Pinned,
    Dram,
    Ssd,
}

impl TierKind {
    pub const ALL: [TierKind; 3] = [TierKind::Pinned, TierKind::Dram, TierKind::Ssd];

    pub fn as_str(self) -> &'static str {
        match self {
            TierKind::Pinned => "pinned",
            TierKind::Dram => "dram",
            TierKind::Ssd => "ssd",
        }
    }
}

/// Where a tier keeps one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Bytes owned by the dram tier.
    Memory(Bytes),
    /// A range of the pinned region.
    Extent { offset: usize, len: usize },
    /// A record in the segment log.
    Disk(ssd::Location),
}

/// Why a tier could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TierError {
    #[error("{tier} tier is full: {needed} bytes needed, {free} free")]
    Full {
        tier: &'static str,
        needed: u64,
        free: u64,
    },
    #[error("{tier} tier: the device is out of space")]
    NoSpace { tier: &'static str },
    #[error("{tier} tier: block is unreadable ({reason})")]
    Corrupt { tier: &'static str, reason: String },
    #[error("{tier} tier: slot does not belong to this tier")]
    ForeignSlot { tier: &'static str },
    #[error("{tier} tier I/O failed: {reason}")]
    Io { tier: &'static str, reason: String },
}

impl TierError {
    /// The block cannot be served from this slot: a miss, and its entry should go.
    pub fn is_miss(&self) -> bool {
        matches!(
            self,
            TierError::Corrupt { .. } | TierError::ForeignSlot { .. }
        )
    }
}

/// One tier of block storage.
pub trait Tier: Send + Sync {
    fn kind(&self) -> TierKind;

    /// Bytes the tier may hold.
    fn capacity(&self) -> u64;

    /// Bytes the tier holds now; never more than [`Tier::capacity`].
    fn used(&self) -> u64;

    /// Whether a write of `needed` bytes would fit now. A tier whose free space can be
    /// fragmented answers for its largest free range, not the sum.
    fn has_room_for(&self, needed: u64) -> bool {
        self.capacity().saturating_sub(self.used()) >= needed
    }

    /// Stores a copy of `block`; with `durable`, it survives a crash once this returns
    /// (only the ssd tier can promise that; memory tiers ignore it).
    fn write(&self, key: &Key, block: &Bytes, durable: bool) -> Result<Slot, TierError>;

    /// The bytes in `slot`, possibly shared with the tier. A tier checks its own framing
    /// (the ssd tier a record's header); the block's checksum is the caller's to verify,
    /// which the store does on every read.
    fn read(&self, key: &Key, slot: &Slot) -> Result<Bytes, TierError>;

    /// Copies the bytes in `slot` into `out`, replacing its contents.
    fn read_into(&self, key: &Key, slot: &Slot, out: &mut Vec<u8>) -> Result<(), TierError> {
        let bytes = self.read(key, slot)?;
        out.clear();
        out.extend_from_slice(&bytes);
        Ok(())
    }

    /// Gives the slot's space back.
    fn free(&self, slot: &Slot);
}
