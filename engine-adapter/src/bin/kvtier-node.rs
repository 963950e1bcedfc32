//! `kvtier-node`: the reference inference node. Serves an OpenAI-compatible API on the
//! reference model, with prompt KV from a kvtierd at `--store`, or from one embedded in
//! this process (an empty memory store on a loopback port) when no address is given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytesize::ByteSize;
use clap::Parser;
use kvtier_engine::fetch::{default_model_dir, ensure_smollm2};
use kvtier_engine::node::{self, NodeConfig};
use kvtier_engine::LoadedModel;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "kvtier-node",
    version,
    about = "OpenAI-compatible inference node on kvtier"
)]
struct Args {
    /// HTTP address to serve on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// kvtierd address (`host:port`); without it an embedded store is started.
    #[arg(long)]
    store: Option<String>,
    /// Capacity of the embedded store's dram tier.
    #[arg(long, default_value = "2GiB")]
    store_capacity: ByteSize,
    /// GGUF model file; default SmolLM2-135M-Instruct, downloaded when missing.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The model id clients use; default the file name without `.gguf`.
    #[arg(long)]
    model_id: Option<String>,
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Tokens per cached block.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    block_tokens: u32,
    /// Requests that may wait while four are being answered; more get 429.
    #[arg(long, default_value_t = 16)]
    queue_depth: usize,
    /// Longest the cache lookup and fetch may take before the prompt is recomputed.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    fetch_deadline: Duration,
    /// Load cached prefixes layer by layer, computing a prompt alone in its pass as its
    /// prefix arrives (`false`: load the whole prefix before the prompt joins a pass).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    layer_wise: bool,
    /// Serve without kvtier: compute every prompt, save nothing (a baseline to compare with).
    #[arg(long)]
    no_cache: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    kvtier_engine::fix_compute_threads();
    tokio::runtime::Runtime::new()?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let path = match &args.model {
        Some(path) => path.clone(),
        None => ensure_smollm2(&default_model_dir(), &mut |line| eprintln!("{line}"))?,
    };
    let model_id = args.model_id.clone().unwrap_or_else(|| {
        path.file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned())
    });
    let loaded = tokio::task::spawn_blocking(move || LoadedModel::load(&path))
        .await?
        .context("cannot load the model")?;

    let (store, _embedded) = match &args.store {
        Some(addr) => (addr.clone(), None),
        None => {
            let config = kvtier_store::Config {
                listen: "127.0.0.1:0".parse()?,
                dram_capacity: args.store_capacity,
                ..kvtier_store::Config::default()
            };
            config.validate()?;
            let server = kvtier_store::server::spawn(config)
                .await
                .context("cannot start the embedded kvtierd")?;
            (server.addr.to_string(), Some(server))
        }
    };
    let config = NodeConfig {
        listen: args.listen,
        store,
        model_id,
        tenant: args.tenant,
        block_tokens: args.block_tokens,
        queue_depth: args.queue_depth,
        fetch_deadline: args.fetch_deadline,
        layer_wise: args.layer_wise,
        cache: !args.no_cache,
    };
    let running = node::start(Arc::new(loaded), config).await?;
    println!("kvtier-node: serving on http://{}", running.addr);
    tokio::select! {
        result = running.wait() => result?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
