//! A request generating its answer: the token sampled last (sent to the client, then fed
//! in the next pass), the text streamed so far, and when generation stops.

use std::time::Instant;

use tokio::sync::mpsc;

use super::Event;
use crate::engine::Sequence;
use crate::node::api::Generation;
use crate::{Result, Sampler, Sampling, TextStream, Tokenizer};

/// Why generation stopped.
pub(super) enum End {
    Finished(&'static str),
    Cancelled,
}

pub(super) struct Answering<'m> {
    pub events: mpsc::Sender<Event>,
    pub conversation: Option<String>,
    /// Taken while a pass extends it.
    pub sequence: Option<Sequence>,
    /// The last sampled token: sent by [`Answering::emit`], fed by the next pass.
    pub next: u32,
    pub generated: usize,
    pub decode_started: Instant,
    max_tokens: usize,
    sampler: Sampler,
    text: TextStream<'m>,
    held: StopFilter,
}

impl<'m> Answering<'m> {
    /// A request whose prompt is computed: `logits` are its last position's.
    pub fn new(
        events: mpsc::Sender<Event>,
        conversation: Option<String>,
        generation: &Generation,
        sequence: Sequence,
        logits: &[f32],
        tokenizer: &'m Tokenizer,
    ) -> Self {
        let mut sampler = Sampler::new(sampling_mode(generation));
        let next = sampler.sample(logits);
        Answering {
            events,
            conversation,
            sequence: Some(sequence),
            next,
            generated: 0,
            decode_started: Instant::now(),
            max_tokens: generation.max_tokens,
            sampler,
            text: tokenizer.stream(),
            held: StopFilter::new(generation.stop.clone()),
        }
    }

    /// Samples the token after the one the last pass fed.
    pub fn sample(&mut self, logits: &[f32]) {
        self.next = self.sampler.sample(logits);
    }

    /// Sends the pending token; `Some` when the answer ends here.
    pub async fn emit(&mut self, stops: &[Option<u32>]) -> Result<Option<End>> {
        if stops.contains(&Some(self.next)) {
            return Ok(Some(End::Finished("stop")));
        }
        self.generated += 1;
        let piece = self.text.step(self.next)?.unwrap_or_default();
        let (emit, stopped) = self.held.push(&piece);
        if !emit.is_empty() && self.events.send(Event::Text(emit)).await.is_err() {
            return Ok(Some(End::Cancelled));
        }
        if stopped {
            return Ok(Some(End::Finished("stop")));
        }
        if self.generated >= self.max_tokens {
            return Ok(Some(End::Finished("length")));
        }
        Ok(None)
    }

    /// Sends what is still held back and the end of the answer.
    pub async fn conclude(&mut self, finish_reason: &'static str) {
        let rest = self.held.finish();
        if !rest.is_empty() {
            let _ = self.events.send(Event::Text(rest)).await;
        }
        let done = Event::Done {
            completion_tokens: self.generated,
            finish_reason,
        };
        let _ = self.events.send(done).await;
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
