//! The blocks, the tiers under test and the timed loops.
//!
//! A put hands the tier an owned block, as kvtierd does with the block of a decoded
//! request: the memory tiers keep it (dram by reference, pinned by copying it into its
//! region), the ssd tier appends it to its log. A get reads into a buffer the caller owns
//! and verifies the block checksum.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use kvtier_client::format::{encode_block, BlockShape, BlockView, DType};
use kvtier_store::tier::dram::Dram;
use kvtier_store::tier::ssd::{SegmentLog, Ssd, SsdConfig};
use kvtier_store::tier::{Slot, Tier};
use kvtier_store::Key;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::fio::{self, Job};
use super::Row;
use crate::stats::median;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Sequential,
    Random,
}

/// The blocks every tier stores: random (incompressible) payloads in the block format.
pub struct Workload {
    blocks: Vec<Bytes>,
    keys: Vec<Key>,
}

impl Workload {
    /// Raw KV bytes per block: 32 layers x K,V x 8 heads x 8 tokens x 128 dims, fp16.
    pub const BLOCK_BYTES: usize = 1 << 20;
    const SHAPE: BlockShape = BlockShape {
        n_layers: 32,
        n_kv_heads: 8,
        block_tokens: 8,
        head_dim: 128,
        dtype: DType::F16,
    };

    pub fn new(count: usize) -> anyhow::Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let fingerprint: Key = rng.random();
        let mut blocks = Vec::with_capacity(count);
        let mut keys = Vec::with_capacity(count);
        let mut raw = vec![0u8; Self::BLOCK_BYTES];
        for _ in 0..count {
            rng.fill(&mut raw[..]);
            let block = encode_block(&fingerprint, &Self::SHAPE, &raw).context("encode block")?;
            blocks.push(Bytes::from(block));
            keys.push(rng.random());
        }
        Ok(Workload { blocks, keys })
    }

    pub fn block_len(&self) -> usize {
        self.blocks[0].len()
    }

    pub fn total_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.len() as u64).sum()
    }

    fn order(&self, order: Order) -> Vec<usize> {
        let mut indices: Vec<usize> = (0..self.blocks.len()).collect();
        if order == Order::Random {
            indices.shuffle(&mut rand::rngs::StdRng::seed_from_u64(11));
        }
        indices
    }

    fn mb_per_s(&self, started: Instant) -> f64 {
        self.total_bytes() as f64 / started.elapsed().as_secs_f64() / 1e6
    }

    /// Puts every block; returns MB/s and the slots.
    fn put(&self, tier: &dyn Tier, flush: &dyn Fn()) -> anyhow::Result<(f64, Vec<Slot>)> {
        let started = Instant::now();
        let mut slots = Vec::with_capacity(self.blocks.len());
        for (key, block) in self.keys.iter().zip(&self.blocks) {
            slots.push(tier.write(key, block, false)?);
        }
        flush();
        Ok((self.mb_per_s(started), slots))
    }

    /// Gets every block in `order` into one caller buffer, verifying each; MB/s.
    fn get(&self, tier: &dyn Tier, slots: &[Slot], order: Order) -> anyhow::Result<f64> {
        let indices = self.order(order);
        let mut out = Vec::with_capacity(self.block_len());
        let started = Instant::now();
        for &i in &indices {
            tier.read_into(&self.keys[i], &slots[i], &mut out)?;
            BlockView::parse(&out)?.verify_payload()?;
        }
        Ok(self.mb_per_s(started))
    }

    /// The memcpy baseline: the same bytes copied into the caller's buffer in `order`.
    fn memcpy(&self, order: Order) -> f64 {
        let indices = self.order(order);
        let mut out = Vec::with_capacity(self.block_len());
        let started = Instant::now();
        for &i in &indices {
            out.clear();
            out.extend_from_slice(std::hint::black_box(&self.blocks[i]));
            std::hint::black_box(&out);
        }
        self.mb_per_s(started)
    }
}

/// Samples of one row across repetitions.
struct Samples {
    tier: &'static str,
    operation: String,
    baseline: &'static str,
    kvtier: Vec<f64>,
    base: Vec<f64>,
}

