//! `kvtier-bench io`: put and get throughput and latency of kvtierd over loopback gRPC,
//! side by side with a real `redis-server` and with the loopback ceiling (the same bytes
//! through a plain TCP connection).
//!
//! Every server is its own process on a loopback port. Each cell (block size,
//! concurrency) is measured `--reps` times; within a repetition the systems take turns in
//! an order that rotates from one repetition to the next, so that a machine that slows
//! down mid-run slows every system alike. Values are random bytes (incompressible)
//! wrapped as real kvtier blocks, the same bytes for every system, and every get is
//! compared with what was put. Reported figures are medians over repetitions.
//!
//! With `--cluster` a three-member kvtierd cluster (two replicas of every block) runs
//! beside the single node, its client routing each key to its primary. On one machine
//! this measures what replication and routing cost, not what more machines would add.

mod measure;
mod report;
mod resp;
mod servers;
mod sink;
mod target;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use bytesize::ByteSize;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kvtier_client::format::{encode_block, BlockShape, DType};
use kvtier_client::Namespace;
use rand::{RngCore, SeedableRng};

use measure::{Figures, Workload};
pub use servers::{serve, ServeArgs};
use servers::{ServeKind, ServerProcess};
use target::{Endpoint, System};

#[derive(Debug, Args)]
pub struct IoArgs {
    /// Block payload sizes, multiples of 4 KiB.
    #[arg(long, value_delimiter = ',', default_value = "64KiB,256KiB,1MiB,4MiB")]
    sizes: Vec<ByteSize>,
    /// Numbers of connections with one request in flight each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Repetitions of every cell; figures are medians over them.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Bytes of values each measured phase moves (puts or gets of one cell).
    #[arg(long, default_value = "64MiB")]
    bytes_per_phase: ByteSize,
    /// Fewest operations in a phase, whatever the block size.
    #[arg(long, default_value_t = 48)]
    min_ops: u64,
    /// Use the kvtierd at this address instead of starting one.
    #[arg(long, value_name = "ADDR")]
    server: Option<String>,
    /// The Redis server binary.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Leave Redis out (for machines without redis-server).
    #[arg(long)]
    no_redis: bool,
    /// Also measure a three-member kvtierd cluster on loopback (two replicas of every
    /// block), beside the single node.
    #[arg(long)]
    cluster: bool,
    /// Seed of the random payloads.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results to this JSON file, and a PNG plot beside it.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Distinct values per block size; operations cycle through them.
const VALUES_PER_SIZE: usize = 4;

/// Bytes of one token of one layer in the benchmark's block shape (K and V of one
/// 64-wide f32 head); eight layers make 4 KiB per token.
const SHAPE: BlockShape = BlockShape {
    n_layers: 8,
    n_kv_heads: 1,
    block_tokens: 1,
    head_dim: 64,
    dtype: DType::F32,
};

pub async fn run(args: IoArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let (servers, systems) = start_servers(&args).await?;
    for server in &servers {
        eprintln!("io: {} listening on {}", server.name, server.addr);
    }
    let cells = report::cells(&args.sizes, &args.concurrency);
    let progress = progress(cells.len() * args.reps * systems.len())?;
    let mut results = report::Results::new(&systems);
    let mut run_id = 0u64;
    for (index, &(size, concurrency)) in cells.iter().enumerate() {
        let values = Arc::new(values(size, args.seed + index as u64)?);
        let namespace = namespace(size);
        for rep in 0..args.reps {
            for turn in 0..systems.len() {
                let (system, addr) = &systems[(turn + rep) % systems.len()];
                let endpoint = Endpoint {
                    system: *system,
                    addr: addr.clone(),
                    namespace: namespace.clone(),
                };
                progress.set_message(format!(
                    "{} {} x{concurrency}",
                    system.name(),
                    ByteSize::b(size)
                ));
                run_id += 1;
                let workload = Workload {
                    run: run_id,
                    ops: ops(&args, size, concurrency),
                    values: values.clone(),
                };
                let (put, get) = measure_cell(&endpoint, concurrency, &workload)
                    .await
                    .with_context(|| format!("{} at {}", system.name(), ByteSize::b(size)))?;
                results.add(*system, size, concurrency, put, get);
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();
    drop(servers);
    results.print(&args.sizes, &args.concurrency);
    if let Some(path) = &args.json {
        results.write(path, args.reps)?;
        println!(
            "wrote {} and {}",
            path.display(),
            crate::plot::png_beside(path).display()
        );
    }
    Ok(())
}

fn validate(args: &IoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    anyhow::ensure!(
        !args.concurrency.is_empty() && !args.concurrency.contains(&0),
        "--concurrency values must be positive"
    );
    for size in &args.sizes {
        let tokens = size.as_u64() / token_bytes() as u64;
        anyhow::ensure!(
            tokens > 0 && tokens * token_bytes() as u64 == size.as_u64(),
            "block size {size} is not a multiple of 4 KiB"
        );
    }
    Ok(())
}

fn token_bytes() -> usize {
    SHAPE.raw_bytes()
}

async fn start_servers(
    args: &IoArgs,
) -> anyhow::Result<(Vec<ServerProcess>, Vec<(System, String)>)> {
    let mut servers = Vec::new();
    let mut systems = Vec::new();
    let kvtier_addr = match &args.server {
        Some(addr) => addr.clone(),
        None => {
            let capacity = ByteSize::gib(4);
            servers.push(servers::start_own(ServeKind::Kvtierd, capacity).await?);
            servers[servers.len() - 1].addr.clone()
        }
    };
    systems.push((System::Kvtier, kvtier_addr));
    if args.cluster {
        let members = servers::start_cluster(ByteSize::gib(2)).await?;
        systems.push((System::Cluster, members[0].addr.clone()));
        servers.extend(members);
    }
    if !args.no_redis {
        let redis = servers::start_redis(&args.redis_server).await?;
        systems.push((System::Redis, redis.addr.clone()));
        servers.push(redis);
    }
    let sink = servers::start_own(ServeKind::Sink, ByteSize::b(0)).await?;
    systems.push((System::Tcp, sink.addr.clone()));
    servers.push(sink);
    Ok((servers, systems))
}

fn progress(total: usize) -> anyhow::Result<ProgressBar> {
    let style = ProgressStyle::with_template(
        "{bar:30} {pos}/{len} measurements, {elapsed} elapsed, eta {eta} {msg}",
    )
    .context("progress template")?;
    Ok(ProgressBar::new(total as u64).with_style(style))
}

fn ops(args: &IoArgs, size: u64, concurrency: usize) -> u64 {
    (args.bytes_per_phase.as_u64() / size)
        .max(args.min_ops)
        .max(4 * concurrency as u64)
}

/// Random (incompressible) payloads of `size` bytes, encoded as kvtier blocks.
fn values(size: u64, seed: u64) -> anyhow::Result<Vec<Bytes>> {
    let shape = shape(size);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let fingerprint = fingerprint(size);
    (0..VALUES_PER_SIZE)
        .map(|_| {
            let mut raw = vec![0u8; size as usize];
            rng.fill_bytes(&mut raw);
            Ok(Bytes::from(encode_block(&fingerprint, &shape, &raw)?))
        })
        .collect()
}

fn shape(size: u64) -> BlockShape {
    BlockShape {
        block_tokens: (size / token_bytes() as u64) as u32,
        ..SHAPE
    }
}

fn fingerprint(size: u64) -> [u8; 32] {
    let mut fingerprint = [0x6b; 32];
    fingerprint[..8].copy_from_slice(&size.to_le_bytes());
    fingerprint
}

fn namespace(size: u64) -> Namespace {
    Namespace {
        tenant: "kvtier-bench-io".to_string(),
        fingerprint: fingerprint(size),
        shape: shape(size),
    }
}

/// Puts and gets one workload on fresh connections, then empties the system.
async fn measure_cell(
    endpoint: &Endpoint,
    concurrency: usize,
    workload: &Workload,
) -> anyhow::Result<(Figures, Figures)> {
    let conns = measure::connect(endpoint, concurrency).await?;
    let (put, get, mut conns) = measure::put_then_get(conns, workload).await?;
    conns[0].clear(workload.run, workload.ops).await?;
    Ok((put, get))
}
