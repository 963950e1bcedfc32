//! kvtier-bench: kvtier's workloads, each measured side by side with its baseline.

mod chat;
mod codecs;
mod filechat;
mod io;
mod plot;
mod serve;
mod setup;
mod stats;
mod tiers;
mod trace;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "kvtier-bench",
    version,
    about = "kvtier workloads and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Multi-turn chat on real conversations: TTFT with kvtier against recomputing.
    Chat(chat::ChatArgs),
    /// Questions about one long document: TTFT with its KV cached against recomputing.
    Filechat(filechat::FilechatArgs),
    /// Every KV codec and decode-time compression on real KV: size, speed and accuracy.
    Codecs(codecs::CodecsArgs),
    /// Put and get throughput per tier beside fio and memcpy.
    Tiers(tiers::TiersArgs),
    /// Put/get throughput of kvtierd beside redis-server and the loopback TCP ceiling.
    Io(io::IoArgs),
    /// Replays a production prefix trace: hit ratio of kvtier's policy, LRU and Belady.
    Trace(trace::TraceArgs),
    /// Concurrent users chatting with kvtier-node: TTFT and throughput with kvtier and without.
    Serve(serve::ServeArgs),
    /// Runs a server for the io benchmark (started by `io` itself).
    #[command(hide = true)]
    IoServer(io::ServeArgs),
    /// Download the default chat model when it is missing, and print its path.
    FetchModel(setup::ModelArgs),
}

fn main() -> std::process::ExitCode {
    kvtier_engine::fix_compute_threads();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Chat(args) => chat::run(args).await,
            Command::Codecs(args) => codecs::run(args).await,
            Command::Filechat(args) => filechat::run(args).await,
            Command::Io(args) => io::run(args).await,
            Command::Trace(args) => trace::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::IoServer(args) => io::serve(args).await,
            Command::Tiers(args) => tiers::run(args).await,
            Command::FetchModel(args) => {
                println!("{}", setup::model_path(&args)?.display());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvtier-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
