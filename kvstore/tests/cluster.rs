//! Cluster behaviour with real kvtierd processes on loopback: forming, leader loss,
//! membership changes, restarts and refused requests. Each test owns its nodes, ports and
//! data directories, and every wait has a deadline.

mod cluster_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster_support::{blocks, eventually, serial, settled, three_nodes, three_nodes_with, Node};
use kvtier_proto::cluster::{JoinRequest, NodeRequest, StatusResponse};

/// Members as (id, role, partitions, primaries), which every node must agree on.
fn layout(status: &StatusResponse) -> BTreeMap<u64, (String, u32, u32)> {
    status
        .members
        .iter()
        .map(|m| (m.node_id, (m.role.clone(), m.partitions, m.primaries)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_one_cluster_and_share_the_partitions() {
    let _serial = serial().await;
    let nodes = three_nodes().await;
    let first = settled(&nodes[0], 3).await;
    assert_eq!(first.partition_count, 16);
    assert_eq!(first.replication_factor, 2);
    for node in &nodes {
        let status = eventually(Duration::from_secs(10), "same map everywhere", || async {
            let status = node.status().await?;
            (layout(&status) == layout(&first)).then_some(status)
        })
        .await;
        assert_eq!(status.leader_id, first.leader_id);
    }
    let replicas: u32 = first.members.iter().map(|m| m.partitions).sum();
    assert_eq!(replicas, 16 * 2);
    for member in &first.members {
        assert_eq!(member.role, "voter");
        assert!((10..=11).contains(&member.partitions), "{member:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_writes_within_five_seconds_of_a_leader_sigkill() {
    let _serial = serial().await;
    let mut nodes = three_nodes().await;
    let old = settled(&nodes[0], 3).await.leader_id;
    let killed_at = Instant::now();
    nodes[(old - 1) as usize].kill();
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.id != old).collect();
    let new_leader = eventually(Duration::from_secs(5), "new leader", || async {
        let status = survivors[0].status().await?;
        (status.leader_id != 0 && status.leader_id != old).then_some(status.leader_id)
    })
    .await;
    // A write through the log: re-registering a member with the same addresses.
    let writer = survivors
        .iter()
        .find(|n| n.id != new_leader)
        .unwrap_or(&survivors[0]);
    let again = JoinRequest {
        node_id: writer.id,
        data_addr: writer.data_addr(),
        cluster_addr: writer.cluster_addr(),
    };
    eventually(Duration::from_secs(5), "a write commits", || async {
        let mut client = writer.client().await;
        client.join(again.clone()).await.ok()
    })
    .await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_stale_membership_requests_are_refused_and_change_nothing() {
    let _serial = serial().await;
    // Nobody is marked down on a loaded machine: only the requests could change the log.
    let nodes = three_nodes_with(|node| node.down_after = "60s").await;
    let before = settled(&nodes[0], 3).await;
    let mut client = nodes[1].client().await;
    let join = |node_id: u64, data: &str, cluster: &str| JoinRequest {
        node_id,
        data_addr: data.into(),
        cluster_addr: cluster.into(),
    };
    let taken = nodes[2].data_addr();
    let joins = [
        (join(0, "127.0.0.1:1", "127.0.0.1:2"), "node_id"),
        (join(9, "no-port", "127.0.0.1:2"), "data_addr"),
        (join(9, "127.0.0.1:1", ""), "cluster_addr"),
        (join(9, &taken, "127.0.0.1:2"), "data_addr"),
        (join(2, "127.0.0.1:1", "127.0.0.1:2"), "node_id"),
    ];
    for (request, field) in joins {
        let status = client.join(request.clone()).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{request:?}");
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    for node_id in [0, 42] {
        let drain = client
            .drain(NodeRequest { node_id })
            .await
            .expect_err("refused");
        assert!(
            drain.message().starts_with("node_id"),
            "{}",
            drain.message()
        );
        let remove = client
            .remove_node(NodeRequest { node_id })
            .await
            .expect_err("refused");
        assert!(
            remove.message().starts_with("node_id"),
            "{}",
            remove.message()
        );
    }
    let after = settled(&nodes[0], 3).await;
    assert_eq!(layout(&after), layout(&before));
    assert_eq!(after.last_applied, before.last_applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_takes_a_share_and_a_removed_node_owns_nothing() {
    let _serial = serial().await;
    let mut nodes = three_nodes().await;
    let mut fourth = Node::new(4);
    fourth.start(Some(&nodes[1].cluster_addr()));
    let grown = settled(&fourth, 4).await;
    for member in &grown.members {
        assert!((8..=9).contains(&member.partitions), "{member:?}");
    }

    let mut client = nodes[0].client().await;
    client
        .remove_node(NodeRequest { node_id: 3 })
        .await
        .expect("remove node 3");
    // Node 3 still runs, but it has left Raft: no election disturbs the others.
    let after_removal = settled(&nodes[0], 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = settled(&nodes[0], 3).await;
    assert_eq!(
        (later.leader_id, later.term),
        (after_removal.leader_id, after_removal.term)
    );
    nodes[2].stop();
    // Started again from its data directory, it refuses and says why.
    nodes[2].start(None);
    let exit = nodes[2]
        .wait_exit(Duration::from_secs(20))
        .expect("node 3 exits");
    assert!(!exit.success());
    assert!(
        nodes[2].log().contains("was removed from its cluster"),
        "{}",
        nodes[2].log()
    );
    let shrunk = settled(&nodes[0], 3).await;
    assert!(shrunk.members.iter().all(|m| m.node_id != 3));
    let replicas: u32 = shrunk.members.iter().map(|m| m.partitions).sum();
    assert_eq!(replicas, 16 * 2);
    let stale = client
        .remove_node(NodeRequest { node_id: 3 })
        .await
        .expect_err("gone");
    assert_eq!(stale.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_keeps_membership_the_partition_table_and_ssd_blocks() {
    let _serial = serial().await;
    let mut nodes = three_nodes_with(|node| {
        node.down_after = "60s";
        node.durability = "sync";
    })
    .await;
    let mut client = nodes[0].client().await;
    client
        .drain(NodeRequest { node_id: 2 })
        .await
        .expect("drain node 2");
    let before = eventually(Duration::from_secs(10), "drain applied", || async {
        let status = nodes[0].status().await?;
        let drained = status
            .members
            .iter()
            .any(|m| m.node_id == 2 && m.partitions == 0);
        drained.then_some(status)
    })
    .await;
    let data = blocks::client(&nodes[2].data_addr()).await;
    blocks::put_chain(&data, 1, 24).await;
    drop(data);
    for node in &mut nodes {
        node.stop();
    }
    for node in &mut nodes {
        node.start(None);
    }
    for node in &nodes {
        let after = eventually(Duration::from_secs(20), "recovered map", || async {
            let status = node.status().await?;
            (status.leader_id != 0 && layout(&status) == layout(&before)).then_some(status)
        })
        .await;
        assert_eq!(after.partition_count, before.partition_count);
    }
    let data = blocks::client(&nodes[1].data_addr()).await;
    let read = blocks::get_chain(&data, 1, 24).await;
    assert_eq!(read.len(), 24, "blocks read back after the restart");
    assert!(read == blocks::blocks(1, 24), "a block read back differs");
}
