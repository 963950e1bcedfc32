//! The metric families kvtierd exports, and how a [`StoreStats`] snapshot maps onto them.
//!
//! Every value comes from the store's own counters, so a family is set to the snapshot's
//! value (gauges) or raised to it (counters, with `absolute`), never incremented here. Labels
//! are the tier, the active I/O engine and the pinned memory mode: a handful of values each,
//! never a key, namespace or request id.

use ::metrics::{counter, describe_counter, describe_gauge, gauge};

use crate::{StoreStats, TierStats};

type TierValue = fn(&TierStats) -> u64;
type StoreValue = fn(&StoreStats) -> u64;

/// Per-tier gauges, labelled `tier`.
const TIER_GAUGES: [(&str, &str, TierValue); 3] = [
    (
        "kvtier_tier_capacity_bytes",
        "Bytes the tier may hold.",
        |t| t.capacity_bytes,
    ),
    ("kvtier_tier_used_bytes", "Bytes the tier holds now.", |t| {
        t.used_bytes
    }),
    (
        "kvtier_tier_blocks",
        "Blocks with a copy in the tier.",
        |t| t.blocks,
    ),
];

/// Per-tier counters, labelled `tier`.
const TIER_COUNTERS: [(&str, &str, TierValue); 5] = [
    (
        "kvtier_tier_hits_total",
        "Reads served from the tier.",
        |t| t.hits,
    ),
    (
        "kvtier_tier_misses_total",
        "Reads the tier could not serve (unreadable blocks).",
        |t| t.misses,
    ),
    (
        "kvtier_tier_promotions_total",
        "Blocks copied from the tier into a hotter one on a hit.",
        |t| t.promotions,
    ),
    (
        "kvtier_tier_demotions_total",
        "Blocks moved from the tier to a colder one under pressure.",
        |t| t.demotions,
    ),
    (
        "kvtier_tier_evictions_total",
        "Blocks dropped from the tier with no colder tier to take them.",
        |t| t.evictions,
    ),
];

/// Store-wide gauges and counters.
const STORE_GAUGES: [(&str, &str, StoreValue); 1] =
    [("kvtier_store_blocks", "Blocks the store holds.", |s| {
        s.blocks
    })];

const STORE_COUNTERS: [(&str, &str, StoreValue); 7] = [
    ("kvtier_store_puts_total", "Put requests.", |s| s.puts),
    (
        "kvtier_store_puts_duplicate_total",
        "Puts of a key already held (acknowledged, not stored again).",
        |s| s.puts_duplicate,
    ),
    (
        "kvtier_store_puts_declined_total",
        "Puts declined because their parent block is not held.",
        |s| s.puts_declined,
    ),
    ("kvtier_store_lookups_total", "Lookup requests.", |s| {
        s.lookups
    }),
    (
        "kvtier_store_misses_total",
        "Reads of a block the store does not hold.",
        |s| s.misses,
    ),
    (
        "kvtier_store_checksum_failures_total",
        "Blocks dropped because they failed verification on read.",
        |s| s.checksum_failures,
    ),
    (
        "kvtier_ssd_compaction_bytes_total",
        "Bytes of live records rewritten by ssd compaction.",
        |s| s.compaction_bytes,
    ),
];

pub const IO_ENGINE_INFO: &str = "kvtier_ssd_io_engine_info";
pub const PINNED_LOCKED: &str = "kvtier_pinned_memory_locked";

/// Registers the help text of every family with the current recorder.
pub fn describe() {
    let tier = TIER_GAUGES.iter().map(|&(name, help, _)| (name, help));
    let store = STORE_GAUGES.iter().map(|&(name, help, _)| (name, help));
    for (name, help) in tier.chain(store) {
        describe_gauge!(name, help);
    }
    let tier = TIER_COUNTERS.iter().map(|&(name, help, _)| (name, help));
    let store = STORE_COUNTERS.iter().map(|&(name, help, _)| (name, help));
    for (name, help) in tier.chain(store) {
        describe_counter!(name, help);
    }
    describe_gauge!(
        IO_ENGINE_INFO,
        "1 for the I/O engine the ssd tier runs on (label engine)."
    );
    describe_gauge!(
        PINNED_LOCKED,
        "1 when the pinned tier's memory is page-locked; label mode: cuda, mlocked, unlocked."
    );
}

