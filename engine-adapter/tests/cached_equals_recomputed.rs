//! Multi-turn generation on stories260K through a kvtierd started here: what comes back
//! from the store must give the same tokens and logits as recomputing.

use std::path::PathBuf;
use std::sync::Arc;

use kvtier_client::{KvClient, Namespace};
use kvtier_engine::connector::KvtierConnector;
use kvtier_engine::engine::{namespace_fields, Engine, Sequence};
use kvtier_engine::sampling::argmax;
use kvtier_engine::{ChatMessage, LoadedModel};
use kvtier_store::server::spawn;
use kvtier_store::Config;

// stories260K's context is 128 tokens: three short turns fit.
const TURNS: [&str; 3] = ["Tell me a story.", "What did the cat find?", "Who came?"];
const ANSWER_TOKENS: usize = 12;

fn stories() -> Arc<LoadedModel> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/stories260Ktok512.gguf");
    Arc::new(LoadedModel::load(&path).unwrap())
}

fn prompt(model: &LoadedModel, messages: &[ChatMessage], generation: bool) -> Vec<u32> {
    let text = model.chat_template.render(messages, generation).unwrap();
    let mut tokens: Vec<u32> = model.tokenizer.bos_id().into_iter().collect();
    tokens.extend(model.tokenizer.encode(&text).unwrap());
    tokens
}

async fn generate(
    engine: &Engine<KvtierConnector>,
    mut sequence: Sequence,
    first: u32,
) -> (Sequence, Vec<u32>) {
    let mut answer = vec![first];
    while answer.len() < ANSWER_TOKENS {
        let (next_sequence, logits) = engine
            .extend(sequence, &answer[answer.len() - 1..])
            .await
            .unwrap();
        sequence = next_sequence;
        answer.push(argmax(&logits));
    }
    (sequence, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_generation_equals_recomputing_on_every_turn() {
    let server = spawn(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    })
    .await
    .unwrap();
    let client = KvClient::connect(&server.addr.to_string()).await.unwrap();
    let model = stories();
    let namespace = Namespace::from_fields(&namespace_fields(&model.info, "test", 4));
    let connector = KvtierConnector::new(client, namespace.clone());
    let cached = Engine::new(model.clone(), namespace.clone(), Some(connector));
    let recompute: Engine<KvtierConnector> = Engine::new(model.clone(), namespace, None);

    let mut messages = Vec::new();
    for (turn, user) in TURNS.iter().enumerate() {
        messages.push(ChatMessage::new("user", *user));
        let tokens = prompt(&model, &messages, true);

        let (sequence, logits, report) = cached.prefill(tokens.clone(), true).await.unwrap();
        let (reference, reference_logits, _) = recompute.prefill(tokens, false).await.unwrap();
        if turn > 0 {
            assert!(report.cached_tokens > 0, "turn {turn} reused nothing");
        }
        let max_diff = logits
            .iter()
            .zip(&reference_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            max_diff < 1e-4,
            "turn {turn}: first-token logits differ by {max_diff}"
        );

        let (sequence, answer) = generate(&cached, sequence, argmax(&logits)).await;
        let (_, reference_answer) =
            generate(&recompute, reference, argmax(&reference_logits)).await;
        assert_eq!(
            answer, reference_answer,
            "turn {turn}: generated tokens differ"
        );

        messages.push(ChatMessage::new(
            "assistant",
            model.tokenizer.decode(&answer).unwrap(),
        ));
        let full = prompt(&model, &messages, false);
        let mut sequence = cached.continue_to(sequence, &full).await.unwrap();
        let saved = cached.save(&mut sequence).await.unwrap();
        assert!(saved.stored > 0, "turn {turn} saved nothing");
    }
    assert!(server.store.stats().hits() > 0);
}
