//! `kvtier-bench filechat`: many different questions about one long document, the "chat
//! with a file" workload, at several concurrency levels.
//!
//! Every prompt is the chat template around one user message, the document followed by a
//! question, so all prompts share the document's tokens as a prefix. The document's KV is
//! computed once and saved to kvtierd before anything is measured. Then, for each
//! concurrency level C, C workers in a closed loop each take the next question and
//! measure its time to first token: first with the cache (hash, lookup, fetch the
//! document's blocks, compute the question), then recomputing the whole prompt with the
//! cache off. Recomputing a long document takes tens of seconds on a CPU, so that side is
//! measured on a smaller sample (`--recompute-questions`, at least C). First tokens per
//! second is requests completed over the wall time of the phase.

mod report;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use kvtier_engine::connector::KvtierConnector;
use kvtier_engine::engine::Engine;
use kvtier_engine::{sampling::argmax, ChatMessage, LoadedModel};

use crate::setup::{self, ModelArgs, StoreArgs};
use report::{Mode, Phase, Request};

/// The bundled document: sections 4.2 to 4.5 of the GNU Coding Standards (see bench/data).
const DEFAULT_DOCUMENT: &str = include_str!("../../data/gnu_coding_standards_program_behavior.txt");
/// Questions about the bundled document, one a line.
const DEFAULT_QUESTIONS: &str = include_str!("../../data/filechat_questions.txt");

#[derive(Debug, Args)]
pub struct FilechatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// Text file to chat about instead of the bundled document.
    #[arg(long)]
    document: Option<PathBuf>,
    /// Questions, one a line, instead of the bundled ones.
    #[arg(long)]
    questions: Option<PathBuf>,
    /// The document is cut at a line boundary to at most this many tokens.
    #[arg(long, default_value_t = 2400)]
    document_tokens: usize,
    /// Concurrency levels (simultaneous requests).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    concurrency: Vec<usize>,
    /// Questions measured with the cache at each level (at least the level).
    #[arg(long, default_value_t = 12)]
    cached_questions: usize,
    /// Questions measured recomputing at each level (at least 3 and at least the level).
    #[arg(long, default_value_t = 3)]
    recompute_questions: usize,
    /// Tokens per cached block.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    block_tokens: u32,
    /// Write every request's measurements to this JSON file, and a PNG plot beside it.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub async fn run(args: FilechatArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let questions = read_questions(&args)?;
    let model = setup::load_model(&args.model).await?;
    let document = document_within(&model, &read_document(&args)?, args.document_tokens)?;
    let store = setup::connect_store(&args.store).await?;
    let namespace = setup::namespace(&model, &args.store.tenant, args.block_tokens);
    let connector = KvtierConnector::new(store.client.clone(), namespace.clone());
    let engine = Engine::new(model.clone(), namespace, Some(connector));
    let prompts = questions
        .iter()
        .map(|q| prompt_tokens(&model, &document, q))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let document_tokens = prompt_tokens(&model, &document, "")?.len();
    eprintln!(
        "kvtier-bench filechat: a {document_tokens}-token prompt prefix, {} questions, \
         blocks of {} tokens, store at {}",
        prompts.len(),
        args.block_tokens,
        store.addr
    );
    warm(&engine, &prompts[0]).await?;

    let plan = phases(&args, prompts.len());
    let progress = progress_bar(plan.iter().map(|p| p.questions.len()).sum())?;
    let mut phases = Vec::new();
    for (mode, concurrency, questions) in plan.into_iter().map(|p| (p.mode, p.c, p.questions)) {
        let phase = measure(&engine, &prompts, mode, concurrency, questions, &progress).await?;
        let line = report::phase_line(&phase);
        if progress.is_hidden() {
            println!("{line}");
        } else {
            progress.println(line);
        }
        phases.push(phase);
    }
    progress.finish_and_clear();

    let summary = report::Summary::of(&phases, document_tokens, args.block_tokens);
    report::print(&summary);
    if let Some(path) = &args.json {
        report::write(path, &summary, &phases)?;
        println!(
            "wrote {} and {}",
            path.display(),
            crate::plot::png_beside(path).display()
        );
    }
    store.shutdown().await
}

fn validate(args: &FilechatArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.concurrency.is_empty() && !args.concurrency.contains(&0),
        "--concurrency needs levels of at least 1"
    );
    anyhow::ensure!(
        args.recompute_questions >= 3,
        "--recompute-questions must be at least 3 so p50 means something"
    );
    anyhow::ensure!(
        (1000..=8000).contains(&args.document_tokens),
        "--document-tokens must be between 1000 and 8000"
    );
    Ok(())
}

