//! `kvtier-bench trace`: replays a production prefix trace (Mooncake's conversation trace
//! by default) against caches of several sizes and compares the block hit ratio of
//! kvtier's eviction policy with plain LRU and with Belady's offline optimum.
//!
//! The replay runs on trace time, request by request, with the cache models of
//! [`replay`]; kvtier's column is the store itself ([`kvtier::StoreCache`]), fed real
//! blocks. The store samples eviction candidates at random, so its figure is the median
//! of `--reps` replays; LRU and Belady are deterministic.

mod belady;
mod kvtier;
mod load;
mod lru;
mod replay;
mod report;

use std::path::PathBuf;

use anyhow::Context;
use bytesize::ByteSize;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kvtier_store::policy::PolicyWeights;

use load::Trace;
use replay::{replay, Outcome};
use report::{CapacityResult, Policy};

/// The conversation trace of Mooncake (FAST'25), see bench/data/README.md.
const DEFAULT_TRACE: &str = include_str!("../../data/mooncake_conversation_trace.jsonl");

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// A trace in Mooncake's JSONL format instead of the bundled conversation trace.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Cache capacities in blocks.
    #[arg(long, value_delimiter = ',', default_value = "5000,10000,20000,50000")]
    capacities: Vec<usize>,
    /// Tokens per block of the trace (Mooncake's hash ids name 512-token blocks).
    #[arg(long, default_value_t = 512)]
    block_tokens: u64,
    /// Replays of kvtier's store, which samples eviction candidates at random; its
    /// figures are medians over them (one replay takes about 30 s; repeated replays
    /// differ by about 0.2 points).
    #[arg(long, default_value_t = 1)]
    reps: u64,
    /// Payload of every replayed block (a multiple of 4 KiB); the store holds
    /// capacity x this.
    #[arg(long, default_value = "4KiB")]
    block_payload: ByteSize,
    /// Write the results to this JSON file, and a PNG plot beside it.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let (trace, source) = match &args.trace {
        Some(path) => (load::load(path)?, path.display().to_string()),
        None => (
            load::parse(DEFAULT_TRACE, "bundled trace")?,
            "mooncake_conversation_trace.jsonl (bundled)".to_string(),
        ),
    };
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    eprintln!(
        "trace: {} requests, {} block references, {} distinct blocks, {} conversations",
        trace.requests.len(),
        trace.references(),
        trace.blocks(),
        trace.conversations
    );
    let progress = ProgressBar::new((args.capacities.len() as u64) * (2 * args.reps + 2))
        .with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} replays, {elapsed} elapsed {msg}")
                .context("progress template")?,
        );
    let unlimited = replay(
        &trace,
        &mut lru::Lru::new(usize::MAX, trace.blocks()),
        args.block_tokens,
    );
    let mut results = Vec::new();
    for &capacity in &args.capacities {
        progress.set_message(format!("{capacity} blocks"));
        results.push(replay_capacity(&trace, capacity, &args, &progress)?);
    }
    progress.finish_and_clear();
    let summary = report::Summary {
        source,
        requests: trace.requests.len(),
        references: trace.references(),
        blocks: trace.blocks(),
        conversations: trace.conversations,
        block_tokens: args.block_tokens,
        kvtier_seeds: args.reps,
        weights: report::WeightsJson::from(&PolicyWeights::default()),
        unlimited_hit_ratio: unlimited.hit_ratio(),
        capacities: results,
    };
    report::print(&summary);
    if let Some(path) = &args.json {
        report::write(path, &summary)?;
        println!(
            "wrote {} and {}",
            path.display(),
            crate::plot::png_beside(path).display()
        );
    }
    Ok(())
}

fn replay_capacity(
    trace: &Trace,
    capacity: usize,
    args: &TraceArgs,
    progress: &ProgressBar,
) -> anyhow::Result<CapacityResult> {
    let tokens = args.block_tokens;
    let mut result = CapacityResult::new(capacity);
    for conversations in [true, false] {
        let policy = if conversations {
            Policy::Kvtier
        } else {
            Policy::KvtierNoConversations
        };
        let outcomes: Vec<Outcome> = (0..args.reps)
            .map(|_| {
                let mut cache =
                    kvtier::StoreCache::new(trace, capacity, args.block_payload, conversations)?;
                let outcome = replay(trace, &mut cache, tokens);
                checked(&cache)?;
                progress.inc(1);
                Ok(outcome)
            })
            .collect::<anyhow::Result<_>>()?;
        result.add(policy, &outcomes);
    }
    let lru = replay(trace, &mut lru::Lru::new(capacity, trace.blocks()), tokens);
    progress.inc(1);
    result.add(Policy::Lru, &[lru]);
    let belady = replay(
        trace,
        &mut belady::Belady::new(capacity, trace.blocks()),
        tokens,
    );
    progress.inc(1);
    result.add(Policy::Belady, &[belady]);
    Ok(result)
}

/// After a replay the store must hold at most its capacity, in prefix-closed chains.
fn checked(cache: &kvtier::StoreCache) -> anyhow::Result<()> {
    anyhow::ensure!(
        cache.held() <= cache.capacity() as u64,
        "the store holds {} blocks, over its capacity of {}",
        cache.held(),
        cache.capacity()
    );
    cache
        .check()
        .map_err(|broken| anyhow::anyhow!("the store's invariants broke: {broken}"))
}

#[cfg(test)]
mod tests;
