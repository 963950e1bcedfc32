//! Snapshots of the store's occupancy and counters, for `Stats` and the metrics.

use super::counters::read;
use super::Inner;
use crate::tier::TierKind;

/// One tier's occupancy and traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierStats {
    pub tier: TierKind,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub blocks: u64,
    pub hits: u64,
    pub misses: u64,
    pub promotions: u64,
    pub demotions: u64,
    pub evictions: u64,
}

/// The whole store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStats {
    /// The tiers that exist, hottest first.
    pub tiers: Vec<TierStats>,
    pub blocks: u64,
    pub puts: u64,
    pub puts_duplicate: u64,
    pub puts_declined: u64,
    pub lookups: u64,
    pub misses: u64,
    pub checksum_failures: u64,
    pub compaction_bytes: u64,
    pub max_block_bytes: u64,
    /// `uring` or `psync` when the ssd tier exists.
    pub io_engine: Option<&'static str>,
    /// `cuda`, `mlocked` or `unlocked` when the pinned tier exists.
    pub pinned_memory: Option<&'static str>,
}

impl StoreStats {
    pub fn tier(&self, kind: TierKind) -> Option<&TierStats> {
        self.tiers.iter().find(|t| t.tier == kind)
    }

    pub fn hits(&self) -> u64 {
        self.tiers.iter().map(|t| t.hits).sum()
    }

    pub fn evictions(&self) -> u64 {
        self.tiers.iter().map(|t| t.evictions).sum()
    }
}

impl Inner {
    pub(super) fn stats(&self) -> StoreStats {
        let (blocks, per_tier) = {
            let catalog = self.catalog();
            let per_tier = TierKind::ALL.map(|kind| catalog.tier_len(kind) as u64);
            (catalog.len() as u64, per_tier)
        };
        let tiers = TierKind::ALL
            .into_iter()
            .filter_map(|kind| {
                let tier = self.tiers.get(kind)?;
                let c = self.counters.tier(kind);
                Some(TierStats {
                    tier: kind,
                    capacity_bytes: tier.capacity(),
                    used_bytes: tier.used(),
                    blocks: per_tier[kind as usize],
                    hits: read(&c.hits),
                    misses: read(&c.misses),
                    promotions: read(&c.promotions),
                    demotions: read(&c.demotions),
                    evictions: read(&c.evictions),
                })
            })
            .collect();
        let c = &self.counters;
        StoreStats {
            tiers,
            blocks,
            puts: read(&c.puts),
            puts_duplicate: read(&c.puts_duplicate),
            puts_declined: read(&c.puts_declined),
            lookups: read(&c.lookups),
            misses: read(&c.misses),
            checksum_failures: read(&c.checksum_failures),
            compaction_bytes: read(&c.compaction_bytes),
            max_block_bytes: self.max_block_bytes,
            io_engine: self
                .tiers
                .ssd
                .as_ref()
                .map(|ssd| ssd.log().active_engine().as_str()),
            pinned_memory: self
                .tiers
                .pinned
                .as_ref()
                .map(|pinned| pinned.locking().as_str()),
        }
    }
}
