//! The cluster map: the metadata the Raft log replicates, and the commands that change it.
//!
//! Applying a command is a pure function of the map and the command, so every node that
//! applies the same log holds the same map. A command that does not fit the map (an
//! unknown node, a stale change) is refused with a reason and changes nothing; the
//! refusal is the command's outcome, not a storage error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::placement::place;
use crate::types::{Member, NodeId};

/// Settings a namespace shares across the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceSettings {
    /// Hex of the 32-byte layout fingerprint.
    pub fingerprint: String,
    /// Codec per tier, as kvtierd names them (`keep`, `lz4`, ...).
    pub codecs: String,
    /// Copies of each block; at least 1.
    pub replication: u32,
}

/// A node as the map knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapMember {
    pub member: Member,
    /// A draining node owns no partitions and gets none.
    pub draining: bool,
    /// Unreachable past the cluster's down-after time: it owns nothing until it answers.
    #[serde(default)]
    pub down: bool,
}

/// A partition whose replica set changed while some new owners have not yet pulled its
/// blocks. Until they have, reads of its keys that miss on a new owner fall back to `from`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// Nodes that held the partition before, most recent set first.
    pub from: Vec<NodeId>,
    /// New owners still pulling.
    pub pending: Vec<NodeId>,
}

/// Members, the partition table and namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Copies of each partition the table aims for (fewer while the cluster is smaller).
    pub replication: u32,
    pub members: BTreeMap<NodeId, MapMember>,
    /// Replica set of each partition; the first node is the primary.
    pub partitions: Vec<Vec<NodeId>>,
    pub namespaces: BTreeMap<String, NamespaceSettings>,
    /// Partitions being moved, by partition.
    #[serde(default)]
    pub moves: BTreeMap<u32, Move>,
    /// Grows with every applied command, so a reader can tell that the map changed.
    #[serde(default)]
    pub epoch: u64,
}

/// A change to the map, carried in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the table's shape; only once, on a map with no partitions.
    Bootstrap { partitions: u32, replication: u32 },
    /// Adds a node and rebalances; the same node again with the same addresses is a no-op.
    AddMember { id: NodeId, member: Member },
    /// Moves every partition off a node.
    Drain { id: NodeId },
    /// Removes a drained node.
    RemoveMember { id: NodeId },
    /// Creates or replaces a namespace's settings.
    SetNamespace {
        name: String,
        settings: NamespaceSettings,
    },
    /// Takes an unreachable node's partitions away; they are re-replicated from survivors.
    MarkDown { id: NodeId },
    /// Gives a node that answers again a share of the partitions.
    MarkUp { id: NodeId },
    /// A node has pulled these partitions from their previous owners.
    Moved { id: NodeId, partitions: Vec<u32> },
}

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    #[default]
    Applied,
    /// The command did not fit the map; nothing changed.
    Refused { reason: String },
}

/// Largest partition count a table may have.
pub const MAX_PARTITIONS: u32 = 4096;

/// The partition of a key: a function of its bytes only. Keys are BLAKE3 digests, so their
/// first eight bytes are already uniform.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    let mut head = [0u8; 8];
    let n = key.len().min(8);
    head[..n].copy_from_slice(&key[..n]);
    (u64::from_le_bytes(head) % u64::from(partitions.max(1))) as u32
}

fn refused(reason: impl Into<String>) -> Outcome {
    Outcome::Refused {
        reason: reason.into(),
    }
}

