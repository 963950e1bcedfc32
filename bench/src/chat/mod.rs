//! `kvtier-bench chat`: real multi-turn conversations whose KV cache lives in kvtierd.
//!
//! Each turn renders the whole conversation with the model's chat template, as an
//! OpenAI-style server would, and measures time-to-first-token twice: first through
//! kvtier (hash, lookup, fetch, compute the rest), then recomputing the whole prompt with
//! the cache off and nothing written. The engine keeps no KV between turns: what a turn
//! reuses comes from kvtierd. After the first token the turn's answer (the conversation's
//! own, or the model's with `--generate`) is computed in one batched forward and the new
//! blocks are saved before the next turn's clock starts.
//!
//! Each turn is prefilled through kvtier twice, once loading the whole cached prefix
//! before computing and once layer by layer under the computation (layer n of the new
//! tokens computes while layer n+1 arrives); the two must give bit-identical logits, and
//! the table shows both TTFTs.

pub(crate) mod conversations;
mod report;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kvtier_engine::connector::KvtierConnector;
use kvtier_engine::engine::{Engine, Sequence};
use kvtier_engine::{sampling::argmax, ChatMessage, LoadedModel, Sampler, Sampling};

use crate::setup::{self, ModelArgs, StoreArgs};
use conversations::Conversation;
use report::TurnRecord;

/// The conversations replayed by default: real ShareGPT conversations (see bench/data).
const DEFAULT_CONVERSATIONS: &str = include_str!("../../data/sharegpt_chat_demo.jsonl");

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// ShareGPT JSONL file to replay instead of the bundled conversations.
    #[arg(long)]
    conversations: Option<PathBuf>,
    /// Keep the model's own answers of up to N tokens instead of the conversation's.
    #[arg(long, value_name = "N")]
    generate: Option<usize>,
    /// Sampling temperature for --generate (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling threshold for --generate.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tokens per cached block.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    block_tokens: u32,
    /// A conversation stops before its prompt and answer would pass this many tokens.
    #[arg(long, default_value_t = 2560)]
    max_context: usize,
    /// Stop after this many turns in all.
    #[arg(long)]
    max_turns: Option<usize>,
    /// Write every turn's measurements to this JSON file, and a PNG plot beside it.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let conversations = match &args.conversations {
        Some(path) => conversations::load(path)?,
        None => conversations::parse(DEFAULT_CONVERSATIONS, "bundled conversations")?,
    };
    let model = setup::load_model(&args.model).await?;
    let store = setup::connect_store(&args.store).await?;
    let namespace = setup::namespace(&model, &args.store.tenant, args.block_tokens);
    let connector = KvtierConnector::new(store.client.clone(), namespace.clone());
    let layered = Engine::new(model.clone(), namespace.clone(), Some(connector.clone()))
        .with_layer_wise(true);
    let engine = Engine::new(model.clone(), namespace, Some(connector));

    let limit = args.max_context.min(model.info.context_length);
    let plan = plan(&model, &conversations, limit, args.generate, args.max_turns)?;
    let total: usize = plan.iter().map(|(_, turns)| turns).sum();
    eprintln!(
        "kvtier-bench chat: {total} turns from {} conversations, {} blocks of {} tokens, store at {}",
        plan.len(),
        model.info.name,
        args.block_tokens,
        store.addr
    );
    let progress = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} turns, {elapsed} elapsed, eta {eta}")
            .context("progress template")?,
    );
    let mut replay = Replay {
        engine: &engine,
        layered: &layered,
        args: &args,
        records: Vec::new(),
        progress,
    };
    for (index, turns) in plan {
        replay.conversation(&conversations[index], turns).await?;
    }
    replay.progress.finish_and_clear();

    println!("{}", report::table(&replay.records));
    if let Some(s) = report::long_history(&replay.records) {
        println!(
            "turns with >= {} tokens of history: median TTFT {:.1} ms cached vs {:.1} ms \
             recomputed ({:.1}x), first token agrees in {:.0}%",
            report::LONG_HISTORY,
            s.median_ttft_cached_ms,
            s.median_ttft_recompute_ms,
            s.speedup,
            100.0 * s.first_token_agreement
        );
    }
    if let Some(path) = &args.json {
        report::write_json(
            path,
            &model.info.name,
            args.block_tokens as usize,
            &replay.records,
        )?;
        println!(
            "wrote {} and {}",
            path.display(),
            crate::plot::png_beside(path).display()
        );
    }
    store.shutdown().await
}

/// How many turns of each conversation fit in `limit` tokens: `(index, turns)`.
fn plan(
    model: &LoadedModel,
    conversations: &[Conversation],
    limit: usize,
    generate: Option<usize>,
    max_turns: Option<usize>,
) -> anyhow::Result<Vec<(usize, usize)>> {
    let mut plan = Vec::new();
    let mut budget = max_turns.unwrap_or(usize::MAX);
    for (index, conversation) in conversations.iter().enumerate() {
        let mut messages = Vec::new();
        let mut fits = 0;
        for turn in conversation.turns.iter().take(budget) {
            messages.push(ChatMessage::new("user", &turn.user));
            let prompt = tokens(model, &messages, true)?.len();
            messages.push(ChatMessage::new("assistant", &turn.answer));
            // With --generate the history holds the model's answers, which only the run
            // knows; a turn is planned when its prompt and the longest answer fit.
            let length = match generate {
                Some(n) => prompt + n + 2,
                None => tokens(model, &messages, false)?.len(),
            };
            if length > limit {
                break;
            }
            fits += 1;
        }
        if fits > 0 {
            plan.push((index, fits));
            budget -= fits;
        }
    }
    anyhow::ensure!(
        !plan.is_empty(),
        "no conversation has a turn that fits in {limit} tokens"
    );
    Ok(plan)
}

