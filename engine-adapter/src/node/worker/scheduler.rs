//! The worker loop: takes requests from the queue, loads their cached prefixes in the
//! background, and runs one forward pass after another over the work of all of them (see
//! the parent module for the policy).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::answer::{Answering, End};
use super::saves::Saves;
use super::{Event, Job, JOIN_PROMPT_TOKENS, MAX_ACTIVE, SAVE_DEADLINE, STEP_PROMPT_TOKENS};
use crate::connector::{KvConnector, KvtierConnector};
use crate::engine::{Engine, Prefill, Sequence, Stepped, Work};
use crate::node::api::Generation;
use crate::node::metrics::NodeMetrics;
use crate::LoadedModel;

pub(super) struct Worker {
    engine: Arc<Engine<KvtierConnector>>,
    metrics: Arc<NodeMetrics>,
    saves: Saves,
}

/// What a request keeps from its job once its prompt is under way.
struct Meta {
    /// Arrival order, which breaks ties between prompts of the same length.
    order: u64,
    conversation: Option<String>,
    generation: Generation,
    events: mpsc::Sender<Event>,
    queued: Instant,
}

/// A request whose prompt is being computed.
struct Prompting {
    meta: Meta,
    prefill: Box<Prefill>,
}

/// A background load that has finished.
struct Loaded {
    meta: Meta,
    prefill: crate::Result<Prefill>,
}

/// The work of one pass, taken out of [`Running`] while the pass runs.
struct Pass<'m> {
    work: Vec<Work>,
    /// The answers whose tokens the pass feeds, in `work` order (they come first).
    decoding: Vec<Answering<'m>>,
    /// The prompts the pass computes a chunk of, in `work` order (after the answers).
    chosen: Vec<Meta>,
    /// Requests the pass carries.
    requests: usize,
}

impl Pass<'_> {
    /// Tokens the pass computes, over all its requests.
    fn rows(&self) -> usize {
        self.work
            .iter()
            .map(|w| match w {
                Work::Decode { .. } => 1,
                Work::Prefill { tokens, .. } => *tokens,
            })
            .sum()
    }
}

/// The requests the worker serves.
#[derive(Default)]
struct Running<'m> {
    /// Requests whose cached prefix is being looked up and loaded.
    loading: usize,
    prompting: Vec<Prompting>,
    answering: Vec<Answering<'m>>,
    arrivals: u64,
}

impl Running<'_> {
    fn count(&self) -> usize {
        self.loading + self.prompting.len() + self.answering.len()
    }

    fn has_work(&self) -> bool {
        !self.prompting.is_empty() || !self.answering.is_empty()
    }
}

/// The stop tokens of a chat model: end of text and end of turn.
fn stop_tokens(model: &LoadedModel) -> [Option<u32>; 2] {
    [
        model.tokenizer.eos_id(),
        model.tokenizer.token_id("<|im_end|>"),
    ]
}

impl Worker {
    pub fn new(engine: Engine<KvtierConnector>, metrics: Arc<NodeMetrics>) -> Self {
        Worker {
            engine: Arc::new(engine),
            metrics,
            saves: Saves::default(),
        }
    }

