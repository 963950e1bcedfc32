//! Replaying a trace against a cache model and counting prefix hits.
//!
//! For each request, in order: the hit blocks are the longest prefix of its chain that
//! the cache holds (a block held after a missing one is useless, so it is no hit); they
//! are read, and then the request's other blocks are stored in chain order, as an engine
//! saves what it computed. A cache may decline a block (Belady bypasses one whose next
//! use is farthest); the rest of that chain is then not stored, since a store keeps no
//! block without its parent.

use super::load::{Request, Trace};

/// One reference to a block, with everything a policy may use.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub block: u32,
    pub position: u32,
    pub time_ms: u64,
    pub conversation: u32,
    /// Index of the next request that references the block (Belady's oracle).
    pub next_use: u32,
}

/// A cache model with a capacity in blocks.
pub trait Cache {
    fn contains(&self, block: u32) -> bool;
    /// A held block is read.
    fn touch(&mut self, access: &Access);
    /// Stores a missing block, evicting as needed; false when the cache declines it.
    fn insert(&mut self, access: &Access) -> bool;
}

/// What a replay counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub references: u64,
    pub hits: u64,
    pub input_tokens: u64,
    /// Prompt tokens that the hit blocks spare the prefill (at most each prompt's length).
    pub saved_tokens: u64,
}

impl Outcome {
    pub fn hit_ratio(&self) -> f64 {
        self.hits as f64 / self.references.max(1) as f64
    }

    pub fn saved_fraction(&self) -> f64 {
        self.saved_tokens as f64 / self.input_tokens.max(1) as f64
    }
}

/// Replays every request of `trace` against `cache`; a block holds `block_tokens` tokens.
pub fn replay(trace: &Trace, cache: &mut impl Cache, block_tokens: u64) -> Outcome {
    let mut outcome = Outcome::default();
    for request in &trace.requests {
        let hits = request
            .blocks
            .iter()
            .take_while(|b| cache.contains(**b))
            .count() as u64;
        outcome.references += request.blocks.len() as u64;
        outcome.hits += hits;
        outcome.input_tokens += request.input_tokens;
        outcome.saved_tokens += (hits * block_tokens).min(request.input_tokens);
        serve(trace, request, cache);
    }
    outcome
}

fn serve(trace: &Trace, request: &Request, cache: &mut impl Cache) {
    let mut storing = true;
    for (slot, &block) in request.blocks.iter().enumerate() {
        let access = Access {
            block,
            position: trace.position[block as usize],
            time_ms: request.timestamp_ms,
            conversation: request.conversation,
            next_use: request.next_use[slot],
        };
        if cache.contains(block) {
            cache.touch(&access);
        } else if storing {
            storing = cache.insert(&access);
        }
    }
}
