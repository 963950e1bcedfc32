//! Greedy generation reproduces text checked with an independent implementation.

mod common;

use kvtier_engine::{ChatMessage, LoadedModel, Sampler};

fn greedy(loaded: &LoadedModel, prompt: &[u32], max_new_tokens: usize) -> String {
    let mut cache = loaded.model.new_cache().expect("cache");
    let stop: Vec<u32> = loaded.tokenizer.eos_id().into_iter().collect();
    let mut sampler = Sampler::greedy();
    let out = loaded
        .model
        .generate(prompt, &mut cache, &mut sampler, max_new_tokens, &stop)
        .expect("generate");
    loaded.tokenizer.decode(&out).expect("decode")
}

#[test]
fn stories260k_continues_once_upon_a_time() {
    let loaded = common::load_stories();
    let tokenizer = &loaded.tokenizer;
    let mut prompt = vec![tokenizer.bos_id().expect("bos")];
    prompt.extend(tokenizer.encode("Once upon a time").expect("encode"));

    let text = greedy(&loaded, &prompt, 40);
    let expected = ", there was a little girl named Lily. She loved to play outside in the \
                    park. One day, she saw a big, red ball.";
    assert!(text.starts_with(expected), "generated {text:?}");
}

#[test]
fn stories260k_info_names_the_weights() {
    let loaded = common::load_stories();
    let info = &loaded.info;
    assert_eq!(info.weights_digest, common::STORIES_SHA256);
    assert_eq!(info.name, "llama");
    assert_eq!((info.n_layers, info.n_kv_heads, info.head_dim), (5, 4, 8));
    assert_eq!(info.context_length, 128);
    let cfg = loaded.model.config();
    assert_eq!(cfg.rope_base, 10_000.0);
    assert_eq!((cfg.n_heads, cfg.hidden, cfg.vocab_size), (8, 64, 512));
    assert!(loaded.chat_template.is_plain());
}

#[test]
fn smollm2_answers_the_capital_of_france() {
    let loaded = LoadedModel::load(&common::smollm2_path()).expect("load SmolLM2");
    assert_eq!(loaded.info.weights_digest, common::SMOLLM2_SHA256);
    let cfg = loaded.model.config();
    assert_eq!(
        (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim),
        (30, 9, 3, 64)
    );
    assert_eq!(cfg.rope_base, 100_000.0);

    let messages = [ChatMessage::new("user", "What is the capital of France?")];
    let prompt = loaded
        .chat_template
        .render(&messages, true)
        .expect("render");
    let ids = loaded.tokenizer.encode(&prompt).expect("encode");
    let text = greedy(&loaded, &ids, 12);
    assert!(
        text.starts_with("The capital of France is Paris."),
        "generated {text:?}"
    );
}
