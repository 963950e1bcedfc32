//! The node's scheduler: a bounded queue of requests served one at a time by a worker
//! task that owns the engine.
//!
//! Protocol: [`Queue::submit`] either refuses at once (queue full: the caller answers 429)
//! or returns a receiver of [`Event`]s: `Started` after the prefill, then `Text` pieces,
//! then exactly one `Done` or `Failed`. Dropping the receiver cancels the request: the
//! worker notices at its next token and moves on. After a request ends, its new full
//! blocks are saved to kvtier (under the request's conversation, when it named one), off
//! the path of that request's tokens.
//!
//! Prefetch: a request accepted into the queue sends kvtierd a hint at once, in the
//! background, naming its prompt's block keys and conversation, so the blocks move toward
//! the pinned tier while the request waits. A hint that fails or is late changes nothing
//! but the metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::api::Generation;
use super::metrics::NodeMetrics;
use kvtier_client::{block_keys, Key};

use crate::connector::{KvConnector, KvtierConnector};
use crate::engine::{Engine, Sequence};
use crate::{Sampler, Sampling};

/// Longest a save may take before the worker gives up on it and serves the next request.
const SAVE_DEADLINE: Duration = Duration::from_secs(5);
/// Longest a prefetch hint may take; it is only worth something before the request runs.
const PREFETCH_DEADLINE: Duration = Duration::from_secs(2);

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
    /// Starts the worker; `capacity` requests may wait behind the one running.
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
        let worker = Worker {
            engine,
            metrics: metrics.clone(),
        };
        tokio::spawn(worker.run(receiver));
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

struct Worker {
    engine: Engine<KvtierConnector>,
    metrics: Arc<NodeMetrics>,
}

/// Why generation stopped.
enum End {
    Finished(&'static str),
    Cancelled,
}

impl Worker {
    async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            self.metrics.queued(-1);
            if job.events.is_closed() {
                self.metrics.request("cancelled");
                continue;
            }
            let events = job.events.clone();
            let conversation = job.conversation.clone();
            match self.serve(job).await {
                Ok(Some(mut sequence)) => self.save(&mut sequence, conversation).await,
                Ok(None) => {}
                Err(error) => {
                    self.metrics.request("failed");
                    let _ = events.send(Event::Failed(error.to_string())).await;
                }
            }
        }
    }

    /// Prefills and generates; returns the sequence to save, if the request got that far.
    async fn serve(&self, job: Job) -> crate::Result<Option<Sequence>> {
        let (mut sequence, logits, report) = self.engine.prefill(job.tokens, true).await?;
        let ttft = job.queued.elapsed();
        self.metrics.prefill(
            ttft,
            report.prompt_tokens,
            report.cached_tokens,
            report.fell_back,
        );
        let started = Event::Started {
            prompt_tokens: report.prompt_tokens,
            cached_tokens: report.cached_tokens,
        };
        if job.events.send(started).await.is_err() {
            self.metrics.request("cancelled");
            return Ok(Some(sequence));
        }

        let g = &job.generation;
        let mut sampler = Sampler::new(sampling_mode(g));
        let mut next = sampler.sample(&logits);
        let model = self.engine.model().clone();
        let stops = [
            model.tokenizer.eos_id(),
            model.tokenizer.token_id("<|im_end|>"),
        ];
        let mut text = model.tokenizer.stream();
        let mut held = StopFilter::new(&g.stop);
        let mut generated = 0;
        let decode_started = Instant::now();
        let end = loop {
            if stops.contains(&Some(next)) {
                break End::Finished("stop");
            }
            generated += 1;
            let piece = text.step(next)?.unwrap_or_default();
            let (emit, stopped) = held.push(&piece);
            if !emit.is_empty() && job.events.send(Event::Text(emit)).await.is_err() {
                break End::Cancelled;
            }
            if stopped {
                break End::Finished("stop");
            }
            if generated >= g.max_tokens {
                break End::Finished("length");
            }
            let (extended, logits) = self.engine.extend(sequence, &[next]).await?;
            sequence = extended;
            next = sampler.sample(&logits);
        };
        self.metrics.decoded(generated, decode_started.elapsed());
        match end {
            End::Cancelled => self.metrics.request("cancelled"),
            End::Finished(finish_reason) => {
                let rest = held.finish();
                let _ = if rest.is_empty() {
                    Ok(())
                } else {
                    job.events.send(Event::Text(rest)).await
                };
                let done = Event::Done {
                    completion_tokens: generated,
                    finish_reason,
                };
                let _ = job.events.send(done).await;
                self.metrics.request("ok");
            }
        }
        Ok(Some(sequence))
    }

    async fn save(&self, sequence: &mut Sequence, conversation: Option<String>) {
        let Some(connector) = self.engine.connector() else {
            return;
        };
        let connector = connector.for_conversation(conversation);
        let save = self.engine.save_via(sequence, &connector);
        match tokio::time::timeout(SAVE_DEADLINE, save).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "saving blocks to kvtier failed"),
            Err(_) => tracing::warn!(deadline = ?SAVE_DEADLINE, "saving blocks timed out"),
        }
    }
}

fn sampling_mode(g: &Generation) -> Sampling {
    if g.temperature <= 0.0 {
        Sampling::Greedy
    } else {
        Sampling::TopP {
            temperature: g.temperature,
            top_p: g.top_p,
            seed: g.seed,
        }
    }
}

/// Holds back the text that could still turn into a stop sequence, so a stop sequence
/// never reaches the client, even when it arrives split across tokens.
struct StopFilter<'a> {
    stops: &'a [String],
    pending: String,
}

impl<'a> StopFilter<'a> {
    fn new(stops: &'a [String]) -> Self {
        StopFilter {
            stops,
            pending: String::new(),
        }
    }

    /// Adds a piece; returns the text safe to send and whether a stop sequence was hit.
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let emit = self.pending[..at].to_string();
            self.pending.clear();
            return (emit, true);
        }
        let keep = self.stops.iter().map(|s| s.len() - 1).max().unwrap_or(0);
        let mut cut = self.pending.len().saturating_sub(keep);
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
        let emit: String = self.pending.drain(..cut).collect();
        (emit, false)
    }

    /// What is still held when generation ends without a stop sequence.
    fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    #[test]
    fn a_stop_sequence_split_across_pieces_is_never_sent() {
        let stops = vec!["END".to_string()];
        let mut filter = StopFilter::new(&stops);
        let mut sent = String::new();
        for piece in ["hello E", "N", "D and more"] {
            let (emit, stopped) = filter.push(piece);
            sent.push_str(&emit);
            if stopped {
                assert_eq!(sent, "hello ");
                return;
            }
        }
        panic!("stop sequence not detected");
    }

    #[test]
    fn without_stops_everything_passes_at_once() {
        let mut filter = StopFilter::new(&[]);
        assert_eq!(filter.push("abc"), ("abc".to_string(), false));
        assert_eq!(filter.finish(), "");
    }
}