impl ClusterMap {
    /// Applies `command`; a refused command leaves the map as it was.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        let outcome = self.apply_inner(command);
        if outcome == Outcome::Applied {
            self.epoch += 1;
        }
        outcome
    }

    fn apply_inner(&mut self, command: &Command) -> Outcome {
        match command {
            Command::Bootstrap {
                partitions,
                replication,
            } => self.bootstrap(*partitions, *replication),
            Command::AddMember { id, member } => self.add_member(*id, member),
            Command::Drain { id } => self.drain(*id),
            Command::RemoveMember { id } => self.remove_member(*id),
            Command::SetNamespace { name, settings } => self.set_namespace(name, settings),
            Command::MarkDown { id } => self.mark(*id, true),
            Command::MarkUp { id } => self.mark(*id, false),
            Command::Moved { id, partitions } => self.moved(*id, partitions),
        }
    }

    /// The replica set of `key`'s partition, primary first; empty before bootstrap.
    pub fn owners(&self, key: &[u8]) -> &[NodeId] {
        let count = self.partitions.len() as u32;
        if count == 0 {
            return &[];
        }
        &self.partitions[partition_of(key, count) as usize]
    }

    /// Nodes that held `key`'s partition before a move that is still going on.
    pub fn previous_owners(&self, key: &[u8]) -> &[NodeId] {
        let count = self.partitions.len() as u32;
        if count == 0 {
            return &[];
        }
        self.moves
            .get(&partition_of(key, count))
            .map_or(&[], |m| m.from.as_slice())
    }

    /// The KvCache address of a member.
    pub fn data_addr(&self, id: NodeId) -> Option<&str> {
        self.members.get(&id).map(|m| m.member.data_addr.as_str())
    }

    /// Partitions `id` still has to pull, each with the nodes to pull it from.
    pub fn pulls_for(&self, id: NodeId) -> Vec<(u32, Vec<NodeId>)> {
        self.moves
            .iter()
            .filter(|(_, m)| m.pending.contains(&id))
            .map(|(p, m)| (*p, m.from.iter().copied().filter(|n| *n != id).collect()))
            .collect()
    }

    /// True while some partition is still being pulled from `id`.
    pub fn is_move_source(&self, id: NodeId) -> bool {
        self.moves.values().any(|m| m.from.contains(&id))
    }

    /// Partitions `id` holds a replica of, and of which it is the primary.
    pub fn load_of(&self, id: NodeId) -> (u32, u32) {
        let mut replicas = 0;
        let mut primaries = 0;
        for set in &self.partitions {
            if set.contains(&id) {
                replicas += 1;
            }
            if set.first() == Some(&id) {
                primaries += 1;
            }
        }
        (replicas, primaries)
    }

    fn bootstrap(&mut self, partitions: u32, replication: u32) -> Outcome {
        if !self.partitions.is_empty() {
            return refused("partitions: the table is already set");
        }
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return refused(format!(
                "partitions: {partitions} is not in 1..={MAX_PARTITIONS}"
            ));
        }
        if replication == 0 {
            return refused("replication: must be at least 1");
        }
        self.replication = replication;
        self.partitions = vec![Vec::new(); partitions as usize];
        self.rebalance();
        Outcome::Applied
    }

    fn add_member(&mut self, id: NodeId, member: &Member) -> Outcome {
        if id == 0 {
            return refused("node_id: 0 is not a valid node id");
        }
        if let Some(reason) = address_problem(member) {
            return refused(reason);
        }
        let taken = self.members.iter().find(|(other, m)| {
            **other != id
                && (m.member.data_addr == member.data_addr
                    || m.member.cluster_addr == member.cluster_addr)
        });
        if let Some((other, _)) = taken {
            return refused(format!("data_addr: node {other} already uses this address"));
        }
        if let Some(existing) = self.members.get(&id) {
            if existing.member == *member {
                return Outcome::Applied;
            }
            return refused(format!(
                "node_id: node {id} is already a member at other addresses"
            ));
        }
        let entry = MapMember {
            member: member.clone(),
            draining: false,
            down: false,
        };
        self.members.insert(id, entry);
        self.rebalance();
        Outcome::Applied
    }

    fn drain(&mut self, id: NodeId) -> Outcome {
        if !self.members.contains_key(&id) {
            return refused(format!("node_id: node {id} is not a member"));
        }
        let others = self
            .members
            .iter()
            .any(|(other, m)| *other != id && !m.draining);
        if !others {
            return refused(format!(
                "node_id: node {id} is the last node that owns partitions"
            ));
        }
        if let Some(entry) = self.members.get_mut(&id) {
            entry.draining = true;
        }
        self.rebalance();
        Outcome::Applied
    }

    fn remove_member(&mut self, id: NodeId) -> Outcome {
        let Some(entry) = self.members.get(&id) else {
            return refused(format!("node_id: node {id} is not a member"));
        };
        if !entry.draining {
            return refused(format!("node_id: node {id} must be drained before removal"));
        }
        self.members.remove(&id);
        self.rebalance();
        Outcome::Applied
    }

    fn set_namespace(&mut self, name: &str, settings: &NamespaceSettings) -> Outcome {
        if name.is_empty() {
            return refused("name: must not be empty");
        }
        if settings.replication == 0 {
            return refused("replication: must be at least 1");
        }
        let fingerprint_ok = settings.fingerprint.len() == 64
            && settings.fingerprint.bytes().all(|b| b.is_ascii_hexdigit());
        if !fingerprint_ok {
            return refused("fingerprint: must be 64 hex digits");
        }
        self.namespaces.insert(name.to_owned(), settings.clone());
        Outcome::Applied
    }

    fn mark(&mut self, id: NodeId, down: bool) -> Outcome {
        let Some(entry) = self.members.get(&id) else {
            return refused(format!("node_id: node {id} is not a member"));
        };
        if entry.down == down {
            return Outcome::Applied;
        }
        let others = self
            .members
            .iter()
            .any(|(other, m)| *other != id && !m.draining && !m.down);
        if down && !others {
            return refused(format!(
                "node_id: node {id} is the last node that owns partitions"
            ));
        }
        if let Some(entry) = self.members.get_mut(&id) {
            entry.down = down;
        }
        self.rebalance();
        Outcome::Applied
    }

    fn moved(&mut self, id: NodeId, partitions: &[u32]) -> Outcome {
        if !self.members.contains_key(&id) {
            return refused(format!("node_id: node {id} is not a member"));
        }
        for partition in partitions {
            if let Some(m) = self.moves.get_mut(partition) {
                m.pending.retain(|n| *n != id);
            }
        }
        self.moves.retain(|_, m| !m.pending.is_empty());
        Outcome::Applied
    }

    /// Places the partitions on the members that may own them and records, for every
    /// partition that gained an owner, where the newcomer pulls its blocks from.
    fn rebalance(&mut self) {
        let owners: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| !m.draining && !m.down)
            .map(|(id, _)| *id)
            .collect();
        let old = std::mem::take(&mut self.partitions);
        self.partitions = place(&old, &owners, self.replication as usize);
        for (p, (before, after)) in old.iter().zip(&self.partitions).enumerate() {
            let newcomers: Vec<NodeId> = after
                .iter()
                .copied()
                .filter(|id| !before.contains(id))
                .collect();
            let earlier = self.moves.get(&(p as u32)).cloned().unwrap_or_default();
            if newcomers.is_empty() || (before.is_empty() && earlier.from.is_empty()) {
                continue;
            }
            let mut from = before.clone();
            from.extend(earlier.from.iter().filter(|id| !before.contains(id)));
            let mut pending = earlier.pending;
            for id in newcomers {
                if !pending.contains(&id) {
                    pending.push(id);
                }
            }
            self.moves.insert(p as u32, Move { from, pending });
        }
        let members = &self.members;
        for (p, m) in self.moves.iter_mut() {
            let set = &self.partitions[*p as usize];
            m.pending.retain(|id| set.contains(id));
            m.from.retain(|id| members.contains_key(id));
        }
        self.moves
            .retain(|_, m| !m.pending.is_empty() && !m.from.is_empty());
    }
}

