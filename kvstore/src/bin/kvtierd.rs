//! kvtierd: the kvtier block store server.
//!
//! With no arguments it serves a single node on 127.0.0.1:50051 with default settings. A
//! TOML config file (`--config`) overrides the defaults, and flags or `KVTIER_*`
//! environment variables override the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytesize::ByteSize;
use clap::Parser;
use kvtier_store::{server, Config, Store};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "kvtierd", version, about = "kvtier block store server")]
struct Args {
    /// TOML config file; every field is optional.
    #[arg(long, env = "KVTIER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to serve on, e.g. 127.0.0.1:50051.
    #[arg(long, env = "KVTIER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Capacity of the dram tier, e.g. 4GiB.
    #[arg(long, env = "KVTIER_DRAM_CAPACITY")]
    dram_capacity: Option<ByteSize>,
    /// Largest block a put may carry, e.g. 64MiB.
    #[arg(long, env = "KVTIER_MAX_BLOCK_BYTES")]
    max_block_bytes: Option<ByteSize>,
    /// gRPC message limit, e.g. 72MiB.
    #[arg(long, env = "KVTIER_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<ByteSize>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

impl Args {
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(size) = self.dram_capacity {
            config.dram_capacity = size;
        }
        if let Some(size) = self.max_block_bytes {
            config.max_block_bytes = size;
        }
        if let Some(size) = self.max_message_bytes {
            config.max_message_bytes = size;
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvtierd: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let config = args.config()?;
    if args.print_config {
        print!("{}", toml::to_string_pretty(&config)?);
        return Ok(());
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let store = Arc::new(Store::open(&config)?);
    tracing::info!(
        addr = %listener.local_addr()?,
        dram_capacity = %config.dram_capacity,
        max_block_bytes = %config.max_block_bytes,
        "kvtierd serving"
    );
    server::serve(listener, store, &config, shutdown_signal()).await?;
    tracing::info!("kvtierd stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
