//! Starting a node: its identity, its Raft, its cluster service, and forming or joining a
//! group.
//!
//! Start-up phases: read or create the node id, open the database, start Raft, serve the
//! cluster service, then either initialize a one-node group (first start, no `join`),
//! join through `join` (first start), or do nothing (a restart: the log knows the group).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kvtier_proto::cluster::{JoinRequest, MovedRequest};
use openraft::ServerState;
use tokio::task::JoinHandle;

use crate::admin::{Admin, AdminError};
use crate::error::RaftError;
use crate::map::{ClusterMap, Command};
use crate::network::{connect_lazy, Network};
use crate::service::ClusterService;
use crate::types::{Member, NodeId, Raft};

/// How a node takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Directory of the node id file and the raft database.
    pub dir: PathBuf,
    /// Node id to use on first start; `None` draws one. A restart keeps the stored id.
    pub node_id: Option<NodeId>,
    /// Address clients reach this node's KvCache service at.
    pub data_addr: String,
    /// Where the cluster service listens; it is also the address peers are given.
    pub cluster_listen: SocketAddr,
    /// Cluster address of any member to join on first start; `None` forms a new group.
    pub join: Option<String>,
    /// Partitions of a new group's table.
    pub partitions: u32,
    /// Replicas per partition of a new group.
    pub replication: u32,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Raft election timeout, the low end; the high end is twice it.
    pub election_timeout: Duration,
    /// Message limit of the cluster service, both directions.
    pub max_message_bytes: usize,
    /// How long a member may go without answering the leader before its partitions are
    /// given to the others.
    pub down_after: Duration,
}

/// A running member of the cluster.
pub struct ClusterNode {
    admin: Arc<Admin>,
    cluster_addr: SocketAddr,
    server: JoinHandle<()>,
    watchdog: JoinHandle<()>,
    max_message_bytes: usize,
}

/// What the data plane needs of its node's membership: the map as last applied, and a way
/// to report finished partition moves to the leader. Cloning is cheap.
#[derive(Clone)]
pub struct ClusterHandle {
    admin: Arc<Admin>,
    max_message_bytes: usize,
}

impl ClusterHandle {
    pub fn id(&self) -> NodeId {
        self.admin.id
    }

    /// Runs `f` on the map under its read lock; keep `f` short.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterMap) -> R) -> R {
        let map = self.admin.map.read().unwrap_or_else(|p| p.into_inner());
        f(&map)
    }

    /// Tells the leader that this node has pulled `partitions` from their previous owners.
    pub async fn report_moved(&self, partitions: Vec<u32>) -> Result<(), AdminError> {
        let id = self.admin.id;
        match self.admin.leader_check() {
            Ok(()) => self.admin.moved(id, partitions).await,
            Err(AdminError::NotLeader { leader: Some(addr) }) => {
                let mut leader = connect_lazy(&addr, self.max_message_bytes)
                    .map_err(|e| AdminError::Raft(e.to_string()))?;
                let request = MovedRequest {
                    node_id: id,
                    partitions,
                };
                leader
                    .moved(request)
                    .await
                    .map(|_| ())
                    .map_err(|status| AdminError::Raft(status.message().to_string()))
            }
            Err(error) => Err(error),
        }
    }
}

const NODE_ID_FILE: &str = "node_id";
/// Left in the directory of a node the cluster removed; such a node does not start again.
const REMOVED_FILE: &str = "removed";

pub(crate) fn removed_marker(dir: &Path) -> PathBuf {
    dir.join(REMOVED_FILE)
}

/// The stored node id, or `wanted` (else a random one) written on first start.
fn node_id(dir: &Path, wanted: Option<NodeId>) -> Result<NodeId, RaftError> {
    let path = dir.join(NODE_ID_FILE);
    let io = |source| RaftError::NodeId {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<NodeId>() {
            Ok(id) if id > 0 => Ok(id),
            _ => Err(RaftError::NodeIdParse {
                path: path.clone(),
                found: text,
            }),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = wanted.unwrap_or_else(|| rand::random_range(1..=u32::MAX as u64));
            std::fs::create_dir_all(dir).map_err(io)?;
            let temp = dir.join("node_id.tmp");
            std::fs::write(&temp, format!("{id}\n")).map_err(io)?;
            std::fs::rename(&temp, &path).map_err(io)?;
            Ok(id)
        }
        Err(error) => Err(io(error)),
    }
}

fn raft_config(config: &ClusterConfig) -> Result<openraft::Config, RaftError> {
    let election = config.election_timeout.as_millis() as u64;
    let raft = openraft::Config {
        cluster_name: "kvtier".into(),
        heartbeat_interval: config.heartbeat.as_millis() as u64,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        ..Default::default()
    };
    raft.validate().map_err(RaftError::raft)
}

