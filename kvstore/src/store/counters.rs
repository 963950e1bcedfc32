//! The store's counters: per tier and store-wide, read by `Stats` and the metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::tier::TierKind;

#[derive(Debug, Default)]
pub struct TierCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub promotions: AtomicU64,
    pub demotions: AtomicU64,
    pub evictions: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub tiers: [TierCounters; 3],
    pub puts: AtomicU64,
    pub puts_duplicate: AtomicU64,
    pub puts_declined: AtomicU64,
    pub lookups: AtomicU64,
    pub misses: AtomicU64,
    pub checksum_failures: AtomicU64,
    pub compaction_bytes: AtomicU64,
}

impl Counters {
    pub fn tier(&self, tier: TierKind) -> &TierCounters {
        &self.tiers[tier as usize]
    }
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
