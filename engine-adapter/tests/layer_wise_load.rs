//! Layer-wise loading: a prefix fetched one layer at a time under the computation gives
//! exactly what loading it whole first gives, and a feed that fails is recomputed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_client::{KvClient, Namespace};
use kvtier_engine::connector::KvtierConnector;
use kvtier_engine::engine::{namespace_fields, Engine};
use kvtier_engine::LoadedModel;
use kvtier_store::server::spawn;
use kvtier_store::Config;
use tokio::net::TcpListener;

const BLOCK_TOKENS: u32 = 4;

fn prompt(model: &LoadedModel, text: &str) -> Vec<u32> {
    let mut tokens: Vec<u32> = model.tokenizer.bos_id().into_iter().collect();
    tokens.extend(model.tokenizer.encode(text).unwrap());
    tokens
}

fn engine(model: &Arc<LoadedModel>, client: KvClient, layer_wise: bool) -> Engine<KvtierConnector> {
    let namespace = Namespace::from_fields(&namespace_fields(&model.info, "test", BLOCK_TOKENS));
    let connector = KvtierConnector::new(client, namespace.clone());
    Engine::new(model.clone(), namespace, Some(connector))
        .with_layer_wise(layer_wise)
        .with_fetch_deadline(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_wise_prefill_gives_the_same_logits_and_kv_as_loading_whole_blocks() {
    let server = spawn(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    })
    .await
    .unwrap();
    let client = KvClient::connect(&server.addr.to_string()).await.unwrap();
    let model = Arc::new(common::load_stories());
    let whole = engine(&model, client.clone(), false);
    let layered = engine(&model, client, true);

    let history = prompt(
        &model,
        "Once upon a time, there was a little girl named Lily.",
    );
    let (mut first, _, _) = whole.prefill(history.clone(), false).await.unwrap();
    assert!(whole.save(&mut first).await.unwrap().stored > 0);

    let mut tokens = history;
    tokens.extend(prompt(&model, " She loved to play in the park with her dog.")[1..].iter());
    let (a, logits_whole, report_whole) = whole.prefill(tokens.clone(), true).await.unwrap();
    let (b, logits_layered, report_layered) = layered.prefill(tokens.clone(), true).await.unwrap();

    assert!(report_layered.cached_tokens > 0);
    assert!(!report_layered.fell_back);
    assert_eq!(report_layered.cached_tokens, report_whole.cached_tokens);
    assert_eq!(logits_layered, logits_whole, "logits must be bit-identical");
    let n = tokens.len();
    assert_eq!(
        b.cache.export_block(0, n).unwrap(),
        a.cache.export_block(0, n).unwrap()
    );
    assert_eq!(b.tokens, a.tokens);
    assert_eq!(b.keys(), a.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_wise_prefill_against_a_silent_store_recomputes_within_the_deadline() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let model = Arc::new(common::load_stories());
    let client = KvClient::connect_lazy(&addr.to_string()).unwrap();
    let layered = engine(&model, client, true).with_fetch_deadline(Duration::from_millis(300));
    let reference: Engine<KvtierConnector> =
        Engine::new(model.clone(), layered.namespace().clone(), None);

    let tokens = prompt(
        &model,
        "Once upon a time, there was a little girl named Lily.",
    );
    let started = Instant::now();
    let (_, logits, report) = layered.prefill(tokens.clone(), true).await.unwrap();
    let took = started.elapsed();
    let (_, expected, _) = reference.prefill(tokens, false).await.unwrap();

    assert!(report.fell_back);
    assert_eq!(report.cached_tokens, 0);
    assert_eq!(logits, expected);
    assert!(took < Duration::from_secs(3), "took {took:?}");
}