impl ClusterNode {
    /// Starts the node; returns once it is a member of a group with a known leader.
    pub async fn start(config: ClusterConfig) -> Result<Self, RaftError> {
        let marker = removed_marker(&config.dir);
        if marker.exists() {
            return Err(RaftError::Removed { marker });
        }
        let id = node_id(&config.dir, config.node_id)?;
        let (log, machine) = crate::store::open(&config.dir.join("raft"))?;
        let map = machine.map();
        let network = Network {
            max_message_bytes: config.max_message_bytes,
        };
        let raft = Raft::new(id, Arc::new(raft_config(&config)?), network, log, machine)
            .await
            .map_err(RaftError::raft)?;
        let admin = Arc::new(Admin { raft, map, id });

        let listener = tokio::net::TcpListener::bind(config.cluster_listen)
            .await
            .map_err(|source| RaftError::Listen {
                addr: config.cluster_listen.to_string(),
                source,
            })?;
        let cluster_addr = listener.local_addr().map_err(|source| RaftError::Listen {
            addr: config.cluster_listen.to_string(),
            source,
        })?;
        let service = ClusterService {
            admin: admin.clone(),
            max_message_bytes: config.max_message_bytes,
            dir: config.dir.clone(),
        };
        let server = tokio::spawn(serve(service, listener));
        let watchdog = tokio::spawn(crate::watchdog::run(
            admin.clone(),
            config.down_after,
            config.max_message_bytes,
        ));
        let node = ClusterNode {
            admin,
            cluster_addr,
            server,
            watchdog,
            max_message_bytes: config.max_message_bytes,
        };
        let member = Member {
            data_addr: config.data_addr.clone(),
            cluster_addr: cluster_addr.to_string(),
        };
        node.enter_group(&config, member).await?;
        Ok(node)
    }

    async fn enter_group(&self, config: &ClusterConfig, member: Member) -> Result<(), RaftError> {
        let raft = &self.admin.raft;
        let initialized = raft.is_initialized().await.map_err(RaftError::raft)?;
        match (&config.join, initialized) {
            (_, true) => tracing::info!(node_id = self.admin.id, "cluster state recovered"),
            (None, false) => self.form(config, member).await?,
            (Some(addr), false) => self.join(addr, config.max_message_bytes, member).await?,
        }
        self.wait_for_leader(Duration::from_secs(30)).await
    }

    /// Initializes a one-node group and sets up its partition table.
    async fn form(&self, config: &ClusterConfig, member: Member) -> Result<(), RaftError> {
        let id = self.admin.id;
        let raft = &self.admin.raft;
        raft.initialize(BTreeMap::from([(id, member.clone())]))
            .await
            .map_err(RaftError::raft)?;
        raft.wait(Some(Duration::from_secs(30)))
            .state(ServerState::Leader, "one-node group elects itself")
            .await
            .map_err(RaftError::raft)?;
        let bootstrap = Command::Bootstrap {
            partitions: config.partitions,
            replication: config.replication,
        };
        self.admin.write(bootstrap).await.map_err(RaftError::raft)?;
        let add = Command::AddMember { id, member };
        self.admin.write(add).await.map_err(RaftError::raft)?;
        tracing::info!(
            node_id = id,
            partitions = config.partitions,
            "cluster formed"
        );
        Ok(())
    }

    /// Asks `addr` to add this node; retries anything but a refusal until a deadline (the
    /// group may have no leader yet, or be busy with another member's change).
    async fn join(&self, addr: &str, limit: usize, member: Member) -> Result<(), RaftError> {
        let mut client = connect_lazy(addr, limit).map_err(|e| RaftError::Join {
            addr: addr.into(),
            status: tonic::Status::invalid_argument(e.to_string()),
        })?;
        let request = JoinRequest {
            node_id: self.admin.id,
            data_addr: member.data_addr,
            cluster_addr: member.cluster_addr,
        };
        let patience = Duration::from_secs(30);
        let deadline = tokio::time::Instant::now() + patience;
        let mut warned = false;
        loop {
            match client.join(request.clone()).await {
                Ok(_) => break,
                Err(status)
                    if status.code() != tonic::Code::InvalidArgument
                        && tokio::time::Instant::now() < deadline =>
                {
                    if warned {
                        tracing::debug!(%addr, message = status.message(), "join: retrying");
                    } else {
                        // Say once why start-up is waiting, instead of a silent pause.
                        tracing::warn!(
                            %addr,
                            message = status.message(),
                            retrying_for = ?patience,
                            "join: the member did not accept yet; retrying"
                        );
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => {
                    return Err(RaftError::Join {
                        addr: addr.into(),
                        status,
                    })
                }
            }
        }
        tracing::info!(node_id = self.admin.id, %addr, "joined cluster");
        Ok(())
    }

    async fn wait_for_leader(&self, timeout: Duration) -> Result<(), RaftError> {
        self.admin
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map(|_| ())
            .map_err(RaftError::raft)
    }

    pub fn id(&self) -> NodeId {
        self.admin.id
    }

    /// The address the cluster service is bound to.
    pub fn cluster_addr(&self) -> SocketAddr {
        self.cluster_addr
    }

    /// The cluster map as this node last applied it.
    pub fn map(&self) -> ClusterMap {
        self.admin.map()
    }

    /// A handle on the map and on move reports for the data plane.
    pub fn handle(&self) -> ClusterHandle {
        ClusterHandle {
            admin: self.admin.clone(),
            max_message_bytes: self.max_message_bytes,
        }
    }

    /// Stops Raft and the cluster service.
    pub async fn shutdown(self) {
        if let Err(error) = self.admin.raft.shutdown().await {
            tracing::warn!(%error, "raft did not stop cleanly");
        }
        self.server.abort();
        self.watchdog.abort();
    }
}

async fn serve(service: ClusterService, listener: tokio::net::TcpListener) {
    // Accepted sockets of a caller-bound listener need TCP_NODELAY set here: Raft's small
    // messages would otherwise wait out the peer's delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming(incoming)
        .await;
    if let Err(error) = served {
        tracing::warn!(%error, "cluster service stopped");
    }
}
