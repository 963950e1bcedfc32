//! The cluster service, server side: Raft RPCs into the local Raft, membership calls
//! answered by the leader (a follower forwards them once), and status from any node.
//!
//! Everything a peer sends is decoded with errors, never unwrapped: a payload that does
//! not decode is InvalidArgument naming the field.

use std::path::PathBuf;
use std::sync::Arc;

use kvtier_proto::cluster::cluster_server::{Cluster, ClusterServer};
use kvtier_proto::cluster::{
    JoinRequest, JoinResponse, LeaveRequest, LeaveResponse, MemberStatus, MovedRequest,
    MovedResponse, NodeRequest, NodeResponse, RaftPayload, StatusRequest, StatusResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::admin::{Admin, AdminError};
use crate::network::connect_lazy;
use crate::types::{Member, Raft};

/// Set on a request a follower forwards to the leader, so it is forwarded only once.
const FORWARDED: &str = "kvtier-forwarded";

pub(crate) struct ClusterService {
    pub(crate) admin: Arc<Admin>,
    pub(crate) max_message_bytes: usize,
    /// The node's directory, where a removal leaves its marker.
    pub(crate) dir: PathBuf,
}

impl ClusterService {
    pub(crate) fn into_server(self) -> ClusterServer<Self> {
        let limit = self.max_message_bytes;
        ClusterServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    fn raft(&self) -> &Raft {
        &self.admin.raft
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&request.into_inner().payload)
        .map_err(|e| Status::invalid_argument(format!("payload: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let payload = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload {
        payload: payload.into(),
    }))
}

/// The one mapping from membership errors to gRPC status.
fn to_status(error: AdminError) -> Status {
    match error {
        AdminError::Invalid { reason } => Status::invalid_argument(reason),
        AdminError::NotLeader { leader: Some(addr) } => {
            Status::unavailable(format!("not the leader; the leader is at {addr}"))
        }
        AdminError::NotLeader { leader: None } => Status::unavailable("no leader is known yet"),
        AdminError::Raft(message) => Status::unavailable(message),
    }
}

/// The leader's address when this node is not it and the request may still be forwarded.
fn forward_to<T>(admin: &Admin, request: &Request<T>) -> Result<Option<String>, Status> {
    match admin.leader_check() {
        Ok(()) => Ok(None),
        Err(AdminError::NotLeader { leader: Some(addr) })
            if request.metadata().get(FORWARDED).is_none() =>
        {
            Ok(Some(addr))
        }
        Err(error) => Err(to_status(error)),
    }
}

fn forwarded<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        encode(&self.raft().append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        encode(&self.raft().vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        encode(&self.raft().install_snapshot(rpc).await)
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        if let Some(addr) = forward_to(&self.admin, &request)? {
            let mut leader = connect_lazy(&addr, self.max_message_bytes)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            return leader.join(forwarded(request.into_inner())).await;
        }
        let join = request.into_inner();
        let member = Member {
            data_addr: join.data_addr,
            cluster_addr: join.cluster_addr,
        };
        if join.node_id == 0 {
            return Err(Status::invalid_argument(
                "node_id: 0 is not a valid node id",
            ));
        }
        self.admin
            .join(join.node_id, member)
            .await
            .map_err(to_status)?;
        Ok(Response::new(JoinResponse {}))
    }

    async fn drain(&self, request: Request<NodeRequest>) -> Result<Response<NodeResponse>, Status> {
        if let Some(addr) = forward_to(&self.admin, &request)? {
            let mut leader = connect_lazy(&addr, self.max_message_bytes)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            return leader.drain(forwarded(request.into_inner())).await;
        }
        let id = request.into_inner().node_id;
        self.admin.drain(id).await.map_err(to_status)?;
        Ok(Response::new(NodeResponse {}))
    }

    async fn remove_node(
        &self,
        request: Request<NodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        if let Some(addr) = forward_to(&self.admin, &request)? {
            let mut leader = connect_lazy(&addr, self.max_message_bytes)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            return leader.remove_node(forwarded(request.into_inner())).await;
        }
        let id = request.into_inner().node_id;
        self.admin.remove(id).await.map_err(to_status)?;
        Ok(Response::new(NodeResponse {}))
    }

    async fn moved(
        &self,
        request: Request<MovedRequest>,
    ) -> Result<Response<MovedResponse>, Status> {
        if let Some(addr) = forward_to(&self.admin, &request)? {
            let mut leader = connect_lazy(&addr, self.max_message_bytes)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            return leader.moved(forwarded(request.into_inner())).await;
        }
        let moved = request.into_inner();
        self.admin
            .moved(moved.node_id, moved.partitions)
            .await
            .map_err(to_status)?;
        Ok(Response::new(MovedResponse {}))
    }

    async fn leave(
        &self,
        request: Request<LeaveRequest>,
    ) -> Result<Response<LeaveResponse>, Status> {
        let id = request.into_inner().node_id;
        if id != self.admin.id {
            return Err(Status::invalid_argument(format!(
                "node_id: this is node {}, not {id}",
                self.admin.id
            )));
        }
        let marker = crate::node::removed_marker(&self.dir);
        std::fs::write(&marker, b"removed from the cluster\n")
            .map_err(|e| Status::internal(format!("cannot write {}: {e}", marker.display())))?;
        tracing::info!(node_id = id, "removed from the cluster; leaving Raft");
        let raft = self.admin.raft.clone();
        tokio::spawn(async move {
            if let Err(error) = raft.shutdown().await {
                tracing::warn!(%error, "raft did not stop cleanly");
            }
        });
        Ok(Response::new(LeaveResponse {}))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(status_of(&self.admin)))
    }
}

fn status_of(admin: &Admin) -> StatusResponse {
    let metrics = admin.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership().clone();
    let voters: Vec<_> = membership.voter_ids().collect();
    let map = admin.map();
    let mut members = Vec::new();
    for (id, node) in membership.nodes() {
        let entry = map.members.get(id);
        let down = entry.is_some_and(|m| m.down);
        let role = match (entry.map(|m| m.draining), voters.contains(id)) {
            (Some(true), _) => "draining",
            (_, true) => "voter",
            (_, false) => "learner",
        };
        let (partitions, primaries) = map.load_of(*id);
        members.push(MemberStatus {
            node_id: *id,
            data_addr: node.data_addr.clone(),
            cluster_addr: node.cluster_addr.clone(),
            role: role.into(),
            partitions,
            primaries,
            down,
        });
    }
    StatusResponse {
        node_id: admin.id,
        leader_id: metrics.current_leader.unwrap_or(0),
        term: metrics.current_term,
        last_applied: metrics.last_applied.map_or(0, |id| id.index),
        partition_count: map.partitions.len() as u32,
        replication_factor: map.replication,
        members,
        moving_partitions: map.moves.len() as u32,
    }
}
