//! kvtier's eviction as the store runs it, on trace time: the store's own scoring
//! ([`kvtier_store::policy`]) picks the victim among chain tails sampled the way the
//! store's catalog samples them (random held blocks, each followed down to the tail of
//! its chain), so what is held stays prefix-closed.
//!
//! The store reads its clock when it scores; here the clock is the trace's timestamps,
//! so an hour of trace ages blocks by an hour.

use kvtier_store::policy::{least_valuable, BlockState, PolicyWeights};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::load::{Trace, NO_PARENT};
use super::replay::{Access, Cache};

/// Candidates per eviction, as in the store.
const SAMPLE: usize = 16;

const ABSENT: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Meta {
    last_access_ms: u64,
    hits: u32,
    conversation: u32,
}

pub struct KvtierPolicy<'a> {
    capacity: usize,
    weights: PolicyWeights,
    conversations: bool,
    trace: &'a Trace,
    meta: Vec<Option<Meta>>,
    /// Held blocks, for uniform sampling, and each held block's index in it.
    members: Vec<u32>,
    slot: Vec<u32>,
    /// Held children of every block.
    children: Vec<Vec<u32>>,
    conversation_active_ms: Vec<u64>,
    rng: StdRng,
}

impl<'a> KvtierPolicy<'a> {
    /// A cache of `capacity` blocks; with `conversations`, puts carry the trace's
    /// conversation ids as kvtier's protocol allows.
    pub fn new(
        trace: &'a Trace,
        capacity: usize,
        weights: PolicyWeights,
        conversations: bool,
        seed: u64,
    ) -> Self {
        KvtierPolicy {
            capacity,
            weights,
            conversations,
            trace,
            meta: vec![None; trace.blocks()],
            members: Vec::new(),
            slot: vec![ABSENT; trace.blocks()],
            children: vec![Vec::new(); trace.blocks()],
            conversation_active_ms: vec![0; trace.conversations],
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn state(&self, block: u32) -> Option<BlockState> {
        let meta = self.meta[block as usize]?;
        Some(BlockState {
            last_access_ms: meta.last_access_ms,
            hits: meta.hits,
            position: self.trace.position[block as usize],
            conversation_active_ms: self
                .conversations
                .then(|| self.conversation_active_ms[meta.conversation as usize]),
        })
    }

    /// The least valuable of up to [`SAMPLE`] sampled chain tails, never `protect`.
    fn victim(&mut self, now_ms: u64, protect: u32) -> Option<u32> {
        let held = self.members.len();
        let exhaustive = held <= 4 * SAMPLE;
        let tries = if exhaustive { held } else { 4 * SAMPLE };
        let mut candidates: Vec<(u32, BlockState)> = Vec::with_capacity(SAMPLE);
        for i in 0..tries {
            let start = if exhaustive {
                self.members[i]
            } else {
                self.members[self.rng.random_range(0..held)]
            };
            let tail = self.tail(start);
            if tail == protect || candidates.iter().any(|(b, _)| *b == tail) {
                continue;
            }
            if let Some(state) = self.state(tail) {
                candidates.push((tail, state));
                if candidates.len() == SAMPLE {
                    break;
                }
            }
        }
        least_valuable(candidates, now_ms, &self.weights)
    }

    fn tail(&self, mut block: u32) -> u32 {
        while let Some(&child) = self.children[block as usize].first() {
            block = child;
        }
        block
    }

    fn evict(&mut self, block: u32) {
        self.meta[block as usize] = None;
        let index = std::mem::replace(&mut self.slot[block as usize], ABSENT) as usize;
        self.members.swap_remove(index);
        if let Some(&moved) = self.members.get(index) {
            self.slot[moved as usize] = index as u32;
        }
        let parent = self.trace.parent[block as usize];
        if parent != NO_PARENT {
            self.children[parent as usize].retain(|c| *c != block);
        }
    }
}

impl Cache for KvtierPolicy<'_> {
    fn contains(&self, block: u32) -> bool {
        self.meta[block as usize].is_some()
    }

    fn touch(&mut self, access: &Access) {
        if let Some(meta) = &mut self.meta[access.block as usize] {
            meta.last_access_ms = access.time_ms;
            meta.hits = meta.hits.saturating_add(1);
            self.conversation_active_ms[meta.conversation as usize] = access.time_ms;
        }
    }

    fn insert(&mut self, access: &Access) -> bool {
        let parent = self.trace.parent[access.block as usize];
        if self.capacity == 0 || (parent != NO_PARENT && !self.contains(parent)) {
            return false;
        }
        while self.members.len() >= self.capacity {
            match self.victim(access.time_ms, parent) {
                Some(victim) => self.evict(victim),
                None => return false,
            }
        }
        self.conversation_active_ms[access.conversation as usize] = access.time_ms;
        self.meta[access.block as usize] = Some(Meta {
            last_access_ms: access.time_ms,
            hits: 0,
            conversation: access.conversation,
        });
        self.slot[access.block as usize] = self.members.len() as u32;
        self.members.push(access.block);
        if parent != NO_PARENT {
            self.children[parent as usize].push(access.block);
        }
        true
    }
}
