//! The node's scheduler: a bounded queue of requests served one at a time by a worker
//! task that owns the engine.
//!
//! Protocol: [`Queue::submit`] either refuses at once (queue full: the caller answers 429)
//! or returns a receiver of [`Event`]s: `Started` after the prefill, then `Text` pieces,
//! then exactly one `Done` or `Failed`. Dropping the receiver cancels the request: the
//! worker notices at its next token and moves on. After a request ends, its new full
//! blocks are saved to kvtier, off the path of that request's tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::api::Generation;
use super::metrics::NodeMetrics;
use crate::connector::KvtierConnector;
use crate::engine::{Engine, Sequence};
use crate::{Sampler, Sampling};

/// Longest a save may take before the worker gives up on it and serves the next request.
const SAVE_DEADLINE: Duration = Duration::from_secs(5);

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
}

impl Queue {
    /// Starts the worker; `capacity` requests may wait behind the one running.
    pub fn start(
        engine: Engine<KvtierConnector>,
        capacity: usize,
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        let (jobs, receiver) = mpsc::channel(capacity.max(1));
        let worker = Worker {
            engine,
            metrics: metrics.clone(),
        };
        tokio::spawn(worker.run(receiver));
        Queue {
            jobs,
            capacity: capacity.max(1),
            metrics,
        }
    }

    /// Queues a request for the prompt `tokens`; `None` when the queue is full.
    pub fn submit(
        &self,
        tokens: Vec<u32>,
        generation: Generation,
    ) -> Option<mpsc::Receiver<Event>> {
        let (events, receiver) = mpsc::channel(64);
        let job = Job {
            tokens,
            generation,
            events,
            queued: Instant::now(),
        };
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.metrics.queued(1);
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
            match self.serve(job).await {
                Ok(Some(mut sequence)) => self.save(&mut sequence).await,
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

    async fn save(&self, sequence: &mut Sequence) {
        match tokio::time::timeout(SAVE_DEADLINE, self.engine.save(sequence)).await {
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
