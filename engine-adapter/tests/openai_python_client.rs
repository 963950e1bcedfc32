//! The OpenAI Python client against kvtier-node: `tests/openai_client.py` sends a two-turn
//! streaming chat and checks the second turn's cached-token count. `scripts/setup.sh`
//! installs the client (`pip install openai`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kvtier_engine::node::{self, NodeConfig};

const MODEL_ID: &str = "stories260K";
const BLOCK_TOKENS: u32 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_streams_two_turns_and_sees_cached_tokens() {
    let installed = Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed,
        "python3 with the openai package is needed: run scripts/setup.sh"
    );
    let store = kvtier_store::server::spawn(kvtier_store::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..kvtier_store::Config::default()
    })
    .await
    .unwrap();
    let config = NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: store.addr.to_string(),
        model_id: MODEL_ID.into(),
        tenant: "test".into(),
        block_tokens: BLOCK_TOKENS,
        queue_depth: 4,
        fetch_deadline: Duration::from_secs(2),
        layer_wise: true,
        cache: true,
    };
    let node = node::start(Arc::new(common::load_stories()), config)
        .await
        .unwrap();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let base_url = format!("http://{}/v1", node.addr);
    let run = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(base_url)
            .arg(MODEL_ID)
            .arg(BLOCK_TOKENS.to_string())
            .output()
    });
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the client finished within 120 s")
        .unwrap()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "client failed: {stderr}{stdout}");
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(seen["second_cached"].as_u64().unwrap() >= u64::from(BLOCK_TOKENS));
}