fn read_document(args: &FilechatArgs) -> anyhow::Result<String> {
    match &args.document {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --document {}", path.display())),
        None => Ok(DEFAULT_DOCUMENT.to_string()),
    }
}

fn read_questions(args: &FilechatArgs) -> anyhow::Result<Vec<String>> {
    let text = match &args.questions {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --questions {}", path.display()))?,
        None => DEFAULT_QUESTIONS.to_string(),
    };
    let questions: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    anyhow::ensure!(
        questions.len() >= 2,
        "--questions needs at least two questions, one a line"
    );
    Ok(questions)
}

/// The longest run of whole lines from the start of `text` within `limit` tokens.
fn document_within(model: &LoadedModel, text: &str, limit: usize) -> anyhow::Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    let fits = |n: usize| -> anyhow::Result<bool> {
        Ok(model.tokenizer.encode(&lines[..n].join("\n"))?.len() <= limit)
    };
    // Binary search for the most lines that fit: token counts only grow with lines.
    let (mut low, mut high) = (0, lines.len());
    while low < high {
        let mid = (low + high).div_ceil(2);
        if fits(mid)? {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    anyhow::ensure!(low > 0, "the document's first line is over {limit} tokens");
    Ok(lines[..low].join("\n"))
}

/// The chat-template prompt of one question about the document.
fn prompt_tokens(model: &LoadedModel, document: &str, question: &str) -> anyhow::Result<Vec<u32>> {
    let message = format!("{document}\n\n{question}");
    let text = model
        .chat_template
        .render(&[ChatMessage::new("user", message)], true)?;
    Ok(model.tokenizer.encode(&text)?)
}

/// Computes the first question's prompt once and saves its blocks: the document's KV is in
/// kvtierd before anything is measured.
async fn warm(engine: &Engine<KvtierConnector>, prompt: &[u32]) -> anyhow::Result<()> {
    let started = Instant::now();
    let (mut sequence, _, _) = engine.prefill(prompt.to_vec(), false).await?;
    let saved = engine
        .save(&mut sequence)
        .await
        .context("saving the document's blocks")?;
    eprintln!(
        "filechat: document computed and saved in {:.1} s ({} blocks)",
        started.elapsed().as_secs_f64(),
        saved.stored
    );
    Ok(())
}

/// One measured phase before it runs.
struct Planned {
    mode: Mode,
    c: usize,
    questions: Vec<usize>,
}

/// Per level, the cached phase then the recompute phase, on questions after the first
/// (the one that warmed the cache). Recompute reuses the cached phase's first questions,
/// so their first tokens can be compared.
fn phases(args: &FilechatArgs, prompts: usize) -> Vec<Planned> {
    let pick = |n: usize| -> Vec<usize> { (0..n).map(|i| 1 + i % (prompts - 1)).collect() };
    let mut plan = Vec::new();
    for &c in &args.concurrency {
        plan.push(Planned {
            mode: Mode::Cached,
            c,
            questions: pick(args.cached_questions.max(c)),
        });
        plan.push(Planned {
            mode: Mode::Recompute,
            c,
            questions: pick(args.recompute_questions.max(c)),
        });
    }
    plan
}

fn progress_bar(total: usize) -> anyhow::Result<ProgressBar> {
    Ok(ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} requests, {elapsed} elapsed")
            .context("progress template")?,
    ))
}

/// Runs `questions` through `concurrency` closed-loop workers and times each request.
async fn measure(
    engine: &Engine<KvtierConnector>,
    prompts: &[Vec<u32>],
    mode: Mode,
    concurrency: usize,
    questions: Vec<usize>,
    progress: &ProgressBar,
) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let requests: Vec<Request> = stream::iter(questions)
        .map(|question| async move {
            let begun = Instant::now();
            let tokens = prompts[question].clone();
            let (_, logits, prefill) = engine.prefill(tokens, mode == Mode::Cached).await?;
            let first_token = argmax(&logits);
            let ttft_ms = begun.elapsed().as_secs_f64() * 1e3;
            progress.inc(1);
            anyhow::Ok(Request {
                question,
                prompt_tokens: prefill.prompt_tokens,
                cached_tokens: prefill.cached_tokens,
                ttft_ms,
                first_token,
            })
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    Ok(Phase {
        mode,
        concurrency,
        wall_s: started.elapsed().as_secs_f64(),
        requests,
    })
}
