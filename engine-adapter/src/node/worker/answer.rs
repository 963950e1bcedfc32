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
    min_tokens: usize,
    sampler: Sampler,
    text: TextStream<'m>,
    held: StopFilter,
}

impl<'m> Answering<'m> {
    /// A request whose prompt is computed: `logits` are its last position's, `stops` the
    /// tokens that end an answer.
    pub fn new(
        events: mpsc::Sender<Event>,
        conversation: Option<String>,
        generation: &Generation,
        sequence: Sequence,
        (logits, stops): (&[f32], &[Option<u32>]),
        tokenizer: &'m Tokenizer,
    ) -> Self {
        let mut answer = Answering {
            events,
            conversation,
            sequence: Some(sequence),
            next: 0,
            generated: 0,
            decode_started: Instant::now(),
            max_tokens: generation.max_tokens,
            min_tokens: generation.min_tokens,
            sampler: Sampler::new(sampling_mode(generation)),
            text: tokenizer.stream(),
            held: StopFilter::new(generation.stop.clone()),
        };
        answer.sample(logits, stops);
        answer
    }

    /// Samples the token after the one the last pass fed; no stop token while the answer
    /// is shorter than its `min_tokens`.
    pub fn sample(&mut self, logits: &[f32], stops: &[Option<u32>]) {
        self.next = if self.generated >= self.min_tokens {
            self.sampler.sample(logits)
        } else {
            self.sampler.sample(&without(logits, stops))
        };
    }

    /// Sends the pending token; `Some` when the answer ends here.
    pub async fn emit(&mut self, stops: &[Option<u32>]) -> Result<Option<End>> {
        if stops.contains(&Some(self.next)) {
            return Ok(Some(End::Finished("stop")));
        }
        self.generated += 1;
        let piece = self.text.step(self.next)?.unwrap_or_default();
        let may_stop = self.generated > self.min_tokens;
        let (emit, stopped) = self.held.push(&piece, may_stop);
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

/// `logits` with the `stops` tokens made impossible.
fn without(logits: &[f32], stops: &[Option<u32>]) -> Vec<f32> {
    let mut allowed = logits.to_vec();
    for id in stops.iter().flatten() {
        if let Some(logit) = allowed.get_mut(*id as usize) {
            *logit = f32::NEG_INFINITY;
        }
    }
    allowed
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

    /// Adds a piece; returns the text safe to send and whether a stop sequence was hit
    /// (only looked for when `may_stop`).
    fn push(&mut self, piece: &str, may_stop: bool) -> (String, bool) {
        self.pending.push_str(piece);
        if !may_stop {
            return (std::mem::take(&mut self.pending), false);
        }
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
    use super::{without, StopFilter};
    use crate::sampling::argmax;

    #[test]
    fn a_stop_token_cannot_be_sampled_before_min_tokens() {
        let logits = [0.1, 3.0, 2.0, 0.5];
        assert_eq!(argmax(&logits), 1);
        let allowed = without(&logits, &[Some(1), None, Some(9)]);
        assert_eq!(argmax(&allowed), 2, "the end of text is never the pick");
        assert_eq!(allowed[0], logits[0]);
    }

    #[test]
    fn a_stop_sequence_split_across_pieces_is_never_sent() {
        let stops = vec!["END".to_string()];
        let mut filter = StopFilter::new(stops);
        let mut sent = String::new();
        for piece in ["hello E", "N", "D and more"] {
            let (emit, stopped) = filter.push(piece, true);
            sent.push_str(&emit);
            if stopped {
                assert_eq!(sent, "hello ");
                return;
            }
        }
        panic!("stop sequence not detected");
    }

    #[test]
    fn a_stop_sequence_before_the_answer_may_end_is_sent_as_text() {
        let mut filter = StopFilter::new(vec!["END".to_string()]);
        assert_eq!(filter.push("an END", false), ("an END".to_string(), false));
        assert_eq!(filter.push(" END", true), (" ".to_string(), true));
    }

    #[test]
    fn without_stops_everything_passes_at_once() {
        let mut filter = StopFilter::new(Vec::new());
        assert_eq!(filter.push("abc", true), ("abc".to_string(), false));
        assert_eq!(filter.finish(), "");
    }
}
