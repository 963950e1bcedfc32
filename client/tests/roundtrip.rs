//! The client library against a real kvtierd on loopback.

use bytes::Bytes;
use kvtier_client::format::{encode_block, BlockShape, DType};
use kvtier_client::{block_keys, KvClient, Namespace};
use kvtier_store::server::spawn;
use kvtier_store::Config;

fn namespace() -> Namespace {
    Namespace {
        tenant: "t".into(),
        fingerprint: [3; 32],
        shape: BlockShape {
            n_layers: 2,
            n_kv_heads: 1,
            block_tokens: 4,
            head_dim: 8,
            dtype: DType::F32,
        },
    }
}

#[tokio::test]
async fn put_lookup_get_and_delete_through_the_client() {
    let server = spawn(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    })
    .await
    .unwrap();
    let client = KvClient::connect(&server.addr.to_string()).await.unwrap();
    let ns = namespace();
    let keys = block_keys(&ns.fingerprint, &(0..20).collect::<Vec<u32>>(), 4);
    let mut sent = Vec::new();
    for (i, key) in keys.iter().take(3).enumerate() {
        let raw = vec![i as u8; ns.shape.raw_bytes()];
        let block = Bytes::from(encode_block(&ns.fingerprint, &ns.shape, &raw).unwrap());
        let parent = i.checked_sub(1).map(|p| &keys[p]);
        let outcome = client
            .put(&ns, key, parent, i as u32, block.clone())
            .await
            .unwrap();
        assert!(outcome.stored && !outcome.already_present);
        sent.push(block);
    }
    assert_eq!(client.lookup(&ns, &keys).await.unwrap(), 3);
    assert_eq!(client.get_all(&ns, &keys).await.unwrap(), sent);
    assert_eq!(client.delete(&ns, &keys[1..2]).await.unwrap(), 2);
    assert_eq!(client.lookup(&ns, &keys).await.unwrap(), 1);
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.tiers[0].blocks, 1);
}

#[tokio::test]
async fn connecting_to_a_closed_port_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = KvClient::connect(&addr.to_string()).await.unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
}
