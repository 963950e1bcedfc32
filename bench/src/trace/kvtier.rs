//! kvtier's column of the trace replay: the store itself, in this process, with a dram
//! tier sized to hold exactly the capacity in blocks. Every block of the trace is put as a
//! real (small) block with its parent and chain position, and with the request's
//! conversation id unless the replay leaves them out; a hit is read back through the
//! store's verified read path. The store's clock is the trace's: before each request it is
//! set to the request's timestamp, so an hour of trace ages blocks by an hour.

use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use bytesize::ByteSize;
use kvtier_client::format::{encode_block, BlockShape, DType};
use kvtier_store::{Config, Durability, Key, ManualClock, NamespaceSpec, PutOptions, Store};

use super::load::{Trace, NO_PARENT};
use super::replay::{Access, Cache};

/// Payloads come in units of one 32-wide f32 head of 16 tokens, K and V.
const UNIT: u64 = 4096;
/// The smallest dram tier a store accepts.
const MIN_DRAM: u64 = 1 << 20;

/// The shape of every replayed block: one layer and head, f32, `head_dim` wide. The
/// payload grows past `payload` only when `capacity` blocks of it would not reach the
/// store's smallest dram tier, so that the tier always holds exactly `capacity` blocks.
fn shape(payload: ByteSize, capacity: usize) -> anyhow::Result<BlockShape> {
    anyhow::ensure!(
        payload.as_u64() >= UNIT && payload.as_u64().is_multiple_of(UNIT),
        "--block-payload must be a positive multiple of 4 KiB, not {payload}"
    );
    anyhow::ensure!(capacity > 0, "a capacity must be at least one block");
    let floor = MIN_DRAM.div_ceil(capacity as u64).next_multiple_of(UNIT);
    let units = payload.as_u64().max(floor) / UNIT;
    Ok(BlockShape {
        n_layers: 1,
        n_kv_heads: 1,
        block_tokens: 16,
        head_dim: u32::try_from(units * 32).context("--block-payload is too large")?,
        dtype: DType::F32,
    })
}

/// Key of a trace block: its id, in a byte pattern no real key has.
fn key_of(block: u32) -> Key {
    let mut key = [0x6b; 32];
    key[..4].copy_from_slice(&block.to_le_bytes());
    key
}

pub struct StoreCache<'a> {
    store: Store,
    clock: Arc<ManualClock>,
    namespace: NamespaceSpec,
    block: Bytes,
    trace: &'a Trace,
    conversations: bool,
    capacity: usize,
}

impl<'a> StoreCache<'a> {
    /// A store with room for `capacity` blocks of `payload` bytes; with `conversations`,
    /// puts carry the trace's conversation ids as kvtier's protocol allows.
    pub fn new(
        trace: &'a Trace,
        capacity: usize,
        payload: ByteSize,
        conversations: bool,
    ) -> anyhow::Result<Self> {
        let shape = shape(payload, capacity)?;
        let fingerprint = [0x7a; 32];
        let raw: Vec<u8> = (0..shape.raw_bytes())
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let block = Bytes::from(encode_block(&fingerprint, &shape, &raw)?);
        let block_bytes = block.len() as u64;
        let config = Config {
            pinned_capacity: ByteSize::b(0),
            dram_capacity: ByteSize::b(capacity as u64 * block_bytes),
            durability: Durability::None,
            max_block_bytes: ByteSize::b(block_bytes),
            max_message_bytes: ByteSize::b(block_bytes + (128 << 10)),
            ..Config::default()
        };
        config.validate().context("trace store configuration")?;
        let clock = Arc::new(ManualClock::new(0));
        let store = Store::open_with_clock(&config, clock.clone())?;
        Ok(StoreCache {
            store,
            clock,
            namespace: NamespaceSpec {
                tenant: "trace".into(),
                fingerprint,
                shape,
            },
            block,
            trace,
            conversations,
            capacity,
        })
    }

    /// Blocks held now; never more than the capacity.
    pub fn held(&self) -> u64 {
        self.store.stats().blocks
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The store's own invariants (capacities, prefix-closed chains).
    pub fn check(&self) -> Result<(), String> {
        self.store.check_invariants()
    }
}

impl Cache for StoreCache<'_> {
    fn contains(&self, block: u32) -> bool {
        self.store.lookup(&[key_of(block)]) == 1
    }

    fn touch(&mut self, access: &Access) {
        self.clock.set(access.time_ms);
        // A failed read (never expected here) is simply no touch: the next lookup misses.
        let _ = self.store.read(&self.namespace, &key_of(access.block));
    }

    fn insert(&mut self, access: &Access) -> bool {
        self.clock.set(access.time_ms);
        let parent = self.trace.parent[access.block as usize];
        let options = PutOptions {
            conversation: self.conversations.then(|| access.conversation.to_string()),
            ..PutOptions::default()
        };
        let put = self.store.put(
            &self.namespace,
            key_of(access.block),
            (parent != NO_PARENT).then(|| key_of(parent)),
            access.position,
            self.block.clone(),
            &options,
        );
        matches!(put, Ok(outcome) if outcome.stored)
    }
}
