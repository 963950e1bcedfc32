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
            assert_eq!(
                read,
                blocks::blocks(chain, 16),
                "chain {chain} via node {reader}"
            );
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
    assert_eq!(
        blocks::get_chain(&client, 1, 40).await,
        blocks::blocks(1, 40)
    );
    // Once it is marked down, the survivors hold both copies between them again.
    moves_done(survivor, 1).await;
    assert_eq!(
        blocks::get_chain(&client, 1, 40).await,
        blocks::blocks(1, 40)
    );
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
    fourth.start(Some(&nodes[1].cluster_addr()));
    // Read everything over and over while the node joins and pulls.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rounds = 0;
    loop {
        for chain in 0..4 {
            let read = blocks::get_chain(&client, chain, 24).await;
            assert_eq!(
                read,
                blocks::blocks(chain, 24),
                "chain {chain}, round {rounds}"
            );
        }
        rounds += 1;
        let status = fourth.status().await;
        let joined = status.as_ref().is_some_and(|s| {
            s.members.len() == 4
                && s.moving_partitions == 0
                && s.members.iter().all(|m| m.partitions > 0)
        });
        if joined {
            break;
        }
        assert!(Instant::now() < deadline, "the fourth node did not settle");
    }
    assert!(blocks_held(&fourth.data_addr()).await > 0);
    let through_fourth = blocks::client(&fourth.data_addr()).await;
    for chain in 0..4 {
        assert_eq!(
            blocks::get_chain(&through_fourth, chain, 24).await,
            blocks::blocks(chain, 24)
        );
    }
    eprintln!("read all 96 blocks {rounds} times while the fourth node joined");
}
