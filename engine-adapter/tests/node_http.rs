//! kvtier-node end to end: a kvtierd and a node on ephemeral ports with stories260K,
//! driven by a plain HTTP/1.1 client.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_engine::node::worker::MAX_ACTIVE;
use kvtier_engine::node::{self, NodeConfig, RunningNode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MODEL_ID: &str = "stories260K";

async fn start_store() -> kvtier_store::server::RunningServer {
    let config = kvtier_store::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..kvtier_store::Config::default()
    };
    kvtier_store::server::spawn(config).await.unwrap()
}

async fn start_node(store: String, queue_depth: usize) -> RunningNode {
    let config = NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store,
        model_id: MODEL_ID.into(),
        tenant: "test".into(),
        block_tokens: 16,
        queue_depth,
        fetch_deadline: Duration::from_millis(500),
        layer_wise: true,
        cache: true,
    };
    node::start(Arc::new(common::load_stories()), config)
        .await
        .unwrap()
}

/// An address that accepts connections and never replies, like a stopped (SIGSTOP)
/// kvtierd: every prefill on a node pointed at it waits out the fetch deadline.
async fn silent_store() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    (addr, hold)
}

/// Sends one request with `Connection: close`; returns the status and the body, with any
/// chunked transfer encoding undone.
async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    http_with(addr, method, path, &[], body).await
}

/// [`http`] with extra request headers.
async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        },
    )
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, tail) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&tail[..size]);
        rest = &tail[size + 2..];
    }
}