fn tokens(model: &LoadedModel, messages: &[ChatMessage], prompt: bool) -> anyhow::Result<Vec<u32>> {
    let text = model.chat_template.render(messages, prompt)?;
    Ok(model.tokenizer.encode(&text)?)
}

struct Replay<'a> {
    engine: &'a Engine<KvtierConnector>,
    layered: &'a Engine<KvtierConnector>,
    args: &'a ChatArgs,
    records: Vec<TurnRecord>,
    progress: ProgressBar,
}

impl Replay<'_> {
    async fn conversation(
        &mut self,
        conversation: &Conversation,
        turns: usize,
    ) -> anyhow::Result<()> {
        let model = self.engine.model().clone();
        let mut messages: Vec<ChatMessage> = Vec::new();
        for (number, turn) in conversation.turns.iter().take(turns).enumerate() {
            let history_tokens = if messages.is_empty() {
                0
            } else {
                tokens(&model, &messages, false)?.len()
            };
            messages.push(ChatMessage::new("user", &turn.user));
            let prompt = model.chat_template.render(&messages, true)?;

            let started = Instant::now();
            let (sequence, logits, prefill) = self
                .engine
                .prefill(model.tokenizer.encode(&prompt)?, true)
                .await?;
            let first = argmax(&logits);
            let ttft_cached = started.elapsed();
            let logits_cached = logits;

            let started = Instant::now();
            let (_, layered_logits, _) = self
                .layered
                .prefill(model.tokenizer.encode(&prompt)?, true)
                .await?;
            let ttft_layer_wise = started.elapsed();

            let started = Instant::now();
            let (_, logits, _) = self
                .engine
                .prefill(model.tokenizer.encode(&prompt)?, false)
                .await?;
            let first_recomputed = argmax(&logits);
            let ttft_recompute = started.elapsed();

            let (sequence, answer) = match self.args.generate {
                Some(limit) => self.generate(sequence, first, limit).await?,
                None => (sequence, turn.answer.clone()),
            };
            messages.push(ChatMessage::new("assistant", answer));
            self.finish_turn(sequence, &messages).await?;

            let record = TurnRecord {
                conversation: conversation.id.clone(),
                turn: number,
                history_tokens,
                prompt_tokens: prefill.prompt_tokens,
                cached_tokens: prefill.cached_tokens,
                fetched_bytes: prefill.fetched_bytes,
                lookup_ms: ms(prefill.lookup),
                fetch_ms: ms(prefill.fetch),
                compute_ms: ms(prefill.compute),
                ttft_cached_ms: ms(ttft_cached),
                ttft_layer_wise_ms: ms(ttft_layer_wise),
                ttft_recompute_ms: ms(ttft_recompute),
                first_token_match: first == first_recomputed,
                layer_wise_logits_match: layered_logits == logits_cached,
            };
            let line = turn_line(&record);
            if self.progress.is_hidden() {
                println!("{line}");
            } else {
                self.progress.println(line);
            }
            self.progress.inc(1);
            self.records.push(record);
        }
        Ok(())
    }

    /// The model's own answer, greedy or sampled, decoded on the turn's sequence.
    async fn generate(
        &self,
        mut sequence: Sequence,
        first: u32,
        limit: usize,
    ) -> anyhow::Result<(Sequence, String)> {
        let model = self.engine.model();
        let stops = [
            model.tokenizer.eos_id(),
            model.tokenizer.token_id("<|im_end|>"),
        ];
        let mode = if self.args.temperature > 0.0 {
            Sampling::TopP {
                temperature: self.args.temperature,
                top_p: self.args.top_p,
                seed: self.args.seed,
            }
        } else {
            Sampling::Greedy
        };
        let mut sampler = Sampler::new(mode);
        let mut answer = Vec::new();
        let mut next = first;
        while answer.len() < limit && !stops.contains(&Some(next)) {
            answer.push(next);
            let (extended, logits) = self.engine.extend(sequence, &[next]).await?;
            sequence = extended;
            next = sampler.sample(&logits);
        }
        Ok((sequence, model.tokenizer.decode(&answer)?))
    }

    /// Computes the answer's KV on the turn's sequence and saves every new full block.
    async fn finish_turn(
        &self,
        mut sequence: Sequence,
        messages: &[ChatMessage],
    ) -> anyhow::Result<()> {
        let full = tokens(self.engine.model(), messages, false)?;
        sequence = self.engine.continue_to(sequence, &full).await?;
        self.engine
            .save(&mut sequence)
            .await
            .context("saving the turn's blocks")?;
        Ok(())
    }
}

fn ms(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn turn_line(r: &TurnRecord) -> String {
    format!(
        "{} turn {:>2}: history {:>5} tok, prompt {:>5}, cached {:>5} | TTFT {:>8.1} ms cached, \
         {:>8.1} ms layer-wise{}, {:>8.1} ms recomputed ({:>5.1}x) | first token {}",
        r.conversation,
        r.turn,
        r.history_tokens,
        r.prompt_tokens,
        r.cached_tokens,
        r.ttft_cached_ms,
        r.ttft_layer_wise_ms,
        if r.layer_wise_logits_match {
            ""
        } else {
            " (LOGITS DIFFER)"
        },
        r.ttft_recompute_ms,
        r.ttft_recompute_ms / r.ttft_cached_ms,
        if r.first_token_match {
            "agrees"
        } else {
            "DIFFERS"
        }
    )
}
