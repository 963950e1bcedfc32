//! The node's scheduler: a bounded queue of requests, and a worker task that owns the
//! engine and serves up to [`MAX_ACTIVE`] of them at once. Each round it prefills the
//! requests that have arrived (one forward each), then computes the next token of every
//! running request in one batched step: the projections and the MLP run once over all
//! of them, attention over each one's own KV cache. A new request's first token waits
//! for at most one such step, not for the running answers to finish.
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
use crate::{EngineError, LoadedModel, Sampler, Sampling, TextStream};

/// Longest a save may take before the worker gives up on it and serves the next request.
const SAVE_DEADLINE: Duration = Duration::from_secs(5);
/// Longest a prefetch hint may take; it is only worth something before the request runs.
const PREFETCH_DEADLINE: Duration = Duration::from_secs(2);
/// Requests generating at once; each step computes one token of every one of them.
pub const MAX_ACTIVE: usize = 4;

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

/// A request between its prefill and its last token.
struct Active<'m> {
    events: mpsc::Sender<Event>,
    conversation: Option<String>,
    max_tokens: usize,
    /// Taken while a forward extends it.
    sequence: Option<Sequence>,
    sampler: Sampler,
    /// The last sampled token.
    next: u32,
    /// `next` has been sent; the request waits for the next decode step.
    sent: bool,
    text: TextStream<'m>,
    held: StopFilter,
    generated: usize,
    decode_started: Instant,
}

impl Worker {
    /// Serves up to [`MAX_ACTIVE`] requests at once. A request that arrives is prefilled
    /// and sends its first token before the next decode step, so it waits for at most one
    /// step of the running requests (and the prefills queued ahead of it), not for their
    /// whole answers.
    async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let model = self.engine.model().clone();
        let stops = [
            model.tokenizer.eos_id(),
            model.tokenizer.token_id("<|im_end|>"),
        ];
        let mut active: Vec<Active<'_>> = Vec::new();
        loop {
            if active.is_empty() {
                let Some(job) = jobs.recv().await else {
                    return;
                };
                self.admit(job, &model, &stops, &mut active).await;
            }
            while active.len() < MAX_ACTIVE {
                let Ok(job) = jobs.try_recv() else {
                    break;
                };
                self.admit(job, &model, &stops, &mut active).await;
            }
            let mut i = 0;
            while i < active.len() {
                if active[i].sent {
                    i += 1;
                    continue;
                }
                match self.emit(&mut active[i], &stops).await {
                    Ok(None) => i += 1,
                    Ok(Some(end)) => {
                        let request = active.remove(i);
                        self.finish(request, end).await;
                    }
                    Err(error) => {
                        let request = active.remove(i);
                        self.fail(request, &error.to_string()).await;
                    }
                }
            }
            if let Err(error) = self.decode_round(&mut active).await {
                let message = error.to_string();
                for request in active.drain(..) {
                    self.fail(request, &message).await;
                }
            }
        }
    }

    async fn fail(&self, request: Active<'_>, message: &str) {
        self.metrics.request("failed");
        let _ = request
            .events
            .send(Event::Failed(message.to_string()))
            .await;
    }

    /// Computes the next token of every running request in one step.
    async fn decode_round(&self, active: &mut [Active<'_>]) -> crate::Result<()> {
        if active.is_empty() {
            return Ok(());
        }
        let sequences: Option<Vec<Sequence>> =
            active.iter_mut().map(|r| r.sequence.take()).collect();
        let sequences = sequences.ok_or(EngineError::NoTokens)?;
        let next = active.iter().map(|r| r.next).collect();
        let stepped = self.engine.extend_each(sequences, next).await?;
        for (request, (sequence, logits)) in active.iter_mut().zip(stepped) {
            request.sequence = Some(sequence);
            request.next = request.sampler.sample(&logits);
            request.sent = false;
        }
        Ok(())
    }

    /// Prefills a queued request and sends its first token at once, before the next
    /// request's prefill; adds it to `active` unless it ended, was cancelled or failed.
    async fn admit<'m>(
        &self,
        job: Job,
        model: &'m LoadedModel,
        stops: &[Option<u32>],
        active: &mut Vec<Active<'m>>,
    ) {
        self.metrics.queued(-1);
        if job.events.is_closed() {
            self.metrics.request("cancelled");
            return;
        }
        let events = job.events.clone();
        let mut request = match self.prefill(job, model).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                self.metrics.request("failed");
                let _ = events.send(Event::Failed(error.to_string())).await;
                return;
            }
        };
        match self.emit(&mut request, stops).await {
            Ok(None) => {
                request.sent = true;
                active.push(request);
            }
            Ok(Some(end)) => self.finish(request, end).await,
            Err(error) => self.fail(request, &error.to_string()).await,
        }
    }

    /// Prefills and samples the first token; `None` when the client has gone.
    async fn prefill<'m>(
        &self,
        job: Job,
        model: &'m LoadedModel,
    ) -> crate::Result<Option<Active<'m>>> {
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
            self.save(&mut sequence, job.conversation).await;
            return Ok(None);
        }
        let g = &job.generation;
        let mut sampler = Sampler::new(sampling_mode(g));
        let next = sampler.sample(&logits);
        Ok(Some(Active {
            events: job.events,
            conversation: job.conversation,
            max_tokens: g.max_tokens,
            sequence: Some(sequence),
            sampler,
            next,
            sent: false,
            text: model.tokenizer.stream(),
            held: StopFilter::new(g.stop.clone()),
            generated: 0,
            decode_started: Instant::now(),
        }))
    }

    /// Sends the request's pending token; `Some` when the request ends here.
    async fn emit(
        &self,
        request: &mut Active<'_>,
        stops: &[Option<u32>],
    ) -> crate::Result<Option<End>> {
        if stops.contains(&Some(request.next)) {
            return Ok(Some(End::Finished("stop")));
        }
        request.generated += 1;
        let piece = request.text.step(request.next)?.unwrap_or_default();
        let (emit, stopped) = request.held.push(&piece);
        if !emit.is_empty() && request.events.send(Event::Text(emit)).await.is_err() {
            return Ok(Some(End::Cancelled));
        }
        if stopped {
            return Ok(Some(End::Finished("stop")));
        }
        if request.generated >= request.max_tokens {
            return Ok(Some(End::Finished("length")));
        }
        Ok(None)
    }

    /// Tells the client how the request ended, then saves its new blocks.
    async fn finish(&self, mut request: Active<'_>, end: End) {
        let decode_time = request.decode_started.elapsed();
        self.metrics.decoded(request.generated, decode_time);
        match end {
            End::Cancelled => self.metrics.request("cancelled"),
            End::Finished(finish_reason) => {
                let rest = request.held.finish();
                if !rest.is_empty() {
                    let _ = request.events.send(Event::Text(rest)).await;
                }
                let done = Event::Done {
                    completion_tokens: request.generated,
                    finish_reason,
                };
                let _ = request.events.send(done).await;
                self.metrics.request("ok");
            }
        }
        if let Some(sequence) = &mut request.sequence {
            self.save(sequence, request.conversation.take()).await;
        }
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
struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

impl StopFilter {
    fn new(stops: Vec<String>) -> Self {
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
        let mut filter = StopFilter::new(stops);
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
        let mut filter = StopFilter::new(Vec::new());
        assert_eq!(filter.push("abc"), ("abc".to_string(), false));
        assert_eq!(filter.finish(), "");
    }
}
