//! The node's scheduler: a bounded queue of requests, and a worker task that owns the
//! engine and serves up to [`MAX_ACTIVE`] of them at once with continuous batching.
//!
//! A request taken from the queue first has its prompt's cached prefix looked up and
//! loaded, in the background, while the worker keeps computing for the others. Then every
//! forward pass the worker runs carries one token of each answer being generated plus a
//! chunk of the prompt with the fewest tokens left (up to [`STEP_PROMPT_TOKENS`]), and of
//! other prompts short enough to ride along ([`JOIN_PROMPT_TOKENS`]): the weights are
//! read once per pass however many requests share it, which is most of what a pass costs
//! when it computes only a few tokens of each. A prompt longer than the chunk is computed
//! over several passes while the answers keep streaming. A pass never waits for the store
//! on behalf of a request that shares it: a prefix still arriving layer by layer joins
//! the first pass after it has arrived, or is computed layer by layer as it arrives when
//! it has the pass to itself.
//!
//! Protocol: [`Queue::submit`] either refuses at once (queue full: the caller answers 429)
//! or returns a receiver of [`Event`]s: `Started` once the prompt is computed, then `Text`
//! pieces, then exactly one `Done` or `Failed`. Dropping the receiver cancels the request:
//! the worker notices before its next pass. After a request ends, its new full blocks are
//! saved to kvtier in the background (under the request's conversation, when it named
//! one), off the path of every request's tokens; a request taken from the queue while
//! saves are running looks its prompt up once they have ended, within its fetch deadline.
//!
//! Prefetch: a request accepted into the queue sends kvtierd a hint at once, in the
//! background, naming its prompt's block keys and conversation, so the blocks move toward
//! the pinned tier while the request waits. A hint that fails or is late changes nothing
//! but the metrics.

mod answer;
mod saves;
mod scheduler;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_client::{block_keys, Key};
use tokio::sync::mpsc;

use super::api::Generation;
use super::metrics::NodeMetrics;
use crate::connector::{KvConnector, KvtierConnector};
use crate::engine::Engine;

/// Longest a save may take before it is given up.
const SAVE_DEADLINE: Duration = Duration::from_secs(5);
/// Longest a prefetch hint may take; it is only worth something before the request runs.
const PREFETCH_DEADLINE: Duration = Duration::from_secs(2);
/// Requests served at once (loading, computing their prompt or generating); each pass
/// computes one token of every one that is generating.
pub const MAX_ACTIVE: usize = 4;
/// Most prompt tokens computed in one pass, over all the prompts it carries.
pub const STEP_PROMPT_TOKENS: usize = 512;
/// Prompts with at most this many tokens left join a pass that already computes another
/// prompt. On the reference CPU a pass costs about as much as 15 tokens more just for
/// reading the weights, so a prompt this short is cheaper riding along than on its own.
pub const JOIN_PROMPT_TOKENS: usize = 16;

/// What the worker tells a request's handler.
#[derive(Debug)]
pub enum Event {
    Started {
        prompt_tokens: usize,
        cached_tokens: usize,
    },
    Text(String),
    Done {
        completion_tokens: usize,
        finish_reason: &'static str,
    },
    Failed(String),
}

struct Job {
    tokens: Vec<u32>,
    conversation: Option<String>,
    generation: Generation,
    events: mpsc::Sender<Event>,
    queued: Instant,
}

/// The sending side of the queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    jobs: mpsc::Sender<Job>,
    capacity: usize,
    metrics: Arc<NodeMetrics>,
    prefetch: Option<Prefetch>,
}

/// What a prefetch hint needs: the connection and how the prompt is cut into blocks.
#[derive(Clone)]
struct Prefetch {
    connector: KvtierConnector,
    fingerprint: Key,
    block_tokens: usize,
}

impl Queue {
    /// Starts the worker; `capacity` requests may wait behind the running ones.
    pub fn start(
        engine: Engine<KvtierConnector>,
        capacity: usize,
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        let (jobs, receiver) = mpsc::channel(capacity.max(1));
        let prefetch = engine.connector().map(|connector| Prefetch {
            connector: connector.clone(),
            fingerprint: engine.namespace().fingerprint,
            block_tokens: engine.namespace().shape.block_tokens as usize,
        });
        tokio::spawn(scheduler::Worker::new(engine, metrics.clone()).run(receiver));
        Queue {
            jobs,
            capacity: capacity.max(1),
            metrics,
            prefetch,
        }
    }

    /// Queues a request for the prompt `tokens`, continuing `conversation` when given;
    /// `None` when the queue is full.
    pub fn submit(
        &self,
        tokens: Vec<u32>,
        conversation: Option<String>,
        generation: Generation,
    ) -> Option<mpsc::Receiver<Event>> {
        let (events, receiver) = mpsc::channel(64);
        let hint = self.prefetch.clone().map(|p| {
            let keys = block_keys(&p.fingerprint, &tokens, p.block_tokens);
            (p, keys, conversation.clone())
        });
        let job = Job {
            tokens,
            conversation,
            generation,
            events,
            queued: Instant::now(),
        };
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.metrics.queued(1);
                if let Some((prefetch, keys, conversation)) = hint {
                    tokio::spawn(hint_prefetch(
                        prefetch,
                        keys,
                        conversation,
                        self.metrics.clone(),
                    ));
                }
                Some(receiver)
            }
            Err(_) => {
                self.metrics.rejected();
                None
            }
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Sends one prefetch hint and counts how it went.
async fn hint_prefetch(
    prefetch: Prefetch,
    keys: Vec<Key>,
    conversation: Option<String>,
    metrics: Arc<NodeMetrics>,
) {
    let hint = prefetch.connector.prefetch(&keys, conversation.as_deref());
    match tokio::time::timeout(PREFETCH_DEADLINE, hint).await {
        Ok(Ok(promoted)) => metrics.prefetched("sent", promoted),
        Ok(Err(error)) => {
            tracing::debug!(%error, "prefetch hint failed");
            metrics.prefetched("failed", 0);
        }
        Err(_) => metrics.prefetched("failed", 0),
    }
}
