//! The leader's watch over the members: one that has not answered for longer than the
//! down-after time is marked down, so its partitions go to the others, who pull them from
//! the surviving replicas; a down member that answers again is marked up.
//!
//! Only the leader acts. A node that becomes leader starts every member's clock afresh,
//! so nobody is marked down for time this node could not see.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kvtier_proto::cluster::cluster_client::ClusterClient;
use kvtier_proto::cluster::StatusRequest;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::admin::Admin;
use crate::map::Command;
use crate::network::connect_lazy;
use crate::types::NodeId;

/// How often the leader probes each member.
const PROBE_EVERY: Duration = Duration::from_millis(250);

pub(crate) async fn run(admin: Arc<Admin>, down_after: Duration, max_message_bytes: usize) {
    let mut last_seen: HashMap<NodeId, Instant> = HashMap::new();
    let mut clients: HashMap<NodeId, (String, ClusterClient<Channel>)> = HashMap::new();
    let mut ticker = tokio::time::interval(PROBE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if admin.leader_check().is_err() {
            last_seen.clear();
            continue;
        }
        let map = admin.map();
        let mut probes = Vec::new();
        for (id, entry) in map.members.iter().filter(|(id, _)| **id != admin.id) {
            let addr = &entry.member.cluster_addr;
            let stale = clients.get(id).is_none_or(|(known, _)| known != addr);
            if stale {
                match connect_lazy(addr, max_message_bytes) {
                    Ok(client) => {
                        clients.insert(*id, (addr.clone(), client));
                    }
                    Err(_) => continue,
                }
            }
            let mut client = clients[id].1.clone();
            let (id, down) = (*id, entry.down);
            probes.push(async move {
                let answer = tokio::time::timeout(PROBE_EVERY * 2, client.status(StatusRequest {}));
                (id, down, matches!(answer.await, Ok(Ok(_))))
            });
        }
        let now = Instant::now();
        for (id, down, answered) in futures::future::join_all(probes).await {
            let seen = last_seen.entry(id).or_insert(now);
            let command = if answered {
                *seen = now;
                down.then_some(Command::MarkUp { id })
            } else {
                let gone = !down && now.duration_since(*seen) >= down_after;
                gone.then_some(Command::MarkDown { id })
            };
            if let Some(command) = command {
                match admin.write(command.clone()).await {
                    Ok(()) => tracing::info!(node_id = id, ?command, "member availability changed"),
                    Err(error) => tracing::warn!(node_id = id, %error, "cannot mark member"),
                }
            }
        }
    }
}