fn chat(messages: Value, extra: Value) -> Value {
    let mut body = json!({"model": MODEL_ID, "messages": messages, "max_tokens": 12,
        "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn cached_tokens(body: &Value) -> u64 {
    body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap()
}

/// stories260K has a context of 128 tokens: prompts stay short.
const STORY: &str = "Once upon a time, there was a little girl named Lily. She loved to play \
    in the park.";

#[tokio::test]
async fn a_chat_answers_and_its_second_turn_reports_cached_tokens() {
    let store = start_store().await;
    let node = start_node(store.addr.to_string(), 4).await;

    let first = json!([{"role": "user", "content": STORY}]);
    let (status, body) = http(
        node.addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat(first, json!({}))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let answer = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!answer.is_empty());
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        cached_tokens(&body),
        0,
        "nothing is cached before the first turn"
    );

    let second = json!([{"role": "user", "content": STORY},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And then?"}]);
    let (status, body) = http(
        node.addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat(second, json!({}))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let cached = cached_tokens(&body);
    println!(
        "second turn: {cached} of {} prompt tokens cached",
        body["usage"]["prompt_tokens"]
    );
    assert!(cached >= 16, "the first turn's blocks were reused: {body}");
}

#[tokio::test]
async fn streaming_sends_the_same_text_as_a_whole_answer_and_ends_with_done() {
    let store = start_store().await;
    let node = start_node(store.addr.to_string(), 4).await;
    let messages = json!([{"role": "user", "content": STORY}]);

    let (_, whole) = http(
        node.addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat(messages.clone(), json!({}))),
    )
    .await;
    let whole: Value = serde_json::from_str(&whole).unwrap();
    let extra = json!({"stream": true, "stream_options": {"include_usage": true}});
    let (status, events) = http(
        node.addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat(messages, extra)),
    )
    .await;
    assert_eq!(status, 200);

    let data: Vec<&str> = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        streamed,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());
    assert!(last["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn malformed_requests_get_400_naming_the_field_and_the_node_keeps_serving() {
    let store = start_store().await;
    let node = start_node(store.addr.to_string(), 4).await;
    let cases = [
        (json!({"model": MODEL_ID}), "messages"),
        (json!({"model": MODEL_ID, "messages": "hi"}), "messages"),
        (
            chat(
                json!([{"role": "user", "content": "hi"}]),
                json!({"max_tokens": "ten"}),
            ),
            "max_tokens",
        ),
        (
            chat(
                json!([{"role": "user", "content": "hi"}]),
                json!({"temperature": 7}),
            ),
            "temperature",
        ),
        (
            chat(json!([{"role": "wizard", "content": "hi"}]), json!({})),
            "messages",
        ),
        (
            chat(json!([{"role": "user", "content": "hi"}]), json!({"n": 3})),
            "n",
        ),
        (
            chat(
                json!([{"role": "user", "content": "hi"}]),
                json!({"max_tokens": 4, "min_tokens": 5}),
            ),
            "min_tokens",
        ),
    ];
    for (request, field) in cases {
        let (status, body) = http(node.addr, "POST", "/v1/chat/completions", Some(&request)).await;
        assert_eq!(status, 400, "{request}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{message} should name {field}");
    }
    let (status, _) = http(
        node.addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat(json!([{"role": "user", "content": "hi"}]), json!({}))),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = http(node.addr, "GET", "/v1/models", None).await;
    assert_eq!(status, 200);
    assert!(body.contains(MODEL_ID));
}

#[tokio::test]
async fn min_tokens_holds_off_the_end_of_an_answer() {
    let store = start_store().await;
    let node = start_node(store.addr.to_string(), 4).await;
    // A stop sequence as common as a space ends the answer within its first words.
    let request = |extra: Value| {
        let mut body = json!({"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 30,
            "temperature": 0, "stop": [" "]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let (status, body) = http(
        node.addr,
        "POST",
        "/v1/completions",
        Some(&request(json!({}))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let natural: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(natural["choices"][0]["finish_reason"], "stop", "{body}");
    assert!(
        natural["usage"]["completion_tokens"].as_u64().unwrap() < 30,
        "{body}"
    );

    let fixed = request(json!({"min_tokens": 30}));
    let (status, body) = http(node.addr, "POST", "/v1/completions", Some(&fixed)).await;
    assert_eq!(status, 200, "{body}");
    let fixed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(fixed["usage"]["completion_tokens"], 30, "{body}");
    assert_eq!(fixed["choices"][0]["finish_reason"], "length", "{body}");
    let text = fixed["choices"][0]["text"].as_str().unwrap();
    assert!(
        text.trim().contains(' '),
        "the stop sequence was held off: {text:?}"
    );
}

#[tokio::test]
async fn a_full_queue_answers_429_at_once() {
    // Each request's lookup waits out the 500 ms fetch deadline, so with MAX_ACTIVE
    // requests taken in and one queued, the rest of a burst must be refused.
    let (store, hold) = silent_store().await;
    let node = start_node(store.to_string(), 1).await;
    let request = json!({"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 8});
    let burst = MAX_ACTIVE + 1 + 3;
    let requests = (0..burst).map(|_| {
        let request = request.clone();
        let addr = node.addr;
        tokio::spawn(async move { http(addr, "POST", "/v1/completions", Some(&request)).await })
    });
    let started = Instant::now();
    let answers: Vec<(u16, String)> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert!(
        statuses.iter().filter(|&&s| s == 429).count() >= 3,
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    let refusal = &answers.iter().find(|a| a.0 == 429).unwrap().1;
    assert!(refusal.contains("rate_limit_error"), "{refusal}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (_, metrics) = http(node.addr, "GET", "/metrics", None).await;
    assert!(
        metrics.contains("kvtier_node_requests_total{outcome=\"rejected\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kvtier_node_ttft_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# HELP kvtier_node_ttft_seconds Time from accepting a request"),
        "every family says what it counts: {metrics}"
    );
    hold.abort();
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_does_not_stop_the_node() {
    // The silent store holds the prefill for the fetch deadline, so the client is gone
    // before the first token: the worker must notice and cancel.
    let (store, hold) = silent_store().await;
    let node = start_node(store.to_string(), 4).await;
    let body = json!({"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 64,
        "stream": true})
    .to_string();
    let mut stream = TcpStream::connect(node.addr).await.unwrap();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 256];
    let n = stream.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    drop(stream);

    let hi = chat(
        json!([{"role": "user", "content": "hi"}]),
        json!({"max_tokens": 4}),
    );
    let (status, body) = http(node.addr, "POST", "/v1/chat/completions", Some(&hi)).await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = http(node.addr, "GET", "/metrics", None).await;
    assert!(metrics.contains("outcome=\"cancelled\""), "{metrics}");
    hold.abort();
}

#[tokio::test]
async fn a_store_that_never_answers_costs_at_most_the_fetch_deadline() {
    let (addr, hold) = silent_store().await;
    let node = start_node(addr.to_string(), 4).await;
    let started = Instant::now();
    let request = chat(
        json!([{"role": "user", "content": STORY}]),
        json!({"max_tokens": 4}),
    );
    let (status, body) = http(node.addr, "POST", "/v1/chat/completions", Some(&request)).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cached_tokens(&body), 0);
    // The deadline is 500 ms; the model itself needs a few ms. Saves after the answer
    // do not delay it.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let (_, metrics) = http(node.addr, "GET", "/metrics", None).await;
    assert!(
        metrics.contains("kvtier_node_cache_fallbacks_total"),
        "{metrics}"
    );
    hold.abort();
}

#[tokio::test]
async fn with_kvtierd_down_requests_recompute_and_cached_tokens_return_when_it_is_back() {
    // Reserve a port, then free it: nothing listens there until the store starts.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let node = start_node(addr.to_string(), 4).await;
    let request = chat(
        json!([{"role": "user", "content": STORY}]),
        json!({"max_tokens": 4}),
    );
    let (status, body) = http(node.addr, "POST", "/v1/chat/completions", Some(&request)).await;
    assert_eq!(status, 200, "{body}");

    let config = kvtier_store::Config {
        listen: addr,
        ..kvtier_store::Config::default()
    };
    let _store = kvtier_store::server::spawn(config).await.unwrap();
    let mut cached = 0;
    for _ in 0..10 {
        let (status, body) = http(node.addr, "POST", "/v1/chat/completions", Some(&request)).await;
        assert_eq!(status, 200, "{body}");
        cached = cached_tokens(&serde_json::from_str(&body).unwrap());
        if cached > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        cached > 0,
        "cached tokens never came back after kvtierd started"
    );
}

/// A kvtierd on `listener` over `store` until the returned sender fires; the store
/// outlives it, as a restarted kvtierd's ssd tier would.
fn serve_store(
    listener: TcpListener,
    store: Arc<kvtier_store::Store>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let config = kvtier_store::Config::default();
        let shutdown = async {
            let _ = stopped.await;
        };
        let _ = kvtier_store::server::serve(listener, store, &config, shutdown).await;
    });
    (stop, task)
}

async fn answer_cached(node: SocketAddr, request: &Value) -> (u64, Duration) {
    let started = Instant::now();
    let (status, body) = http(node, "POST", "/v1/chat/completions", Some(request)).await;
    assert_eq!(status, 200, "{body}");
    (
        cached_tokens(&serde_json::from_str(&body).unwrap()),
        started.elapsed(),
    )
}

#[tokio::test]
async fn kvtierd_stopped_while_serving_costs_a_recompute_and_its_blocks_return_after() {
    let store = Arc::new(kvtier_store::Store::new(&kvtier_store::Config::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, task) = serve_store(listener, store.clone());
    let node = start_node(addr.to_string(), 4).await;
    let request = chat(
        json!([{"role": "user", "content": STORY}]),
        json!({"max_tokens": 4}),
    );
    answer_cached(node.addr, &request).await;
    let (cached, _) = answer_cached(node.addr, &request).await;
    assert!(cached > 0, "the store is up: the prompt is cached");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("kvtierd stops")
        .unwrap();
    let (cached, took) = answer_cached(node.addr, &request).await;
    assert_eq!(cached, 0, "kvtierd is stopped: the prompt is recomputed");
    assert!(
        took < Duration::from_secs(5),
        "a stopped store cost {took:?}"
    );

    let listener = TcpListener::bind(addr).await.unwrap();
    let (_stop, _task) = serve_store(listener, store);
    let mut cached = 0;
    for _ in 0..20 {
        cached = answer_cached(node.addr, &request).await.0;
        if cached > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(cached > 0, "the blocks came back with kvtierd");
}

#[tokio::test]
async fn a_queued_turn_of_a_named_conversation_prefetches_its_blocks_into_pinned() {
    let config = kvtier_store::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        pinned_capacity: bytesize::ByteSize::mib(4),
        ..kvtier_store::Config::default()
    };
    let store = kvtier_store::server::spawn(config).await.unwrap();
    let node = start_node(store.addr.to_string(), 4).await;
    let header = [("X-Kvtier-Conversation", "story-42")];
    let request = chat(
        json!([{"role": "user", "content": STORY}]),
        json!({"max_tokens": 4}),
    );
    let path = "/v1/chat/completions";
    let (status, body) = http_with(node.addr, "POST", path, &header, Some(&request)).await;
    assert_eq!(status, 200, "{body}");
    let pinned = |store: &kvtier_store::Store| {
        let stats = store.stats();
        stats
            .tier(kvtier_store::tier::TierKind::Pinned)
            .unwrap()
            .blocks
    };
    // Saved after the turn, into dram: nothing asked for them to be hot.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.store.stats().blocks == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pinned(&store.store), 0);

    let (status, body) = http_with(node.addr, "POST", path, &header, Some(&request)).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pinned(&store.store) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        pinned(&store.store) > 0,
        "the second turn's hint moved the conversation's blocks into pinned"
    );
    let (_, metrics) = http(node.addr, "GET", "/metrics", None).await;
    assert!(
        metrics.contains("kvtier_node_prefetch_total{outcome=\"sent\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_malformed_conversation_header_gets_400_naming_it() {
    let store = start_store().await;
    let node = start_node(store.addr.to_string(), 4).await;
    let long = "x".repeat(300);
    let request = chat(json!([{"role": "user", "content": STORY}]), json!({}));
    let header = [("x-kvtier-conversation", long.as_str())];
    let path = "/v1/chat/completions";
    let (status, body) = http_with(node.addr, "POST", path, &header, Some(&request)).await;
    assert_eq!(status, 400, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["param"], "x-kvtier-conversation");
}

#[tokio::test]
async fn a_short_request_is_answered_while_a_long_answer_is_still_streaming() {
    let store = start_store().await;
    let node = start_node(store.addr.to_string(), 4).await;
    let long = json!({"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 120,
        "temperature": 1.0, "seed": 7, "stream": true})
    .to_string();
    let mut stream = TcpStream::connect(node.addr).await.unwrap();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{long}",
        long.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 512];
    let n = stream.read(&mut first).await.unwrap();
    let head = String::from_utf8_lossy(&first[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The long answer is under way: read it to the end in the background.
    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        (Instant::now(), String::from_utf8_lossy(&rest).into_owned())
    });
    let short = json!({"model": MODEL_ID, "prompt": "Once", "max_tokens": 2});
    let (status, _) = http(node.addr, "POST", "/v1/completions", Some(&short)).await;
    let short_done = Instant::now();
    assert_eq!(status, 200);
    let (long_done, rest) = reader.await.unwrap();
    let long_tokens = rest.matches("\"text\"").count();
    assert!(
        short_done < long_done,
        "the short request waited for the long answer ({long_tokens} more chunks)"
    );
}
