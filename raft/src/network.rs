//! The Raft network, client side: one lazily connected tonic channel per peer, each RPC's
//! openraft structure sent as JSON inside a protobuf message.
//!
//! A transport failure is reported to openraft as `Unreachable`, so it backs off instead
//! of spinning; an error the peer's Raft returned comes back as a `RemoteError`.

use std::time::Duration;

use kvtier_proto::cluster::cluster_client::ClusterClient;
use kvtier_proto::cluster::RaftPayload;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::types::{Member, NodeId, TypeConfig};

/// Opens one channel per peer; shares the message limit of the cluster service.
pub struct Network {
    pub(crate) max_message_bytes: usize,
}

/// A client of one peer's cluster service.
pub struct Peer {
    target: NodeId,
    client: Option<ClusterClient<Channel>>,
    addr: String,
}

/// A channel to `addr` that connects on first use, with the cluster message limit.
pub(crate) fn connect_lazy(
    addr: &str,
    max_message_bytes: usize,
) -> Result<ClusterClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(ClusterClient::new(channel)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes))
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        let client = match connect_lazy(&node.cluster_addr, self.max_message_bytes) {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::warn!(target, addr = %node.cluster_addr, %error, "bad peer address");
                None
            }
        };
        Peer {
            target,
            client,
            addr: node.cluster_addr.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transport(String);

type Rpc<E> = RPCError<NodeId, Member, E>;

impl Peer {
    /// Sends `request` with `call` and decodes the peer's `Result<R, E>`.
    async fn send<Q, R, E, F, Fut>(
        &mut self,
        request: &Q,
        ttl: Duration,
        call: F,
    ) -> Result<R, Rpc<E>>
    where
        Q: Serialize,
        R: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
        F: FnOnce(ClusterClient<Channel>, tonic::Request<RaftPayload>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let Some(client) = self.client.clone() else {
            let error = Transport(format!("no channel to {}", self.addr));
            return Err(RPCError::Unreachable(Unreachable::new(&error)));
        };
        let payload =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut message = tonic::Request::new(RaftPayload {
            payload: payload.into(),
        });
        message.set_timeout(ttl);
        let response = call(client, message).await.map_err(|status| {
            let error = Transport(format!("{}: {}", self.addr, status.message()));
            RPCError::Unreachable(Unreachable::new(&error))
        })?;
        let decoded: Result<R, E> = serde_json::from_slice(&response.into_inner().payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, Rpc<openraft::error::RaftError<NodeId>>> {
        self.send(&rpc, option.hard_ttl(), |mut c, m| async move {
            c.append_entries(m).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        Rpc<openraft::error::RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(&rpc, option.hard_ttl(), |mut c, m| async move {
            c.install_snapshot(m).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, Rpc<openraft::error::RaftError<NodeId>>> {
        self.send(&rpc, option.hard_ttl(), |mut c, m| async move {
            c.vote(m).await
        })
        .await
    }
}
