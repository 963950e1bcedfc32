//! kvtierd: the kvtier block store server.
//!
//! With no arguments it serves a single node on 127.0.0.1:50051 with default settings. A
//! TOML config file (`--config`) overrides the defaults, and flags or `KVTIER_*`
//! environment variables override the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytesize::ByteSize;
use clap::Parser;
use kvtier_store::cluster::{self, ClusterSettings};
use kvtier_store::metrics::{Exporter, MetricsListen};
use kvtier_store::tier::ssd::IoEngineKind;
use kvtier_store::{server, Config, Durability, Store};
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
    /// Directory of the ssd tier and the index; without one the store is memory-only.
    #[arg(long, env = "KVTIER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Capacity of the pinned (page-locked) tier, e.g. 1GiB; 0 turns it off.
    #[arg(long, env = "KVTIER_PINNED_CAPACITY")]
    pinned_capacity: Option<ByteSize>,
    /// Capacity of the dram tier, e.g. 4GiB.
    #[arg(long, env = "KVTIER_DRAM_CAPACITY")]
    dram_capacity: Option<ByteSize>,
    /// Capacity of the ssd tier, e.g. 64GiB.
    #[arg(long, env = "KVTIER_SSD_CAPACITY")]
    ssd_capacity: Option<ByteSize>,
    /// When puts reach the ssd tier.
    #[arg(long, env = "KVTIER_DURABILITY")]
    durability: Option<Durability>,
    /// Size of one segment file, e.g. 256MiB.
    #[arg(long, env = "KVTIER_SEGMENT_SIZE")]
    segment_size: Option<ByteSize>,
    /// I/O engine of the ssd tier.
    #[arg(long, env = "KVTIER_IO_ENGINE")]
    io_engine: Option<IoEngineKind>,
    /// Live fraction under which a segment is compacted, 0 to 1.
    #[arg(long, env = "KVTIER_COMPACTION_THRESHOLD")]
    compaction_threshold: Option<f64>,
    /// Largest block a put may carry, e.g. 64MiB.
    #[arg(long, env = "KVTIER_MAX_BLOCK_BYTES")]
    max_block_bytes: Option<ByteSize>,
    /// gRPC message limit, e.g. 72MiB.
    #[arg(long, env = "KVTIER_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<ByteSize>,
    /// Prometheus endpoint, e.g. 127.0.0.1:9091; "" serves no metrics.
    #[arg(long, env = "KVTIER_METRICS_LISTEN")]
    metrics_listen: Option<MetricsListen>,
    /// Codec of the pinned tier's blocks: "keep" (as put) or a name such as int8+zstd:1.
    #[arg(long, env = "KVTIER_PINNED_CODEC")]
    pinned_codec: Option<String>,
    /// Codec of the dram tier's blocks, as for --pinned-codec.
    #[arg(long, env = "KVTIER_DRAM_CODEC")]
    dram_codec: Option<String>,
    /// Codec of the ssd tier's blocks, as for --pinned-codec.
    #[arg(long, env = "KVTIER_SSD_CODEC")]
    ssd_codec: Option<String>,
    /// Address of the cluster-internal service, e.g. 127.0.0.1:50061.
    #[arg(long, env = "KVTIER_CLUSTER_LISTEN")]
    cluster_listen: Option<SocketAddr>,
    /// Cluster address of a member to join on first start; without it a node forms its
    /// own cluster.
    #[arg(long, env = "KVTIER_JOIN")]
    join: Option<String>,
    /// Node id to take on first start (positive); later starts keep the stored one.
    #[arg(long, env = "KVTIER_NODE_ID")]
    node_id: Option<u64>,
    /// Partitions of a new cluster's table.
    #[arg(long, env = "KVTIER_PARTITIONS")]
    partitions: Option<u32>,
    /// Replicas of each partition in a new cluster.
    #[arg(long, env = "KVTIER_REPLICATION")]
    replication: Option<u32>,
    /// Raft heartbeat interval, e.g. 250ms.
    #[arg(long, env = "KVTIER_HEARTBEAT", value_parser = humantime::parse_duration)]
    heartbeat: Option<Duration>,
    /// Raft election timeout (low end), e.g. 1s.
    #[arg(long, env = "KVTIER_ELECTION_TIMEOUT", value_parser = humantime::parse_duration)]
    election_timeout: Option<Duration>,
    /// How long a member may go unanswered before its partitions move, e.g. 10s.
    #[arg(long, env = "KVTIER_DOWN_AFTER", value_parser = humantime::parse_duration)]
    down_after: Option<Duration>,
    /// How often a node pulls the partitions it gained, e.g. 200ms.
    #[arg(long, env = "KVTIER_PULL_INTERVAL", value_parser = humantime::parse_duration)]
    pull_interval: Option<Duration>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// Replaces `field` with `flag` when the flag was given.
fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
    if let Some(value) = flag {
        *field = value.clone();
    }
}

impl Args {
    /// The config file (or the defaults) with every given flag applied, validated.
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        set(&mut config.listen, &self.listen);
        if let Some(dir) = &self.data_dir {
            config.data_dir = Some(dir.clone());
        }
        set(&mut config.pinned_capacity, &self.pinned_capacity);
        set(&mut config.dram_capacity, &self.dram_capacity);
        set(&mut config.ssd_capacity, &self.ssd_capacity);
        set(&mut config.durability, &self.durability);
        set(&mut config.segment_size, &self.segment_size);
        set(&mut config.io_engine, &self.io_engine);
        set(&mut config.compaction_threshold, &self.compaction_threshold);
        set(&mut config.max_block_bytes, &self.max_block_bytes);
        set(&mut config.max_message_bytes, &self.max_message_bytes);
        set(&mut config.metrics_listen, &self.metrics_listen);
        set(&mut config.pinned_codec, &self.pinned_codec);
        set(&mut config.dram_codec, &self.dram_codec);
        set(&mut config.ssd_codec, &self.ssd_codec);
        self.apply_cluster(&mut config.cluster);
        config.validate()?;
        Ok(config)
    }

    fn apply_cluster(&self, cluster: &mut ClusterSettings) {
        set(&mut cluster.listen, &self.cluster_listen);
        if self.join.is_some() {
            cluster.join = self.join.clone();
        }
        if self.node_id.is_some() {
            cluster.node_id = self.node_id;
        }
        set(&mut cluster.partitions, &self.partitions);
        set(&mut cluster.replication, &self.replication);
        set(&mut cluster.heartbeat, &self.heartbeat);
        set(&mut cluster.election_timeout, &self.election_timeout);
        set(&mut cluster.down_after, &self.down_after);
        set(&mut cluster.pull_interval, &self.pull_interval);
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
    // openraft's own info lines narrate every election and append; kvtierd logs the
    // membership events that matter. Colours only on a terminal, not in log files.
    let default_filter = || EnvFilter::new("info,openraft=warn");
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
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
    let _metrics = start_metrics(&config, &store)?;
    let data_addr = listener.local_addr()?;
    let cluster = cluster::join(&config, data_addr)
        .await
        .context("cannot start the cluster node")?;
    log_start(&config, &store, data_addr);
    let limit = config.max_message_bytes.as_u64() as usize;
    let routing = server::Routing::new(cluster.node.handle(), limit);
    server::serve_routed(listener, store, routing, &config, shutdown_signal()).await?;
    cluster.node.shutdown().await;
    tracing::info!("kvtierd stopped");
    Ok(())
}

/// The Prometheus endpoint, unless the config turns it off; it stops when dropped.
fn start_metrics(config: &Config, store: &Arc<Store>) -> anyhow::Result<Option<Exporter>> {
    let Some(addr) = config.metrics_listen.addr() else {
        return Ok(None);
    };
    Ok(Some(Exporter::start(addr, store.clone())?))
}

fn log_start(config: &Config, store: &Store, addr: SocketAddr) {
    let stats = store.stats();
    tracing::info!(
        %addr,
        data_dir = ?config.data_dir,
        pinned_capacity = %config.pinned_capacity,
        pinned_memory = stats.pinned_memory.unwrap_or("off"),
        dram_capacity = %config.dram_capacity,
        ssd_capacity = %config.ssd_capacity,
        io_engine = stats.io_engine.unwrap_or("off"),
        durability = ?config.durability,
        ssd_codec = %config.ssd_codec,
        blocks = stats.blocks,
        "kvtierd serving"
    );
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
