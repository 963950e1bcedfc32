//! The KvCache service over loopback gRPC, as a client sees it.

use bytes::Bytes;
use bytesize::ByteSize;
use kvtier_format::{encode_block, BlockShape, DType};
use kvtier_proto::v1 as pb;
use kvtier_proto::v1::kv_cache_client::KvCacheClient;
use kvtier_store::server::{spawn, RunningServer};
use kvtier_store::Config;
use tonic::transport::Channel;
use tonic::Code;

const FINGERPRINT: [u8; 32] = [0xf0; 32];

fn shape(block_tokens: u32) -> BlockShape {
    BlockShape {
        n_layers: 2,
        n_kv_heads: 2,
        block_tokens,
        head_dim: 16,
        dtype: DType::F32,
    }
}

fn namespace(shape: &BlockShape) -> pb::Namespace {
    pb::Namespace {
        tenant: "test".into(),
        fingerprint: Bytes::copy_from_slice(&FINGERPRINT),
        layout: Some(pb::BlockLayout {
            n_layers: shape.n_layers,
            n_kv_heads: shape.n_kv_heads,
            block_tokens: shape.block_tokens,
            head_dim: shape.head_dim,
            dtype: pb::DType::DtypeF32 as i32,
        }),
    }
}

fn key(chain: u32, position: u32) -> Bytes {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&chain.to_le_bytes());
    k[4..8].copy_from_slice(&position.to_le_bytes());
    k[31] = 1;
    Bytes::copy_from_slice(&k)
}

fn block(shape: &BlockShape, seed: u32) -> Bytes {
    let raw: Vec<u8> = (0..shape.raw_bytes())
        .map(|i| (i as u32 ^ seed).wrapping_mul(31) as u8)
        .collect();
    Bytes::from(encode_block(&FINGERPRINT, shape, &raw).unwrap())
}

fn put_request(shape: &BlockShape, chain: u32, position: u32) -> pb::PutRequest {
    pb::PutRequest {
        namespace: Some(namespace(shape)),
        key: key(chain, position),
        parent: if position == 0 {
            Bytes::new()
        } else {
            key(chain, position - 1)
        },
        position,
        block: block(shape, chain * 1000 + position),
        ..Default::default()
    }
}

async fn start(config: Config) -> (RunningServer, KvCacheClient<Channel>) {
    let server = spawn(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..config
    })
    .await
    .unwrap();
    let client = KvCacheClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap()
        .max_decoding_message_size(usize::MAX);
    (server, client)
}

async fn get_blocks(
    client: &mut KvCacheClient<Channel>,
    shape: &BlockShape,
    keys: Vec<Bytes>,
) -> Vec<Bytes> {
    let request = pb::GetRequest {
        namespace: Some(namespace(shape)),
        keys,
    };
    let mut stream = client.get(request).await.unwrap().into_inner();
    let mut blocks = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        assert_eq!(item.index as usize, blocks.len());
        blocks.push(item.block);
    }
    blocks
}

async fn lookup(client: &mut KvCacheClient<Channel>, shape: &BlockShape, keys: Vec<Bytes>) -> u32 {
    let request = pb::LookupRequest {
        namespace: Some(namespace(shape)),
        keys,
    };
    client
        .lookup(request)
        .await
        .unwrap()
        .into_inner()
        .prefix_len
}

/// Proves the server still answers normally after a refused request.
async fn assert_still_serving(client: &mut KvCacheClient<Channel>) {
    let shape = shape(4);
    let reply = client
        .put(put_request(&shape, 999, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.stored);
    assert_eq!(get_blocks(client, &shape, vec![key(999, 0)]).await.len(), 1);
}

fn assert_invalid(result: Result<tonic::Response<pb::PutResponse>, tonic::Status>, field: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "message {:?} should name {field}",
        status.message()
    );
}

#[tokio::test]
async fn put_then_get_returns_identical_bytes() {
    let (_server, mut client) = start(Config::default()).await;
    let shape = shape(8);
    let requests: Vec<_> = (0..3).map(|pos| put_request(&shape, 1, pos)).collect();
    for request in requests.clone() {
        assert!(client.put(request).await.unwrap().into_inner().stored);
    }
    let blocks = get_blocks(&mut client, &shape, (0..3).map(|p| key(1, p)).collect()).await;
    let sent: Vec<Bytes> = requests.into_iter().map(|r| r.block).collect();
    assert_eq!(blocks, sent);
}

#[tokio::test]
async fn putting_a_key_again_keeps_the_first_copy() {
    let (server, mut client) = start(Config::default()).await;
    let shape = shape(4);
    let first = put_request(&shape, 1, 0);
    client.put(first.clone()).await.unwrap();
    let mut second = first.clone();
    second.block = block(&shape, 42);
    let reply = client.put(second).await.unwrap().into_inner();
    assert!(reply.already_present && reply.stored);
    assert_eq!(
        get_blocks(&mut client, &shape, vec![key(1, 0)]).await,
        vec![first.block]
    );
    assert_eq!(server.store.stats().blocks, 1);
}