impl Samples {
    fn into_row(self) -> Row {
        let kvtier_mb_s = median(&self.kvtier);
        let baseline_mb_s = median(&self.base);
        Row {
            tier: self.tier,
            operation: self.operation,
            kvtier_mb_s,
            baseline: self.baseline,
            baseline_mb_s,
            ratio: kvtier_mb_s / baseline_mb_s,
            runs: self.kvtier.len(),
        }
    }
}

const OPERATIONS: [(&str, Option<Order>); 3] = [
    ("put", None),
    ("get sequential", Some(Order::Sequential)),
    ("get random", Some(Order::Random)),
];

fn samples(tier: &'static str, baseline: &'static str) -> Vec<Samples> {
    OPERATIONS
        .iter()
        .map(|(name, _)| Samples {
            tier,
            operation: name.to_string(),
            baseline,
            kvtier: Vec::new(),
            base: Vec::new(),
        })
        .collect()
}

/// Runs every tier `repeats` times beside its baseline; one row per tier and operation.
/// `memory` are the memory tiers to measure beside dram (the pinned tier, where present).
pub fn measure_all(
    workload: &Workload,
    dir: &Path,
    memory: Vec<(&'static str, Box<dyn Tier>)>,
    repeats: usize,
) -> anyhow::Result<Vec<Row>> {
    let dram = Dram::new(workload.total_bytes() * 2);
    let mut memory: Vec<(Vec<Samples>, Box<dyn Tier>)> = memory
        .into_iter()
        .map(|(name, tier)| (samples(name, "memcpy"), tier))
        .collect();
    let mut dram_rows = samples("dram", "memcpy");
    let mut ssd_rows = samples("ssd", "fio");
    for repeat in 0..repeats {
        eprintln!("repetition {}/{repeats}", repeat + 1);
        for (rows, tier) in &mut memory {
            memory_round(workload, tier.as_ref(), rows)?;
        }
        memory_round(workload, &dram, &mut dram_rows)?;
        ssd_round(
            workload,
            &dir.join(format!("round-{repeat}")),
            &mut ssd_rows,
        )?;
    }
    let rows = memory.into_iter().flat_map(|(rows, _)| rows);
    // A dram put keeps the caller's block by reference: its figure is bookkeeping, not
    // bytes moved, so only the gets are reported beside memcpy.
    let dram_gets = dram_rows.into_iter().skip(1);
    Ok(rows
        .chain(dram_gets)
        .chain(ssd_rows)
        .map(Samples::into_row)
        .collect())
}

fn memory_round(workload: &Workload, tier: &dyn Tier, rows: &mut [Samples]) -> anyhow::Result<()> {
    rows[0].base.push(workload.memcpy(Order::Sequential));
    let (put, slots) = workload.put(tier, &|| {})?;
    rows[0].kvtier.push(put);
    for (row, (_, order)) in rows.iter_mut().zip(OPERATIONS).skip(1) {
        let order = order.expect("gets have an order");
        row.base.push(workload.memcpy(order));
        row.kvtier.push(workload.get(tier, &slots, order)?);
    }
    for slot in &slots {
        tier.free(slot);
    }
    Ok(())
}

fn ssd_round(workload: &Workload, dir: &Path, rows: &mut [Samples]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let fio_file = dir.join("fio.dat");
    let bytes = workload.total_bytes();
    let block = Workload::BLOCK_BYTES;

    rows[0]
        .base
        .push(fio::run(Job::Write, &fio_file, bytes, block)?);
    let (log, _) = SegmentLog::open(SsdConfig::new(dir.join("segments")))?;
    let tier = Ssd::new(log, bytes * 2, 0);
    let flush = || {
        if let Err(error) = tier.log().sync() {
            tracing::warn!(%error, "ssd sync failed");
        }
    };
    let (put, slots) = workload.put(&tier, &flush)?;
    rows[0].kvtier.push(put);

    for (row, (_, order)) in rows.iter_mut().zip(OPERATIONS).skip(1) {
        let job = match order.expect("gets have an order") {
            Order::Sequential => Job::Read,
            Order::Random => Job::RandRead,
        };
        row.base.push(fio::run(job, &fio_file, bytes, block)?);
        row.kvtier
            .push(workload.get(&tier, &slots, order.expect("order"))?);
    }
    drop(tier);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
