//! `kvtier-bench serve`: simulated users chatting with kvtier-node at the same time.
//!
//! N users each replay one ShareGPT conversation (bench/data) as a chat client would: send
//! the conversation so far as a streaming chat request naming the conversation in the
//! `x-kvtier-conversation` header, read the model's answer, think, send the next user
//! message. The history holds the model's own answers, as a real client's does, so each
//! turn's prompt continues the KV the node saved for the turn before.
//!
//! How long the answers are (`--answers`): by default each is as long as the
//! conversation's recorded answer (up to `--max-tokens`), asked for with `min_tokens`
//! and `max_tokens` as serving benchmarks fix output lengths, so the histories grow as
//! the real conversation's did whatever the small model would have said; `natural` lets
//! the model end its answers itself; `recorded-text` puts the recorded answers in the
//! history instead of the model's (prompts grow as the real conversation did, but only
//! the part before each answer can come from the cache, since the node computed and
//! saved its own answer, not that one).
//!
//! The same users run twice against a node started in this process on a loopback port:
//! once with kvtier (an embedded kvtierd) and once with the cache off, so every prompt is
//! computed. TTFT is measured by the client, from sending the request to the first
//! streamed text, so it includes queueing behind the other users.

mod report;
mod sse;
mod users;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kvtier_engine::node::{self, NodeConfig};
use kvtier_engine::LoadedModel;

use crate::chat::conversations::{self, Conversation};
use crate::setup::{self, ModelArgs, StoreArgs};
use report::{ModeReport, TurnRecord};
use users::UserPlan;

/// The conversations replayed by default: real ShareGPT conversations (see bench/data).
const DEFAULT_CONVERSATIONS: &str = include_str!("../../data/sharegpt_chat_demo.jsonl");

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// ShareGPT JSONL file to replay instead of the bundled conversations.
    #[arg(long)]
    conversations: Option<PathBuf>,
    /// Simulated users chatting at the same time.
    #[arg(long, default_value_t = 4)]
    users: usize,
    /// Most turns each user sends (its conversation may have fewer).
    #[arg(long, default_value_t = 12)]
    turns: usize,
    /// Pause between reading an answer and sending the next message.
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    think: Duration,
    /// Tokens the model answers each turn with, at most.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// How long the answers are and what the history keeps of them.
    #[arg(long, value_enum, default_value_t = Answers::RecordedLength)]
    answers: Answers,
    /// A user stops before a prompt and its answer would pass this many tokens.
    #[arg(long, default_value_t = 4096)]
    max_context: usize,
    /// Tokens per cached block.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    block_tokens: u32,
    /// Load cached prefixes layer by layer under the computation of the new tokens
    /// (`false`: each prefix is loaded whole before its prompt joins a pass).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    layer_wise: bool,
    /// Run only with the cache (skip the baseline without it).
    #[arg(long)]
    cache_only: bool,
    /// Write the per-turn measurements and summaries to this JSON file, a PNG beside it.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// How long each answer is, and what the history keeps of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answers {
    /// The model's answer, as many tokens as the recorded answer (up to --max-tokens).
    RecordedLength,
    /// The model's answer, ended where the model ends it (up to --max-tokens).
    Natural,
    /// The model answers as it likes; the history keeps the recorded answer.
    RecordedText,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("think: {text:?} is not a duration like 2s or 500ms"))?;
    if !(0.0..=3600.0).contains(&(value * scale)) {
        return Err(format!("think: {text:?} must be between 0 and 3600 s"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.users > 0, "--users: must be at least 1");
    anyhow::ensure!(args.turns > 0, "--turns: must be at least 1");
    let conversations = match &args.conversations {
        Some(path) => conversations::load(path)?,
        None => conversations::parse(DEFAULT_CONVERSATIONS, "bundled conversations")?,
    };
    let model = setup::load_model(&args.model).await?;
    let plans = plans(&conversations, &args);
    eprintln!(
        "kvtier-bench serve: {} users, up to {} turns each, think {:?}, answers {:?} of up to \
         {} tokens, model {}",
        plans.len(),
        args.turns,
        args.think,
        args.answers,
        args.max_tokens,
        model.info.name
    );
    let mut modes = Vec::new();
    let mut cases = vec![true];
    if !args.cache_only {
        cases.push(false);
    }
    for cache in cases {
        let records = run_mode(&model, &args, &plans, cache).await?;
        modes.push(records);
    }
    println!("{}", report::table(&modes));
    if let [with, without] = &modes[..] {
        if with.ttft_p50_ms > 0.0 {
            println!(
                "TTFT p50 {:.0} ms with kvtier vs {:.0} ms without ({:.1}x lower); \
                 {:.1} vs {:.1} turns per minute",
                with.ttft_p50_ms,
                without.ttft_p50_ms,
                without.ttft_p50_ms / with.ttft_p50_ms,
                with.turns_per_minute,
                without.turns_per_minute
            );
        }
    }
    if let Some(path) = &args.json {
        report::write_json(path, &model.info.name, &args, &modes)?;
        println!(
            "wrote {} and {}",
            path.display(),
            crate::plot::png_beside(path).display()
        );
    }
    Ok(())
}

/// User `i` replays conversation `i` (wrapping around when there are fewer).
fn plans(conversations: &[Conversation], args: &ServeArgs) -> Vec<UserPlan> {
    (0..args.users)
        .map(|user| {
            let conversation = &conversations[user % conversations.len()];
            UserPlan {
                user,
                conversation: format!("{}-u{user}", conversation.id),
                turns: conversation
                    .turns
                    .iter()
                    .take(args.turns)
                    .map(|t| (t.user.clone(), t.answer.clone()))
                    .collect(),
            }
        })
        .collect()
}

/// One run of every user against a fresh node (and, with `cache`, a fresh kvtierd).
async fn run_mode(
    model: &Arc<LoadedModel>,
    args: &ServeArgs,
    plans: &[UserPlan],
    cache: bool,
) -> anyhow::Result<ModeReport> {
    let mode = if cache { "kvtier" } else { "no cache" };
    let store = if cache {
        Some(setup::connect_store(&args.store).await?)
    } else {
        None
    };
    let config = NodeConfig {
        listen: "127.0.0.1:0".parse()?,
        store: store
            .as_ref()
            .map_or_else(|| "127.0.0.1:1".to_string(), |s| s.addr.clone()),
        model_id: "model".into(),
        tenant: args.store.tenant.clone(),
        block_tokens: args.block_tokens,
        queue_depth: 4 * plans.len().max(4),
        fetch_deadline: Duration::from_secs(2),
        layer_wise: args.layer_wise,
        cache,
    };
    let running = node::start(model.clone(), config)
        .await
        .context("cannot start kvtier-node")?;
    eprintln!("serve: {mode}: node on {}", running.addr);
    let limits = users::Limits {
        think: args.think,
        max_tokens: args.max_tokens,
        answers: args.answers,
        max_context: args.max_context.min(model.info.context_length),
    };
    let started = std::time::Instant::now();
    let records: Vec<TurnRecord> =
        users::run_all(running.addr, model.clone(), plans, &limits, mode).await?;
    let wall = started.elapsed();
    running.abort();
    if let Some(store) = store {
        store.shutdown().await?;
    }
    Ok(ModeReport::of(mode, records, wall))
}
