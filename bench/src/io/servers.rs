//! The three servers of the io benchmark, each its own process on a loopback port:
//! kvtierd and the TCP sink are this binary run with the hidden `io-server` subcommand, and
//! Redis is the system's `redis-server`. Each stops when its handle is dropped.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytesize::ByteSize;
use clap::{Args, ValueEnum};
use std::io::Read;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{resp, sink};

/// What `kvtier-bench io-server` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServeKind {
    /// kvtierd's server with an in-memory store.
    Kvtierd,
    /// The loopback ceiling: stores and returns bytes over plain TCP.
    Sink,
    /// A kvtierd cluster member with an in-memory store (prints its data and cluster
    /// addresses).
    Member,
}

/// Arguments of the hidden `io-server` subcommand that the io benchmark starts.
#[derive(Debug, Args)]
pub struct ServeArgs {
    kind: ServeKind,
    /// Capacity of kvtierd's dram tier.
    #[arg(long, default_value = "4GiB")]
    capacity: ByteSize,
    /// For a member: the cluster address of a member to join; none forms a cluster.
    #[arg(long)]
    join: Option<String>,
}

/// Serves on a free loopback port, prints the address on stdout and stops when stdin
/// closes (the parent exited or dropped its handle).
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let stop = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut byte = [0u8; 1];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut byte), Ok(n) if n > 0) {}
        })
        .await;
    };
    let mut config = kvtier_store::Config {
        listen: "127.0.0.1:0".parse()?,
        dram_capacity: args.capacity,
        durability: kvtier_store::Durability::None,
        ..Default::default()
    };
    match args.kind {
        ServeKind::Member => {
            config.cluster.listen = "127.0.0.1:0".parse()?;
            config.cluster.join = args.join;
            config.validate()?;
            member(config, stop).await?;
        }
        ServeKind::Kvtierd => {
            config.validate()?;
            let server = kvtier_store::server::spawn(config).await?;
            println!("{}", server.addr);
            stop.await;
            server.shutdown().await?;
        }
        ServeKind::Sink => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("{}", listener.local_addr()?);
            tokio::select! {
                result = sink::serve(listener) => result?,
                () = stop => {}
            }
        }
    }
    Ok(())
}

/// Serves a cluster member until `stop` resolves.
async fn member(
    config: kvtier_store::Config,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use kvtier_store::server::{serve_routed, Routing};
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let data_addr = listener.local_addr()?;
    let store = std::sync::Arc::new(kvtier_store::Store::open(&config)?);
    let membership = kvtier_store::cluster::join(&config, data_addr).await?;
    println!("{data_addr} {}", membership.node.cluster_addr());
    let limit = config.max_message_bytes.as_u64() as usize;
    let routing = Routing::new(membership.node.handle(), limit);
    serve_routed(listener, store, routing, &config, stop).await?;
    membership.node.shutdown().await;
    Ok(())
}

/// A server process; killed when dropped.
pub struct ServerProcess {
    pub name: &'static str,
    pub addr: String,
    _child: Child,
}

/// Starts this binary's `io-server KIND` and waits for the address it prints.
pub async fn start_own(kind: ServeKind, capacity: ByteSize) -> anyhow::Result<ServerProcess> {
    start_process(kind, capacity, &[]).await
}

/// A three-member kvtierd cluster (two replicas of every block); the first member's data
/// address is where clients start.
pub async fn start_cluster(capacity: ByteSize) -> anyhow::Result<Vec<ServerProcess>> {
    let first = start_process(ServeKind::Member, capacity, &[]).await?;
    let (data, cluster) = first
        .addr
        .split_once(' ')
        .map(|(d, c)| (d.to_string(), c.to_string()))
        .context("a member printed no cluster address")?;
    let mut members = vec![ServerProcess {
        addr: data,
        ..first
    }];
    for _ in 0..2 {
        let joined = start_process(ServeKind::Member, capacity, &["--join", &cluster]).await?;
        let data = joined
            .addr
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        members.push(ServerProcess {
            addr: data,
            ..joined
        });
    }
    Ok(members)
}

async fn start_process(
    kind: ServeKind,
    capacity: ByteSize,
    extra: &[&str],
) -> anyhow::Result<ServerProcess> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let name = match kind {
        ServeKind::Kvtierd => "kvtierd",
        ServeKind::Sink => "tcp sink",
        ServeKind::Member => "kvtierd cluster member",
    };
    let kind_arg = kind
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let mut command = Command::new(exe);
    if kind == ServeKind::Member {
        // Elections and joins are expected here; the benchmark's output is the tables.
        command.env("RUST_LOG", "warn,openraft=error");
    }
    let mut child = command
        .args(["io-server", &kind_arg, "--capacity", &capacity.to_string()])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the {name} process"))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
        .await
        .with_context(|| format!("{name} did not report its address in 30 s"))??;
    anyhow::ensure!(!line.trim().is_empty(), "{name} exited before listening");
    Ok(ServerProcess {
        name,
        addr: line.trim().to_string(),
        _child: child,
    })
}

/// Starts `redis-server` on a free loopback port without persistence and waits until it
/// answers PING.
pub async fn start_redis(binary: &str) -> anyhow::Result<ServerProcess> {
    let port = free_port()?;
    let child = Command::new(binary)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .args(["--daemonize", "no", "--loglevel", "warning"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!("cannot run {binary}; install redis-server (scripts/setup.sh does)")
        })?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut conn) = resp::RespConn::connect(&addr).await {
            if conn.ping().await.is_ok() {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "redis-server did not answer on {addr} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(ServerProcess {
        name: "redis-server",
        addr,
        _child: child,
    })
}

/// A loopback port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