/// Why a member's addresses cannot be used, if they cannot.
fn address_problem(member: &Member) -> Option<String> {
    for (field, addr) in [
        ("data_addr", &member.data_addr),
        ("cluster_addr", &member.cluster_addr),
    ] {
        if addr.is_empty() {
            return Some(format!("{field}: must not be empty"));
        }
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Some(format!("{field}: {addr:?} is not host:port"));
        }
    }
    if member.data_addr == member.cluster_addr {
        return Some("cluster_addr: must differ from data_addr".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(port: u16) -> Member {
        Member {
            data_addr: format!("127.0.0.1:{port}"),
            cluster_addr: format!("127.0.0.1:{}", port + 1000),
        }
    }

    fn three_nodes() -> ClusterMap {
        let mut map = ClusterMap::default();
        let bootstrap = Command::Bootstrap {
            partitions: 12,
            replication: 2,
        };
        assert_eq!(map.apply(&bootstrap), Outcome::Applied);
        for id in 1..=3 {
            let add = Command::AddMember {
                id,
                member: member(5000 + id as u16),
            };
            assert_eq!(map.apply(&add), Outcome::Applied);
        }
        map
    }

    #[test]
    fn every_partition_gets_replication_distinct_owners() {
        let map = three_nodes();
        for set in &map.partitions {
            assert_eq!(set.len(), 2);
            assert_ne!(set[0], set[1]);
        }
        for id in 1..=3 {
            let (replicas, primaries) = map.load_of(id);
            assert_eq!(replicas, 8);
            assert!(
                (3..=5).contains(&primaries),
                "node {id}: {primaries} primaries"
            );
        }
    }

    #[test]
    fn a_drained_node_owns_no_partition_and_can_then_be_removed() {
        let mut map = three_nodes();
        let early = map.apply(&Command::RemoveMember { id: 2 });
        assert!(matches!(early, Outcome::Refused { reason } if reason.contains("drained")));
        assert_eq!(map.apply(&Command::Drain { id: 2 }), Outcome::Applied);
        assert_eq!(map.load_of(2), (0, 0));
        assert!(map.partitions.iter().all(|set| set.len() == 2));
        assert_eq!(
            map.apply(&Command::RemoveMember { id: 2 }),
            Outcome::Applied
        );
        assert!(!map.members.contains_key(&2));
    }

    #[test]
    fn refused_commands_name_the_field_and_change_nothing() {
        let mut map = three_nodes();
        let before = map.clone();
        let cases = [
            (Command::Drain { id: 9 }, "node_id"),
            (
                Command::AddMember {
                    id: 0,
                    member: member(7000),
                },
                "node_id",
            ),
            (
                Command::AddMember {
                    id: 4,
                    member: member(5001),
                },
                "data_addr",
            ),
            (
                Command::AddMember {
                    id: 4,
                    member: Member {
                        data_addr: "nohost".into(),
                        cluster_addr: "127.0.0.1:1".into(),
                    },
                },
                "data_addr",
            ),
            (
                Command::Bootstrap {
                    partitions: 8,
                    replication: 1,
                },
                "partitions",
            ),
        ];
        for (command, field) in cases {
            match map.apply(&command) {
                Outcome::Refused { reason } => assert!(reason.starts_with(field), "{reason}"),
                Outcome::Applied => panic!("{command:?} was applied"),
            }
            assert_eq!(map, before);
        }
    }

    #[test]
    fn the_last_owner_cannot_be_drained() {
        let mut map = ClusterMap::default();
        map.apply(&Command::Bootstrap {
            partitions: 4,
            replication: 1,
        });
        map.apply(&Command::AddMember {
            id: 1,
            member: member(5001),
        });
        let before = map.clone();
        assert!(matches!(
            map.apply(&Command::Drain { id: 1 }),
            Outcome::Refused { .. }
        ));
        assert_eq!(map, before);
    }

    /// Reports every pending pull as done.
    fn settle(map: &mut ClusterMap) {
        let ids: Vec<NodeId> = map.members.keys().copied().collect();
        for id in ids {
            let partitions = map.pulls_for(id).into_iter().map(|(p, _)| p).collect();
            assert_eq!(
                map.apply(&Command::Moved { id, partitions }),
                Outcome::Applied
            );
        }
        assert!(map.moves.is_empty());
    }

    #[test]
    fn joins_record_pulls_from_the_nodes_that_held_a_partition_before() {
        let map = three_nodes();
        // Node 1 held every partition alone; nodes 2 and 3 pull what they took from it.
        assert!(map.pulls_for(1).is_empty());
        for id in [2, 3] {
            let pulls = map.pulls_for(id);
            assert!(!pulls.is_empty());
            assert!(pulls.iter().all(|(_, from)| from.contains(&1)), "{pulls:?}");
        }
    }

    #[test]
    fn a_joining_node_pulls_each_partition_it_gains_from_the_previous_owners() {
        let mut map = three_nodes();
        settle(&mut map);
        let before = map.partitions.clone();
        let add = Command::AddMember {
            id: 4,
            member: member(5004),
        };
        assert_eq!(map.apply(&add), Outcome::Applied);
        let pulls = map.pulls_for(4);
        assert_eq!(pulls.len() as u32, map.load_of(4).0);
        for (p, from) in &pulls {
            assert!(map.partitions[*p as usize].contains(&4));
            assert_eq!(from, &before[*p as usize]);
        }
        let key_of_moved = (0u64..)
            .map(|i| i.to_le_bytes())
            .find(|k| partition_of(k, 12) == pulls[0].0)
            .unwrap();
        assert_eq!(
            map.previous_owners(&key_of_moved),
            &before[pulls[0].0 as usize][..]
        );
        let partitions = pulls.iter().map(|(p, _)| *p).collect();
        let epoch = map.epoch;
        assert_eq!(
            map.apply(&Command::Moved { id: 4, partitions }),
            Outcome::Applied
        );
        assert!(map.pulls_for(4).is_empty());
        assert!(map.previous_owners(&key_of_moved).is_empty());
        assert_eq!(map.epoch, epoch + 1);
    }

    #[test]
    fn a_node_marked_down_owns_nothing_until_it_is_marked_up() {
        let mut map = three_nodes();
        settle(&mut map);
        let before = map.partitions.clone();
        assert_eq!(map.apply(&Command::MarkDown { id: 2 }), Outcome::Applied);
        assert_eq!(map.load_of(2), (0, 0));
        assert!(map.partitions.iter().all(|set| set.len() == 2));
        for survivor in [1, 3] {
            for (p, from) in map.pulls_for(survivor) {
                assert!(before[p as usize].contains(&2));
                assert!(from.iter().any(|n| *n != 2), "partition {p}: {from:?}");
            }
        }
        assert_eq!(map.apply(&Command::MarkUp { id: 2 }), Outcome::Applied);
        assert!(map.load_of(2).0 > 0);
    }

    #[test]
    fn the_last_owner_cannot_be_marked_down() {
        let mut map = three_nodes();
        map.apply(&Command::MarkDown { id: 1 });
        map.apply(&Command::MarkDown { id: 2 });
        let before = map.clone();
        let last = map.apply(&Command::MarkDown { id: 3 });
        assert!(matches!(last, Outcome::Refused { reason } if reason.starts_with("node_id")));
        assert_eq!(map, before);
    }

    #[test]
    fn a_key_maps_to_the_same_partition_everywhere() {
        let key = [7u8; 32];
        assert_eq!(partition_of(&key, 64), partition_of(key.as_ref(), 64));
        assert!(partition_of(&key, 64) < 64);
        assert_eq!(partition_of(&[], 64), 0);
    }
}
