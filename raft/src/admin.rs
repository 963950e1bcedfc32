//! Membership changes and status, run on the leader.
//!
//! Every change is checked against a copy of the current map first, so a malformed or
//! stale request is refused with a reason naming the field before anything is written.
//! A join adds the node as a learner, promotes it to voter once it has caught up, then
//! records it in the map; removal drains the node's partitions, and waits until their new
//! owners have pulled them, before it leaves the group.

use std::collections::BTreeSet;
use std::time::Duration;

use kvtier_proto::cluster::LeaveRequest;
use openraft::ChangeMembers;

use crate::map::{ClusterMap, Command, Outcome};
use crate::store::SharedMap;
use crate::types::{Member, NodeId, Raft};

/// Why a membership request was not done.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request does not fit the cluster; the reason starts with the field's name.
    #[error("{reason}")]
    Invalid { reason: String },
    /// This node is not the leader; `leader` is the leader's cluster address when known.
    #[error("not the leader")]
    NotLeader { leader: Option<String> },
    #[error("raft: {0}")]
    Raft(String),
}

/// Message limit of a Leave call, which carries only a node id each way.
const LEAVE_MESSAGE_BYTES: usize = 64 << 10;

/// How long a removal waits for the node's partitions to be pulled by their new owners.
const MOVE_WAIT: Duration = Duration::from_secs(60);

fn raft_error(error: impl std::fmt::Display) -> AdminError {
    AdminError::Raft(error.to_string())
}

/// The leader-side half of the cluster service.
#[derive(Clone)]
pub struct Admin {
    pub(crate) raft: Raft,
    pub(crate) map: SharedMap,
    pub(crate) id: NodeId,
}

impl Admin {
    /// A copy of the map as this node last applied it.
    pub fn map(&self) -> ClusterMap {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `Ok` when this node leads; otherwise the leader's cluster address, if known.
    pub fn leader_check(&self) -> Result<(), AdminError> {
        let metrics = self.raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(leader) if leader == self.id => Ok(()),
            Some(leader) => {
                let node = metrics
                    .membership_config
                    .membership()
                    .get_node(&leader)
                    .cloned();
                Err(AdminError::NotLeader {
                    leader: node.map(|m| m.cluster_addr),
                })
            }
            None => Err(AdminError::NotLeader { leader: None }),
        }
    }

    fn dry_run(&self, command: &Command) -> Result<(), AdminError> {
        match self.map().apply(command) {
            Outcome::Applied => Ok(()),
            Outcome::Refused { reason } => Err(AdminError::Invalid { reason }),
        }
    }

    /// Writes `command` through the log; a refusal there (a race with another change) is
    /// reported like a refused dry run.
    pub async fn write(&self, command: Command) -> Result<(), AdminError> {
        let response = self.raft.client_write(command).await.map_err(raft_error)?;
        match response.data {
            Outcome::Applied => Ok(()),
            Outcome::Refused { reason } => Err(AdminError::Invalid { reason }),
        }
    }

    /// Adds `id` at `member` to the group and the partition table.
    pub async fn join(&self, id: NodeId, member: Member) -> Result<(), AdminError> {
        self.leader_check()?;
        let command = Command::AddMember {
            id,
            member: member.clone(),
        };
        self.dry_run(&command)?;
        let voters: BTreeSet<NodeId> = self.voters();
        if !voters.contains(&id) {
            self.raft
                .add_learner(id, member, true)
                .await
                .map_err(raft_error)?;
            let promote = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
            self.raft
                .change_membership(promote, false)
                .await
                .map_err(raft_error)?;
        }
        self.write(command).await
    }

    /// Moves every partition off `id`.
    pub async fn drain(&self, id: NodeId) -> Result<(), AdminError> {
        self.leader_check()?;
        let command = Command::Drain { id };
        self.dry_run(&command)?;
        self.write(command).await
    }

    /// Drains `id` if needed, takes it out of the group, then out of the map.
    pub async fn remove(&self, id: NodeId) -> Result<(), AdminError> {
        self.leader_check()?;
        let drained = self.map().members.get(&id).map(|m| m.draining);
        match drained {
            None => {
                return Err(AdminError::Invalid {
                    reason: format!("node_id: node {id} is not a member"),
                })
            }
            Some(false) => self.drain(id).await?,
            Some(true) => {}
        }
        self.wait_until_pulled_from(id).await?;
        let cluster_addr = self
            .map()
            .members
            .get(&id)
            .map(|m| m.member.cluster_addr.clone());
        if self.voters().contains(&id) {
            let remove = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
            self.raft
                .change_membership(remove, false)
                .await
                .map_err(raft_error)?;
        }
        self.write(Command::RemoveMember { id }).await?;
        if let Some(addr) = cluster_addr {
            self.tell_to_leave(id, &addr).await;
        }
        Ok(())
    }

    /// Tells a removed node to stop taking part in Raft, where it still answers: a removed
    /// voter that kept running would time out and call elections the others must refuse.
    async fn tell_to_leave(&self, id: NodeId, addr: &str) {
        let Ok(mut node) = crate::network::connect_lazy(addr, LEAVE_MESSAGE_BYTES) else {
            return;
        };
        let leave = node.leave(LeaveRequest { node_id: id });
        match tokio::time::timeout(Duration::from_secs(2), leave).await {
            Ok(Ok(_)) => tracing::info!(node_id = id, "removed node left Raft"),
            Ok(Err(status)) => tracing::warn!(
                node_id = id,
                message = status.message(),
                "removed node did not leave"
            ),
            Err(_) => tracing::warn!(node_id = id, "removed node did not answer"),
        }
    }

    /// Records that `id` has pulled `partitions` from their previous owners.
    pub async fn moved(&self, id: NodeId, partitions: Vec<u32>) -> Result<(), AdminError> {
        self.leader_check()?;
        self.write(Command::Moved { id, partitions }).await
    }

    /// Waits until no partition is still being pulled from `id`, so that removing it loses
    /// no block.
    async fn wait_until_pulled_from(&self, id: NodeId) -> Result<(), AdminError> {
        let deadline = tokio::time::Instant::now() + MOVE_WAIT;
        while self.map().is_move_source(id) {
            if tokio::time::Instant::now() >= deadline {
                return Err(AdminError::Raft(format!(
                    "node {id}: its partitions are still being pulled after {MOVE_WAIT:?}; \
                     try again"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn voters(&self) -> BTreeSet<NodeId> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.membership_config.membership().voter_ids().collect()
    }
}
