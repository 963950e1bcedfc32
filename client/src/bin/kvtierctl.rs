//! kvtierctl: the kvtier operator tool.
//!
//! It talks to a node's cluster address (kvtierd's `--cluster-listen`); membership
//! requests sent to a follower are forwarded to the leader. `status` also asks every
//! member's KvCache service for its tier usage. Tables by default, `--json` for scripts.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use comfy_table::Table;
use kvtier_client::KvClient;
use kvtier_proto::cluster::cluster_client::ClusterClient;
use kvtier_proto::cluster::{JoinRequest, NodeRequest, StatusRequest, StatusResponse};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(name = "kvtierctl", version, about = "kvtier cluster administration")]
struct Args {
    /// Cluster address of any member, e.g. 127.0.0.1:50061.
    #[arg(long, env = "KVTIER_CLUSTER", default_value = "127.0.0.1:50061")]
    cluster: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Members, leader, partitions per node and bytes per tier per node.
    Status,
    /// Adds a running kvtierd to the cluster.
    AddNode {
        #[arg(long)]
        node_id: u64,
        /// Address of the node's KvCache service.
        #[arg(long)]
        data_addr: String,
        /// Address of the node's cluster service.
        #[arg(long)]
        cluster_addr: String,
    },
    /// Moves every partition off a node; it stays a member.
    Drain {
        #[arg(long)]
        node_id: u64,
    },
    /// Drains a node, then removes it from the cluster.
    RemoveNode {
        #[arg(long)]
        node_id: u64,
    },
}

/// One member as `status` reports it.
#[derive(Debug, Serialize)]
struct MemberReport {
    node_id: u64,
    leader: bool,
    role: String,
    data_addr: String,
    cluster_addr: String,
    partitions: u32,
    primaries: u32,
    /// Marked down by the leader: unreachable, its partitions given to the others.
    down: bool,
    /// Used bytes per tier; empty when the node did not answer.
    tiers: Vec<TierReport>,
    reachable: bool,
}

#[derive(Debug, Serialize)]
struct TierReport {
    tier: String,
    used_bytes: u64,
    capacity_bytes: u64,
    blocks: u64,
}

#[derive(Debug, Serialize)]
struct StatusReport {
    answered_by: u64,
    leader_id: Option<u64>,
    term: u64,
    partitions: u32,
    replication: u32,
    /// Partitions whose new owners are still pulling their blocks.
    moving_partitions: u32,
    members: Vec<MemberReport>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvtierctl: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn cluster_client(addr: &str) -> anyhow::Result<ClusterClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("bad cluster address {addr:?}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    Ok(ClusterClient::new(channel))
}

/// Prints `text` and a newline; a closed pipe (`kvtierctl status | head`) is not an error.
fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}

/// A refused request prints the server's reason, which names the field.
fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut client = cluster_client(&args.cluster)?;
    let done = match args.command {
        Action::Status => {
            let status = client
                .status(StatusRequest {})
                .await
                .map_err(refused)
                .with_context(|| format!("status from {}", args.cluster))?;
            let report = report(status.into_inner()).await;
            return print_status(&report, args.json);
        }
        Action::AddNode {
            node_id,
            data_addr,
            cluster_addr,
        } => {
            let request = JoinRequest {
                node_id,
                data_addr,
                cluster_addr,
            };
            client.join(request).await.map_err(refused)?;
            ("added", node_id)
        }
        Action::Drain { node_id } => {
            client
                .drain(NodeRequest { node_id })
                .await
                .map_err(refused)?;
            ("draining", node_id)
        }
        Action::RemoveNode { node_id } => {
            let request = NodeRequest { node_id };
            client.remove_node(request).await.map_err(refused)?;
            ("removed", node_id)
        }
    };
    let (what, node_id) = done;
    if args.json {
        out(&serde_json::json!({ "result": what, "node_id": node_id }).to_string())
    } else if what == "draining" {
        out(&format!(
            "node {node_id} draining: it owns no partitions now, and their new owners pull \
             its blocks in the background (`status` shows how many are still moving)"
        ))
    } else {
        out(&format!("node {node_id} {what}"))
    }
}

async fn report(status: StatusResponse) -> StatusReport {
    let mut members = Vec::new();
    for member in status.members {
        let tiers = tiers_of(&member.data_addr).await;
        members.push(MemberReport {
            node_id: member.node_id,
            leader: member.node_id == status.leader_id,
            role: member.role,
            data_addr: member.data_addr,
            cluster_addr: member.cluster_addr,
            partitions: member.partitions,
            primaries: member.primaries,
            down: member.down,
            reachable: tiers.is_some(),
            tiers: tiers.unwrap_or_default(),
        });
    }
    StatusReport {
        answered_by: status.node_id,
        leader_id: (status.leader_id != 0).then_some(status.leader_id),
        term: status.term,
        partitions: status.partition_count,
        replication: status.replication_factor,
        moving_partitions: status.moving_partitions,
        members,
    }
}

/// A member's tier usage, or `None` when its KvCache service does not answer in time.
async fn tiers_of(data_addr: &str) -> Option<Vec<TierReport>> {
    let client = KvClient::connect_lazy(data_addr).ok()?;
    let stats = tokio::time::timeout(Duration::from_secs(3), client.stats())
        .await
        .ok()?
        .ok()?;
    let tiers = stats
        .tiers
        .into_iter()
        .map(|t| TierReport {
            tier: t.tier,
            used_bytes: t.used_bytes,
            capacity_bytes: t.capacity_bytes,
            blocks: t.blocks,
        })
        .collect();
    Some(tiers)
}

fn print_status(report: &StatusReport, json: bool) -> anyhow::Result<()> {
    if json {
        return out(&serde_json::to_string_pretty(report)?);
    }
    let leader = report
        .leader_id
        .map_or_else(|| "none".to_string(), |id| id.to_string());
    out(&format!(
        "leader {leader}, term {}, {} partitions x {} replicas, {} moving (answered by node {})",
        report.term,
        report.partitions,
        report.replication,
        report.moving_partitions,
        report.answered_by
    ))?;
    let mut table = Table::new();
    table.set_header([
        "node",
        "role",
        "data addr",
        "cluster addr",
        "partitions",
        "primaries",
        "tiers used",
    ]);
    for member in &report.members {
        let mut role = member.role.clone();
        if member.leader {
            role.push_str(" (leader)");
        }
        if member.down {
            role.push_str(", down");
        }
        table.add_row([
            member.node_id.to_string(),
            role,
            member.data_addr.clone(),
            member.cluster_addr.clone(),
            member.partitions.to_string(),
            member.primaries.to_string(),
            tier_summary(member),
        ]);
    }
    out(&table.to_string())
}

fn tier_summary(member: &MemberReport) -> String {
    if !member.reachable {
        return "unreachable".into();
    }
    let parts: Vec<String> = member
        .tiers
        .iter()
        .map(|t| {
            let used = bytesize::ByteSize::b(t.used_bytes);
            let capacity = bytesize::ByteSize::b(t.capacity_bytes);
            format!("{} {used}/{capacity}", t.tier)
        })
        .collect();
    parts.join(", ")
}