/// Sets every family to the values in `stats`, through the current recorder.
pub fn publish(stats: &StoreStats) {
    for tier in &stats.tiers {
        let label = tier.tier.as_str();
        for (name, _, value) in TIER_GAUGES {
            gauge!(name, "tier" => label).set(value(tier) as f64);
        }
        for (name, _, value) in TIER_COUNTERS {
            counter!(name, "tier" => label).absolute(value(tier));
        }
    }
    for (name, _, value) in STORE_GAUGES {
        gauge!(name).set(value(stats) as f64);
    }
    for (name, _, value) in STORE_COUNTERS {
        counter!(name).absolute(value(stats));
    }
    if let Some(engine) = stats.io_engine {
        gauge!(IO_ENGINE_INFO, "engine" => engine).set(1.0);
    }
    if let Some(mode) = stats.pinned_memory {
        let locked = if mode == "unlocked" { 0.0 } else { 1.0 };
        gauge!(PINNED_LOCKED, "mode" => mode).set(locked);
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;
    use crate::tier::TierKind;

    fn tier(kind: TierKind, used: u64, hits: u64) -> TierStats {
        TierStats {
            tier: kind,
            capacity_bytes: 1 << 20,
            used_bytes: used,
            blocks: 3,
            hits,
            misses: 0,
            promotions: 0,
            demotions: 2,
            evictions: 0,
        }
    }

    fn stats() -> StoreStats {
        StoreStats {
            tiers: vec![
                tier(TierKind::Pinned, 4096, 5),
                tier(TierKind::Dram, 8192, 7),
            ],
            blocks: 6,
            puts: 9,
            puts_duplicate: 1,
            puts_declined: 0,
            lookups: 4,
            misses: 2,
            checksum_failures: 0,
            compaction_bytes: 0,
            max_block_bytes: 1 << 20,
            io_engine: Some("psync"),
            pinned_memory: Some("unlocked"),
        }
    }

    fn render(stats: &StoreStats) -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, || {
            describe();
            publish(stats);
        });
        handle.render()
    }

    #[test]
    fn tier_families_carry_the_tier_label_and_the_snapshot_values() {
        let text = render(&stats());
        for line in [
            "kvtier_tier_used_bytes{tier=\"pinned\"} 4096",
            "kvtier_tier_used_bytes{tier=\"dram\"} 8192",
            "kvtier_tier_capacity_bytes{tier=\"dram\"} 1048576",
            "kvtier_tier_blocks{tier=\"pinned\"} 3",
            "kvtier_tier_hits_total{tier=\"dram\"} 7",
            "kvtier_tier_demotions_total{tier=\"pinned\"} 2",
            "kvtier_store_puts_total 9",
            "kvtier_store_misses_total 2",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            text.contains("# TYPE kvtier_tier_hits_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE kvtier_tier_used_bytes gauge"),
            "{text}"
        );
    }

    #[test]
    fn engine_and_pinned_mode_are_info_gauges() {
        let text = render(&stats());
        assert!(
            text.contains("kvtier_ssd_io_engine_info{engine=\"psync\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kvtier_pinned_memory_locked{mode=\"unlocked\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn counters_follow_the_store_without_double_counting() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let mut snapshot = stats();
        ::metrics::with_local_recorder(&recorder, || {
            publish(&snapshot);
            snapshot.puts = 12;
            publish(&snapshot);
            publish(&snapshot);
        });
        let text = recorder.handle().render();
        assert!(text.contains("kvtier_store_puts_total 12"), "{text}");
    }

    #[test]
    fn absent_tiers_export_no_series() {
        let mut snapshot = stats();
        snapshot.tiers.retain(|t| t.tier == TierKind::Dram);
        snapshot.io_engine = None;
        snapshot.pinned_memory = None;
        let text = render(&snapshot);
        assert!(!text.contains("tier=\"pinned\""), "{text}");
        assert!(!text.contains("kvtier_ssd_io_engine_info{"), "{text}");
        assert!(!text.contains("kvtier_pinned_memory_locked{"), "{text}");
    }
}
