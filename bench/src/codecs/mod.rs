//! `kvtier-bench codecs`: every block codec and decode-time compression, on real KV.
//!
//! SmolLM2-135M-Instruct reads real ShareGPT conversations (bench/data), rendered with its
//! chat template and concatenated in file order into one token stream. The first
//! `--prefix` tokens are prefilled; their KV is what the codecs compress. The next
//! `--positions` tokens are the decoding positions: the reference is the model with exact
//! KV, and each codec is scored by top-1 agreement and mean KL divergence of the
//! next-token distribution against it (see [`accuracy`]). Size and speed are measured on
//! the prefix's KV in f16 blocks of `--block-tokens` tokens (see [`kv`]).

mod accuracy;
mod kv;
mod report;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use kvtier_client::format::{CodecSpec, DType, Entropy};
use kvtier_engine::kv_cache::DecodeCompression;
use kvtier_engine::{ChatMessage, LoadedModel};

use crate::chat::conversations;
use crate::setup::{self, ModelArgs};
use accuracy::Reference;
use report::{CodecRecord, DecodeRecord, Report};

const DEFAULT_CONVERSATIONS: &str = include_str!("../../data/sharegpt_chat_demo.jsonl");

/// The codecs measured, lossless first.
const CODECS: [&str; 13] = [
    "none",
    "lz4",
    "zstd:1",
    "shuffle+lz4",
    "shuffle+zstd:1",
    "shuffle+zstd:3",
    "fp8",
    "fp8+zstd:1",
    "int8",
    "int8+zstd:1",
    "int4:32",
    "int4:32+zstd:1",
    "int4:64",
];

/// Recent windows of decode-time compression.
const WINDOWS: [usize; 2] = [64, 256];

#[derive(Debug, Args)]
pub struct CodecsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// ShareGPT JSONL file to read instead of the bundled conversations.
    #[arg(long)]
    conversations: Option<PathBuf>,
    /// Tokens of context before the first scored position.
    #[arg(long, default_value_t = 2048)]
    prefix: usize,
    /// Decoding positions scored after the prefix.
    #[arg(long, default_value_t = 2000)]
    positions: usize,
    /// Tokens per block for the block codecs.
    #[arg(long, default_value_t = 64)]
    block_tokens: usize,
    /// Write the measurements to this JSON file, and a PNG plot beside it.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub async fn run(args: CodecsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.block_tokens > 0 && args.prefix >= args.block_tokens,
        "--prefix must hold at least one block of --block-tokens"
    );
    anyhow::ensure!(args.positions > 0, "--positions must be positive");
    let model = setup::load_model(&args.model).await?;
    let report = tokio::task::spawn_blocking(move || measure(&model, &args).map(|r| (r, args)))
        .await
        .context("codecs benchmark stopped")?;
    let (report, args) = report?;
    println!("{}", report::codec_table(&report));
    println!("{}", report::decode_table(&report));
    if let Some(path) = &args.json {
        report::write(path, &report)?;
        println!(
            "wrote {} and {}",
            path.display(),
            crate::plot::png_beside(path).display()
        );
    }
    Ok(())
}

fn measure(loaded: &LoadedModel, args: &CodecsArgs) -> anyhow::Result<Report> {
    let started = Instant::now();
    let model = &loaded.model;
    let prefix = args.prefix / args.block_tokens * args.block_tokens;
    let stream = token_stream(loaded, args, prefix + args.positions)?;
    let (head, continuation) = stream.split_at(prefix);
    eprintln!(
        "codecs: {} context tokens, {} scored positions, {}",
        head.len(),
        continuation.len(),
        loaded.info.name
    );

    let mut exact = model.new_cache()?;
    exact.reserve(stream.len())?;
    model.forward(head, &mut exact)?;
    let f32_blocks = kv::Blocks::export(&exact, args.block_tokens, DType::F32, prefix)?;
    let f16_blocks = kv::Blocks::export(&exact, args.block_tokens, DType::F16, prefix)?;
    let reference = Reference::new(&model.forward_all_logits(continuation, &mut exact)?);
    drop(exact);
    eprintln!(
        "codecs: reference done at {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let mut codecs = Vec::new();
    let mut accuracy: Vec<(CodecSpec, accuracy::Agreement)> = Vec::new();
    for name in CODECS {
        let codec: CodecSpec = name.parse()?;
        let size = kv::measure(&f16_blocks, &codec)?;
        let transform = CodecSpec::new(codec.transform, Entropy::None);
        let agreement = match accuracy.iter().find(|(c, _)| *c == transform) {
            Some((_, a)) => *a,
            None if codec.is_lossless() => lossless_agreement(&f32_blocks, &codec, &reference)?,
            None => {
                let prefix_blocks = kv::round_trip(&f32_blocks, &transform)?;
                let logits =
                    accuracy::after_blocks(model, &prefix_blocks, args.block_tokens, continuation)?;
                let a = reference.compare(&logits);
                accuracy.push((transform, a));
                a
            }
        };
        eprintln!(
            "codecs: {name} done at {:.0} s",
            started.elapsed().as_secs_f64()
        );
        codecs.push(CodecRecord::new(name, size, agreement));
    }

    let mut decode = Vec::new();
    for window in WINDOWS {
        let settings = DecodeCompression::int8(window);
        let run = accuracy::with_decode_compression(model, settings, head, continuation)?;
        let agreement = reference.compare(&run.logits);
        decode.push(DecodeRecord::new(settings, &run, agreement));
        eprintln!(
            "codecs: decode-time W={window} done at {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(Report {
        model: loaded.info.name.clone(),
        context_tokens: prefix,
        positions: reference.len(),
        block_tokens: args.block_tokens,
        kv_bytes_f16: f16_blocks.raw_bytes(),
        codecs,
        decode,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// A lossless codec gives back the prefix bit for bit, so the model computes exactly the
/// reference; checked on the bytes rather than assumed.
fn lossless_agreement(
    blocks: &kv::Blocks,
    codec: &CodecSpec,
    reference: &Reference,
) -> anyhow::Result<accuracy::Agreement> {
    let back = kv::round_trip(blocks, codec)?;
    anyhow::ensure!(back == blocks.raw, "{codec} is not bit-exact on real KV");
    Ok(accuracy::Agreement {
        positions: reference.len(),
        top1: 1.0,
        mean_kl: 0.0,
    })
}

/// Conversations rendered with the chat template, concatenated until `n` tokens.
fn token_stream(loaded: &LoadedModel, args: &CodecsArgs, n: usize) -> anyhow::Result<Vec<u32>> {
    let all = match &args.conversations {
        Some(path) => conversations::load(path)?,
        None => conversations::parse(DEFAULT_CONVERSATIONS, "bundled conversations")?,
    };
    let mut tokens = Vec::with_capacity(n);
    for conversation in &all {
        let messages: Vec<ChatMessage> = conversation
            .turns
            .iter()
            .flat_map(|t| {
                [
                    ChatMessage::new("user", &t.user),
                    ChatMessage::new("assistant", &t.answer),
                ]
            })
            .collect();
        let text = loaded.chat_template.render(&messages, false)?;
        tokens.extend(loaded.tokenizer.encode(&text)?);
        if tokens.len() >= n {
            tokens.truncate(n);
            return Ok(tokens);
        }
    }
    anyhow::bail!(
        "the conversations hold {} tokens; {n} are needed (lower --prefix or --positions)",
        tokens.len()
    )
}