    /// Serves until the queue closes.
    pub async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let model = self.engine.model().clone();
        let stops = stop_tokens(&model);
        let (loaded_tx, mut loaded_rx) = mpsc::unbounded_channel();
        let mut state = Running::default();
        let mut open = true;
        while open || state.count() > 0 {
            if !state.has_work() {
                // Nothing to compute: wait for a new request or a finished load.
                tokio::select! {
                    job = jobs.recv(), if open && state.count() < MAX_ACTIVE => match job {
                        Some(job) => self.load(job, &loaded_tx, &mut state),
                        None => open = false,
                    },
                    Some(loaded) = loaded_rx.recv() => self.loaded(loaded, &mut state).await,
                }
            }
            while open && state.count() < MAX_ACTIVE {
                match jobs.try_recv() {
                    Ok(job) => self.load(job, &loaded_tx, &mut state),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            while let Ok(loaded) = loaded_rx.try_recv() {
                self.loaded(loaded, &mut state).await;
            }
            if !state.has_work() {
                continue;
            }
            let pass = self.prepare(&mut state);
            let started = Instant::now();
            let rows = pass.rows();
            let step = self.engine.step(pass.work);
            tokio::pin!(step);
            // Requests that arrive during the pass start loading at once.
            let stepped = loop {
                tokio::select! {
                    biased;
                    stepped = &mut step => break stepped,
                    job = jobs.recv(), if open && state.count() + pass.requests < MAX_ACTIVE => {
                        match job {
                            Some(job) => self.load(job, &loaded_tx, &mut state),
                            None => open = false,
                        }
                    }
                }
            };
            tracing::debug!(
                answers = pass.decoding.len(),
                prompts = pass.chosen.len(),
                rows,
                seconds = started.elapsed().as_secs_f64(),
                "pass"
            );
            self.metrics.pass(rows, started.elapsed());
            self.settle(
                stepped,
                pass.decoding,
                pass.chosen,
                &mut state,
                &model,
                &stops,
            )
            .await;
        }
    }

    /// Starts looking up and loading a new request's cached prefix in the background, once
    /// the saves that started before it have ended (within the fetch deadline), so that it
    /// finds what the turn before it saved.
    fn load(&self, job: Job, done: &mpsc::UnboundedSender<Loaded>, state: &mut Running<'_>) {
        self.metrics.queued(-1);
        state.loading += 1;
        let meta = Meta {
            order: state.arrivals,
            conversation: job.conversation,
            generation: job.generation,
            events: job.events,
            queued: job.queued,
        };
        state.arrivals += 1;
        let engine = self.engine.clone();
        let done = done.clone();
        let tokens = job.tokens;
        let saves = self.saves.clone();
        tokio::spawn(async move {
            let due = engine.fetch_deadline().map(|d| Instant::now() + d);
            let settled = saves.settled(&engine.prompt_keys(&tokens));
            match due {
                Some(due) => {
                    let _ = tokio::time::timeout_at(due.into(), settled).await;
                }
                None => settled.await,
            }
            let prefill = engine.begin_by(tokens, true, due).await;
            let _ = done.send(Loaded { meta, prefill });
        });
    }

    async fn loaded(&self, loaded: Loaded, state: &mut Running<'_>) {
        state.loading -= 1;
        let Loaded { meta, prefill } = loaded;
        if meta.events.is_closed() {
            self.metrics.request("cancelled");
            return;
        }
        match prefill {
            Ok(prefill) => state.prompting.push(Prompting {
                meta,
                prefill: Box::new(prefill),
            }),
            Err(error) => self.fail(&meta.events, &error.to_string()).await,
        }
    }

    /// Takes the work of the next pass out of `state`: a token of every answer and the
    /// next chunk of the prompts that fit.
    fn prepare<'m>(&self, state: &mut Running<'m>) -> Pass<'m> {
        self.drop_cancelled_prompts(state);
        let mut work = Vec::new();
        let mut decoding = Vec::new();
        for mut answer in state.answering.drain(..) {
            let Some(sequence) = answer.sequence.take() else {
                continue;
            };
            work.push(Work::Decode {
                sequence,
                token: answer.next,
            });
            decoding.push(answer);
        }
        let chosen = choose_prompts(&mut state.prompting, !decoding.is_empty(), &mut work);
        Pass {
            requests: decoding.len() + chosen.len(),
            work,
            decoding,
            chosen,
        }
    }

    /// Hands what a pass computed to its requests: answers send their next token, prompts
    /// that are complete start answering, the others wait for the next pass.
    async fn settle<'m>(
        &self,
        stepped: crate::Result<Vec<Stepped>>,
        decoding: Vec<Answering<'m>>,
        chosen: Vec<Meta>,
        state: &mut Running<'m>,
        model: &'m LoadedModel,
        stops: &[Option<u32>],
    ) {
        let stepped = match stepped {
            Ok(stepped) => stepped,
            Err(error) => {
                let message = error.to_string();
                for answer in decoding {
                    self.fail(&answer.events, &message).await;
                }
                for meta in chosen {
                    self.fail(&meta.events, &message).await;
                }
                return;
            }
        };
        let mut results = stepped.into_iter();
        for (mut answer, stepped) in decoding.into_iter().zip(&mut results) {
            if let Stepped::Decoded { sequence, logits } = stepped {
                answer.sequence = Some(sequence);
                answer.sample(&logits, stops);
                self.emit(answer, stops, state).await;
            }
        }
        for (meta, stepped) in chosen.into_iter().zip(results) {
            let Stepped::Prefilled { prefill, logits } = stepped else {
                continue;
            };
            match logits {
                Some(logits) => {
                    self.answer(meta, prefill, &logits, model, stops, state)
                        .await
                }
                None => state.prompting.push(Prompting { meta, prefill }),
            }
        }
    }

    fn drop_cancelled_prompts(&self, state: &mut Running<'_>) {
        state.prompting.retain(|p| {
            let gone = p.meta.events.is_closed();
            if gone {
                self.metrics.request("cancelled");
            }
            !gone
        });
    }

    /// A prompt is computed: tells the client, then sends its first token.
    async fn answer<'m>(
        &self,
        meta: Meta,
        prefill: Box<Prefill>,
        logits: &[f32],
        model: &'m LoadedModel,
        stops: &[Option<u32>],
        state: &mut Running<'m>,
    ) {
        let (sequence, report) = prefill.finish();
        tracing::debug!(
            ttft = meta.queued.elapsed().as_secs_f64(),
            prompt = report.prompt_tokens,
            cached = report.cached_tokens,
            lookup = report.lookup.as_secs_f64(),
            compute = report.compute.as_secs_f64(),
            "prompt computed"
        );
        self.metrics.prefill(
            meta.queued.elapsed(),
            report.prompt_tokens,
            report.cached_tokens,
            report.fell_back,
        );
        let started = Event::Started {
            prompt_tokens: report.prompt_tokens,
            cached_tokens: report.cached_tokens,
        };
        if meta.events.send(started).await.is_err() {
            self.metrics.request("cancelled");
            self.save(sequence, meta.conversation);
            return;
        }
        let answer = Answering::new(
            meta.events,
            meta.conversation,
            &meta.generation,
            sequence,
            (logits, stops),
            &model.tokenizer,
        );
        self.emit(answer, stops, state).await;
    }

    /// Sends an answer's pending token; keeps the answer running unless it ended.
    async fn emit<'m>(
        &self,
        mut answer: Answering<'m>,
        stops: &[Option<u32>],
        state: &mut Running<'m>,
    ) {
        match answer.emit(stops).await {
            Ok(None) => state.answering.push(answer),
            Ok(Some(end)) => self.finish(answer, end).await,
            Err(error) => self.fail(&answer.events, &error.to_string()).await,
        }
    }

    /// Tells the client how the answer ended, then saves its new blocks.
    async fn finish(&self, mut answer: Answering<'_>, end: End) {
        self.metrics
            .decoded(answer.generated, answer.decode_started.elapsed());
        match end {
            End::Cancelled => self.metrics.request("cancelled"),
            End::Finished(finish_reason) => {
                answer.conclude(finish_reason).await;
                self.metrics.request("ok");
            }
        }
        if let Some(sequence) = answer.sequence.take() {
            self.save(sequence, answer.conversation.take());
        }
    }

    async fn fail(&self, events: &mpsc::Sender<Event>, message: &str) {
        self.metrics.request("failed");
        let _ = events.send(Event::Failed(message.to_string())).await;
    }

    /// Saves the sequence's new full blocks in the background, within [`SAVE_DEADLINE`].
    fn save(&self, sequence: Sequence, conversation: Option<String>) {
        let Some(connector) = self.engine.connector() else {
            return;
        };
        let Some(first) = self.engine.first_unsaved(&sequence) else {
            return;
        };
        let connector = connector.for_conversation(conversation);
        let engine = self.engine.clone();
        let guard = self.saves.start(first);
        tokio::spawn(async move {
            let _guard = guard;
            let save = async {
                let encode = tokio::task::spawn_blocking(move || engine.blocks_to_save(&sequence));
                let blocks = encode.await.map_err(|e| e.to_string())?;
                let blocks = blocks.map_err(|e| e.to_string())?;
                connector.save(blocks).await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(SAVE_DEADLINE, save).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "saving blocks to kvtier failed"),
                Err(_) => tracing::warn!(deadline = ?SAVE_DEADLINE, "saving blocks timed out"),
            }
        });
    }
}

