//! The cluster's data plane with real kvtierd processes on loopback: routing through any
//! member, redirects, replication surviving a SIGKILL, writes after the leader is lost,
//! and a joining node pulling its partitions while every block stays readable.

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::{blocks, eventually, serial, settled, three_nodes, Node};
use kvtier_proto::cluster::StatusResponse;
use kvtier_proto::v1::kv_cache_client::KvCacheClient;

/// Checks that `read` is exactly chain `chain`'s first `count` blocks, without printing
/// kilobytes of block bytes when it is not.
fn assert_chain(read: &[bytes::Bytes], chain: u32, count: u32, context: &str) {
    let expected = blocks::blocks(chain, count);
    assert_eq!(
        read.len(),
        expected.len(),
        "chain {chain}: blocks read, {context}"
    );
    let first_wrong = read.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(
        first_wrong, None,
        "chain {chain}: first wrong block, {context}"
    );
}

/// Blocks held by the node at `addr`.
async fn blocks_held(addr: &str) -> u64 {
    blocks::client(addr)
        .await
        .stats()
        .await
        .expect("stats")
        .blocks
}

/// A status in which no partition is moving any more and `down` members are marked down.
async fn moves_done(node: &Node, down: usize) -> StatusResponse {
    eventually(Duration::from_secs(20), "moves done", || async {
        let status = node.status().await?;
        let marked = status.members.iter().filter(|m| m.down).count();
        (status.moving_partitions == 0 && marked == down).then_some(status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_writes_through_any_member_and_the_blocks_spread_over_all() {
    let _serial = serial().await;
    let nodes = three_nodes().await;
    moves_done(&nodes[0], 0).await;
    for (chain, node) in nodes.iter().enumerate() {
        let client = blocks::client(&node.data_addr()).await;
        blocks::put_chain(&client, chain as u32, 16).await;
    }
    for (reader, node) in nodes.iter().enumerate() {
        let client = blocks::client(&node.data_addr()).await;
        for chain in 0..3 {
            let read = blocks::get_chain(&client, chain, 16).await;
            assert_chain(&read, chain, 16, &format!("via node {reader}"));
            let keys = blocks::keys(chain, 16);
            assert_eq!(
                client.lookup(&blocks::namespace(), &keys).await.unwrap(),
                16
            );
        }
    }
    // 48 blocks, two copies each, spread over three nodes.
    let mut total = 0;
    for node in &nodes {
        let held = blocks_held(&node.data_addr()).await;
        assert!(held > 0, "node {} holds nothing", node.id);
        total += held;
    }
    assert_eq!(total, 48 * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_own_a_key_redirects_and_the_client_follows() {
    let _serial = serial().await;
    let nodes = three_nodes().await;
    moves_done(&nodes[0], 0).await;
    let routed = blocks::client(&nodes[0].data_addr()).await;
    blocks::put_chain(&routed, 7, 1).await;
    // The key's replica set is two of the three nodes: the third owns nothing of it.
    let mut outsider = None;
    for node in &nodes {
        let mut raw = KvCacheClient::connect(format!("http://{}", node.data_addr()))
            .await
            .expect("connect");
        match raw.put(blocks::put_request(7, 0)).await {
            Ok(_) => continue,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    status.message().starts_with("key: owned by node"),
                    "{}",
                    status.message()
                );
                let owner = status
                    .metadata()
                    .get("kvtier-owner")
                    .expect("owner metadata");
                let owner = owner.to_str().unwrap().to_string();
                assert!(nodes.iter().any(|n| n.data_addr() == owner), "{owner}");
                outsider = Some(node);
            }
        }
    }
    let outsider = outsider.expect("some node is not the key's primary");
    let client = blocks::client(&outsider.data_addr()).await;
    blocks::put_chain(&client, 8, 6).await;
    assert_chain(
        &blocks::get_chain(&client, 8, 6).await,
        8,
        6,
        "via a non-owner",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_every_acknowledged_block_survives_a_sigkill() {
    let _serial = serial().await;
    let mut nodes = three_nodes().await;
    moves_done(&nodes[0], 0).await;
    let client = blocks::client(&nodes[0].data_addr()).await;
    blocks::put_chain(&client, 1, 40).await;
    let victim = settled(&nodes[0], 3).await.leader_id % 3 + 1;
    nodes[(victim - 1) as usize].kill();
    let survivor = nodes.iter().find(|n| n.id != victim).unwrap();
    let client = blocks::client(&survivor.data_addr()).await;
    // Right away, reads pass over the dead node to each key's other replica.
    let read = blocks::get_chain(&client, 1, 40).await;
    assert_chain(&read, 1, 40, "right after the kill");
    // Once it is marked down, the survivors hold both copies between them again.
    moves_done(survivor, 1).await;
    let read = blocks::get_chain(&client, 1, 40).await;
    assert_chain(&read, 1, 40, "after re-replication");
    let held: u64 = {
        let mut held = 0;
        for node in nodes.iter().filter(|n| n.id != victim) {
            held += blocks_held(&node.data_addr()).await;
        }
        held
    };
    assert!(held >= 80, "survivors hold {held} copies of 40 blocks");
    blocks::put_chain(&client, 2, 8).await;
    assert_chain(
        &blocks::get_chain(&client, 2, 8).await,
        2,
        8,
        "written after the kill",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_writes_succeed_within_five_seconds_of_a_leader_sigkill() {
    let _serial = serial().await;
    let mut nodes = three_nodes().await;
    moves_done(&nodes[0], 0).await;
    let leader = settled(&nodes[0], 3).await.leader_id;
    let seed = nodes.iter().find(|n| n.id != leader).unwrap().data_addr();
    let client = blocks::client(&seed).await;
    blocks::put_chain(&client, 3, 4).await;
    let killed_at = Instant::now();
    nodes[(leader - 1) as usize].kill();
    // Every chain's first block lands on some partition; those the dead node was primary
    // of take writes again once it is marked down and the table moves on.
    for chain in 100..116 {
        let key = blocks::key(chain, 0);
        eventually(Duration::from_secs(5), "a block write succeeds", || async {
            let block = blocks::block(chain, 0);
            client
                .put(&blocks::namespace(), &key, None, 0, block)
                .await
                .ok()
        })
        .await;
    }
    let elapsed = killed_at.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "writes resumed after {elapsed:?}"
    );
    assert_chain(
        &blocks::get_chain(&client, 3, 4).await,
        3,
        4,
        "written before the kill",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_pulls_its_partitions_and_every_block_stays_readable() {
    let _serial = serial().await;
    let nodes = three_nodes().await;
    moves_done(&nodes[0], 0).await;
    let client = blocks::client(&nodes[0].data_addr()).await;
    for chain in 0..4 {
        blocks::put_chain(&client, chain, 24).await;
    }
    let mut fourth = Node::new(4);
    // It pulls what it gains only after 3 s: reads meanwhile must reach the old owners.
    fourth.pull_interval = "3s";
    fourth.start(Some(&nodes[1].cluster_addr()));
    let moving = |status: &Option<StatusResponse>| {
        status.as_ref().is_some_and(|s| {
            let fourth_owns = s.members.iter().any(|m| m.node_id == 4 && m.partitions > 0);
            s.members.len() == 4 && fourth_owns && s.moving_partitions > 0
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut rounds, mut during_move) = (0, 0);
    loop {
        let before = fourth.status().await;
        for chain in 0..4 {
            let read = blocks::get_chain(&client, chain, 24).await;
            assert_chain(&read, chain, 24, &format!("round {rounds} of the join"));
            let keys = blocks::keys(chain, 24);
            let held = client.lookup(&blocks::namespace(), &keys).await.unwrap();
            assert_eq!(held, 24, "lookup of chain {chain}, round {rounds}");
        }
        let layers = blocks::get_layers(&client, 0, 24).await;
        assert_eq!(layers.len(), 2, "layers of chain 0, round {rounds}");
        for (l, layer) in layers.iter().enumerate() {
            assert_eq!(layer.len(), 24, "blocks in layer {l}, round {rounds}");
            let wrong = (0..24).find(|&p| layer[p] != blocks::layer(0, p as u32, l));
            assert_eq!(wrong, None, "layer {l}, round {rounds}");
        }
        let after = fourth.status().await;
        rounds += 1;
        if moving(&before) && moving(&after) {
            during_move += 1;
        }
        let settled = after.as_ref().is_some_and(|s| {
            s.members.len() == 4
                && s.moving_partitions == 0
                && s.members.iter().all(|m| m.partitions > 0)
        });
        if settled {
            break;
        }
        assert!(Instant::now() < deadline, "the fourth node did not settle");
    }
    assert!(during_move > 0, "no round of reads fell inside the move");
    assert!(blocks_held(&fourth.data_addr()).await > 0);
    let through_fourth = blocks::client(&fourth.data_addr()).await;
    for chain in 0..4 {
        let read = blocks::get_chain(&through_fourth, chain, 24).await;
        assert_chain(&read, chain, 24, "through the fourth node");
    }
    eprintln!("read all 96 blocks {rounds} times, {during_move} of them during the move");
}