#[tokio::test]
async fn lookup_and_get_stop_at_the_first_missing_block() {
    let (_server, mut client) = start(Config::default()).await;
    let shape = shape(4);
    for pos in 0..3 {
        client.put(put_request(&shape, 7, pos)).await.unwrap();
    }
    let keys: Vec<Bytes> = (0..6).map(|p| key(7, p)).collect();
    assert_eq!(lookup(&mut client, &shape, keys.clone()).await, 3);
    assert_eq!(get_blocks(&mut client, &shape, keys).await.len(), 3);
    let unknown_first = vec![key(8, 0), key(7, 0)];
    assert_eq!(lookup(&mut client, &shape, unknown_first).await, 0);
}

#[tokio::test]
async fn filling_three_times_the_capacity_keeps_puts_succeeding_within_capacity() {
    let capacity = ByteSize::mib(1);
    let config = Config {
        dram_capacity: capacity,
        max_block_bytes: ByteSize::kib(256),
        ..Config::default()
    };
    let (server, mut client) = start(config).await;
    let shape = shape(64);
    let block_bytes = block(&shape, 0).len() as u64;
    let mut written = 0;
    let mut chain = 0;
    while written < 3 * capacity.as_u64() {
        chain += 1;
        for pos in 0..5 {
            let reply = client
                .put(put_request(&shape, chain, pos))
                .await
                .unwrap()
                .into_inner();
            assert!(reply.stored, "put {chain}/{pos} was declined");
            written += block_bytes;
            let stats = client
                .stats(pb::StatsRequest {})
                .await
                .unwrap()
                .into_inner();
            assert!(stats.tiers[0].used_bytes <= capacity.as_u64());
        }
        server.store.check_invariants().unwrap();
    }
    let stats = server.store.stats();
    assert!(stats.evictions() > 0);
    // The newest chain is whole; evicted chains left no suffix behind.
    let newest: Vec<Bytes> = (0..5).map(|p| key(chain, p)).collect();
    assert_eq!(lookup(&mut client, &shape, newest).await, 5);
}

#[tokio::test]
async fn a_block_corrupted_in_memory_is_a_miss() {
    let (server, mut client) = start(Config::default()).await;
    let shape = shape(4);
    for pos in 0..3 {
        client.put(put_request(&shape, 3, pos)).await.unwrap();
    }
    let corrupted: [u8; 32] = key(3, 1).as_ref().try_into().unwrap();
    assert!(server.store.corrupt_for_test(&corrupted));
    let blocks = get_blocks(&mut client, &shape, (0..3).map(|p| key(3, p)).collect()).await;
    assert_eq!(
        blocks.len(),
        1,
        "only the block before the corrupted one comes back"
    );
    assert_eq!(server.store.stats().checksum_failures, 1);
    assert_eq!(
        lookup(&mut client, &shape, vec![key(3, 0), key(3, 1)]).await,
        1
    );
    assert_still_serving(&mut client).await;
}

#[tokio::test]
async fn malformed_puts_are_invalid_argument_naming_the_field() {
    let (_server, mut client) = start(Config::default()).await;
    let shape = shape(4);

    let mut request = put_request(&shape, 1, 0);
    request.key = Bytes::new();
    assert_invalid(client.put(request).await, "key");
    assert_still_serving(&mut client).await;

    let mut request = put_request(&shape, 1, 0);
    request.key = Bytes::from_static(&[1; 31]);
    assert_invalid(client.put(request).await, "key");
    assert_still_serving(&mut client).await;

    let mut request = put_request(&shape, 1, 0);
    request.namespace = Some(namespace(&BlockShape {
        head_dim: 32,
        ..shape
    }));
    assert_invalid(client.put(request).await, "block");
    assert_still_serving(&mut client).await;

    let mut request = put_request(&shape, 1, 1);
    request.parent = Bytes::new();
    assert_invalid(client.put(request).await, "parent");
    assert_still_serving(&mut client).await;

    let lookup = pb::LookupRequest {
        namespace: None,
        keys: vec![key(1, 0)],
    };
    let status = client.lookup(lookup).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("namespace"));
}

#[tokio::test]
async fn a_block_over_the_block_limit_is_invalid_argument() {
    let config = Config {
        max_block_bytes: ByteSize::kib(64),
        ..Config::default()
    };
    let (_server, mut client) = start(config).await;
    let big = shape(1024);
    assert!(block(&big, 0).len() > 64 << 10);
    assert_invalid(client.put(put_request(&big, 1, 0)).await, "block");
    assert_still_serving(&mut client).await;
}

#[tokio::test]
async fn a_message_over_the_transport_limit_is_refused_by_the_transport() {
    let config = Config {
        max_block_bytes: ByteSize::kib(512),
        max_message_bytes: ByteSize::mib(1),
        ..Config::default()
    };
    let (_server, mut client) = start(config).await;
    let mut request = put_request(&shape(4), 1, 0);
    request.block = Bytes::from(vec![0u8; 2 << 20]);
    let status = client.put(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "unexpected status {status:?}"
    );
    assert!(
        !status.message().contains("block:"),
        "the store itself must not see it"
    );
    assert_still_serving(&mut client).await;
}