/// Moves the prompts that go into this pass from `prompting` into `work` (as [`plan`]
/// decides) and returns their metas, in `work` order; the others stay in `prompting`.
fn choose_prompts(
    prompting: &mut Vec<Prompting>,
    decoding: bool,
    work: &mut Vec<Work>,
) -> Vec<Meta> {
    let candidates: Vec<Candidate> = prompting
        .iter_mut()
        .map(|p| Candidate {
            remaining: p.prefill.remaining(),
            waits: p.prefill.waits_for_store(),
            order: p.meta.order,
        })
        .collect();
    let planned = plan(&candidates, decoding);
    let mut slots: Vec<Option<Prompting>> = prompting.drain(..).map(Some).collect();
    let mut chosen = Vec::with_capacity(planned.len());
    for (index, tokens) in planned {
        if let Some(prompt) = slots[index].take() {
            chosen.push(prompt.meta);
            work.push(Work::Prefill {
                prefill: prompt.prefill,
                tokens,
            });
        }
    }
    prompting.extend(slots.into_iter().flatten());
    chosen
}

/// A prompt as the pass planner sees it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Tokens left to compute.
    remaining: usize,
    /// Its prefix is still arriving layer by layer.
    waits: bool,
    /// Arrival order.
    order: u64,
}

/// Which prompts the next pass computes, and how many tokens of each: `(index into
/// candidates, tokens)` in the order the pass takes them. `decoding`: the pass also
/// carries answers.
///
/// The prompt with the fewest tokens left goes first (arrival order among equals): the
/// others wait less in total than behind a longer one. It takes up to
/// [`STEP_PROMPT_TOKENS`] tokens, and other prompts join it only while they are short
/// ([`JOIN_PROMPT_TOKENS`]): a pass costs a fixed price (reading every weight) plus a
/// price per token, so a few more tokens ride along almost free, while a longer prompt
/// would delay the first more than a pass of its own costs it.
///
/// A prompt whose prefix is still arriving layer by layer is left for a later pass unless
/// it has the pass to itself, so that a pass never waits for the store on behalf of the
/// others; when nothing else is there to compute, the first such prompt is computed layer
/// by layer as its prefix arrives.
fn plan(candidates: &[Candidate], decoding: bool) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| (candidates[i].remaining, candidates[i].order));
    let alone = !decoding && candidates.len() == 1;
    let mut budget = STEP_PROMPT_TOKENS;
    let mut planned = Vec::new();
    for &i in &order {
        let c = candidates[i];
        let ready = alone || !c.waits;
        let joins = planned.is_empty() || c.remaining <= JOIN_PROMPT_TOKENS;
        if budget == 0 || !ready || !joins {
            continue;
        }
        let tokens = c.remaining.min(budget);
        budget -= tokens;
        planned.push((i, tokens));
    }
    if planned.is_empty() && !decoding {
        if let Some(&i) = order.first() {
            planned.push((i, candidates[i].remaining.min(STEP_PROMPT_TOKENS)));
        }
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::{plan, Candidate, JOIN_PROMPT_TOKENS, STEP_PROMPT_TOKENS};

    fn ready(remaining: usize, order: u64) -> Candidate {
        Candidate {
            remaining,
            waits: false,
            order,
        }
    }

    #[test]
    fn the_shortest_prompt_goes_first_and_only_short_ones_join_it() {
        let candidates = [ready(300, 0), ready(40, 1), ready(10, 2), ready(12, 3)];
        assert_eq!(plan(&candidates, true), [(2, 10), (3, 12)]);
        let just_short = [ready(40, 0), ready(JOIN_PROMPT_TOKENS, 1)];
        assert_eq!(plan(&just_short, true), [(1, JOIN_PROMPT_TOKENS)]);
    }

    #[test]
    fn equal_prompts_go_in_arrival_order() {
        let candidates = [ready(50, 7), ready(50, 3)];
        assert_eq!(plan(&candidates, false), [(1, 50)]);
    }

    #[test]
    fn a_long_prompt_is_computed_one_chunk_a_pass_and_never_delays_a_short_one() {
        let long = ready(STEP_PROMPT_TOKENS * 2 + 5, 0);
        assert_eq!(plan(&[long], true), [(0, STEP_PROMPT_TOKENS)]);
        assert_eq!(plan(&[long, ready(4, 1)], true), [(1, 4)]);
    }

    #[test]
    fn a_prefix_still_arriving_never_holds_up_a_shared_pass() {
        let arriving = Candidate {
            waits: true,
            ..ready(10, 0)
        };
        assert_eq!(plan(&[arriving, ready(30, 1)], true), [(1, 30)]);
        assert_eq!(plan(&[arriving], true), [], "answers are decoding");
        assert_eq!(
            plan(&[arriving], false),
            [(0, 10)],
            "it has the pass to itself"
        );
        assert_eq!(
            plan(&[arriving, arriving], false),
            [(0, 10)],
            "nothing else is ready: the first is computed as its prefix arrives"
        );
    }
}
