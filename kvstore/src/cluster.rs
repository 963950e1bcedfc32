//! kvtierd's cluster settings, the `[cluster]` table of the config file.
//!
//! With no `join` a node forms a group of its own on first start, so a lone kvtierd is a
//! complete one-node cluster. The settings only matter on a node's first start: a restart
//! finds its id, its group and the partition table in the data directory.

use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use kvtier_raft::{ClusterConfig, ClusterNode, RaftError};
use serde::{Deserialize, Serialize};

use crate::{Config, ConfigError};

/// Largest partition count of a table.
pub const MAX_PARTITIONS: u32 = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Address of the cluster-internal service (Raft and membership); peers and kvtierctl
    /// use it, inference clients never do. Default `127.0.0.1:50061`; port 0 picks one.
    pub listen: SocketAddr,
    /// Cluster address of a member to join on first start. Default none: form a new group.
    pub join: Option<String>,
    /// Node id to take on first start; positive. Default none: a random id. The id is
    /// stored in the data directory and kept across restarts.
    pub node_id: Option<u64>,
    /// Partitions of a new group's table. Default 64; 1 to 4096.
    pub partitions: u32,
    /// Replicas of each partition in a new group; capped by the node count. Default 2;
    /// 1 to 16.
    pub replication: u32,
    /// Raft heartbeat interval. Default 250ms; 10ms to 10s, under `election_timeout`.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Raft election timeout, low end (the high end is twice it). Default 1s; up to 60s.
    #[serde(with = "humantime_serde")]
    pub election_timeout: Duration,
    /// Message limit of the cluster service, both directions. Default 16 MiB; 64 KiB to
    /// 1 GiB.
    pub max_message_bytes: ByteSize,
    /// How long a member may go without answering the leader before its partitions are
    /// given to the others and re-replicated from the survivors. Default 10s; 100ms to 1h,
    /// above `election_timeout`.
    #[serde(with = "humantime_serde")]
    pub down_after: Duration,
    /// How often a node looks for partitions it gained and pulls them from their previous
    /// owners. Default 200ms; 10ms to 1min.
    #[serde(with = "humantime_serde")]
    pub pull_interval: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 50061)),
            join: None,
            node_id: None,
            partitions: 64,
            replication: 2,
            heartbeat: Duration::from_millis(250),
            election_timeout: Duration::from_secs(1),
            max_message_bytes: ByteSize::mib(16),
            down_after: Duration::from_secs(10),
            pull_interval: Duration::from_millis(200),
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl ClusterSettings {
    /// Checks every bound; the error names the field, prefixed `cluster.`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == Some(0) {
            return Err(invalid("cluster.node_id", "must be positive"));
        }
        if self
            .join
            .as_deref()
            .is_some_and(|addr| addr.trim().is_empty())
        {
            return Err(invalid("cluster.join", "must not be empty"));
        }
        let join_ok = self.join.as_deref().is_none_or(|addr| {
            addr.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        });
        if !join_ok {
            return Err(invalid(
                "cluster.join",
                "must be host:port, the cluster address of a member",
            ));
        }
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(invalid("cluster.partitions", "must be 1 to 4096"));
        }
        if !(1..=16).contains(&self.replication) {
            return Err(invalid("cluster.replication", "must be 1 to 16"));
        }
        let heartbeat_ok =
            (Duration::from_millis(10)..=Duration::from_secs(10)).contains(&self.heartbeat);
        if !heartbeat_ok {
            return Err(invalid("cluster.heartbeat", "must be 10ms to 10s"));
        }
        if self.election_timeout <= self.heartbeat
            || self.election_timeout > Duration::from_secs(60)
        {
            return Err(invalid(
                "cluster.election_timeout",
                format!(
                    "{} must exceed the heartbeat ({}) and be at most 60s",
                    humantime::format_duration(self.election_timeout),
                    humantime::format_duration(self.heartbeat)
                ),
            ));
        }
        if self.down_after <= self.election_timeout || self.down_after > Duration::from_secs(3600) {
            return Err(invalid(
                "cluster.down_after",
                "must exceed election_timeout and be at most 1h",
            ));
        }
        let pull_ok =
            (Duration::from_millis(10)..=Duration::from_secs(60)).contains(&self.pull_interval);
        if !pull_ok {
            return Err(invalid("cluster.pull_interval", "must be 10ms to 1min"));
        }
        let bytes = self.max_message_bytes;
        if bytes < ByteSize::kib(64) || bytes > ByteSize::gib(1) {
            return Err(invalid(
                "cluster.max_message_bytes",
                "must be 64 KiB to 1 GiB",
            ));
        }
        Ok(())
    }
}

/// A node's running membership. Without a data directory its Raft state lives in a
/// temporary directory that goes away with it.
pub struct Membership {
    pub node: ClusterNode,
    _temp: Option<tempfile::TempDir>,
}

/// Why a node could not take its place in the cluster.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("cannot create a directory for the cluster state: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Raft(#[from] RaftError),
}

/// Forms, joins or rejoins the cluster as `config` says, for a node whose KvCache service
/// listens on `data_addr`; returns once a leader is known.
pub async fn join(config: &Config, data_addr: SocketAddr) -> Result<Membership, MembershipError> {
    let (dir, temp) = match &config.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("kvtierd-cluster")
                .tempdir()
                .map_err(MembershipError::TempDir)?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let settings = &config.cluster;
    let cluster_config = ClusterConfig {
        dir,
        node_id: settings.node_id,
        data_addr: data_addr.to_string(),
        cluster_listen: settings.listen,
        join: settings.join.clone(),
        partitions: settings.partitions,
        replication: settings.replication,
        heartbeat: settings.heartbeat,
        election_timeout: settings.election_timeout,
        max_message_bytes: settings.max_message_bytes.as_u64() as usize,
        down_after: settings.down_after,
    };
    let node = ClusterNode::start(cluster_config).await?;
    tracing::info!(node_id = node.id(), cluster_addr = %node.cluster_addr(), "cluster member");
    Ok(Membership { node, _temp: temp })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(settings: &ClusterSettings) -> &'static str {
        match settings.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn default_cluster_settings_are_valid() {
        ClusterSettings::default().validate().unwrap();
    }

    #[test]
    fn out_of_range_cluster_settings_name_their_field() {
        let base = ClusterSettings::default();
        let zero_id = ClusterSettings {
            node_id: Some(0),
            ..base.clone()
        };
        assert_eq!(field_of(&zero_id), "cluster.node_id");
        let slow_heartbeat = ClusterSettings {
            heartbeat: Duration::from_secs(2),
            ..base.clone()
        };
        assert_eq!(field_of(&slow_heartbeat), "cluster.election_timeout");
        let no_partitions = ClusterSettings {
            partitions: 0,
            ..base.clone()
        };
        assert_eq!(field_of(&no_partitions), "cluster.partitions");
        let portless_join = ClusterSettings {
            join: Some("127.0.0.1".into()),
            ..base
        };
        assert_eq!(field_of(&portless_join), "cluster.join");
    }

    #[test]
    fn durations_read_with_units() {
        let settings: ClusterSettings =
            toml::from_str("heartbeat = \"50ms\"\nelection_timeout = \"300ms\"").unwrap();
        assert_eq!(settings.heartbeat, Duration::from_millis(50));
        assert_eq!(settings.election_timeout, Duration::from_millis(300));
    }
}
