//! The tokenizer built from GGUF metadata gives the same ids as the Hugging Face oracle
//! tokenizer.json rebuilt from the same file, on real text.

mod common;

use kvtier_engine::gguf::GgufFile;
use kvtier_engine::{ChatTemplate, Tokenizer};

/// Short cases the sample texts may not cover.
const EDGE_CASES: &[&str] = &[
    "",
    " ",
    "  two leading spaces",
    "trailing spaces   ",
    "tabs\tand\nnewlines\r\n\n",
    "Pi is 3.14159265358979 and 2^64 = 18446744073709551616.",
    "Prices: $1,299.99 or €5; 100% sure; 007; 1e-9",
    "naïve café, Zürich, São Paulo, Ελληνικά, Русский, 日本語, 한국어, العربية",
    "emoji: 👍🏽 🎉 👨‍👩‍👧 ❤️ 🇫🇷",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "<|im_start|>user\nWhat is 12*7?<|im_end|>\n<|im_start|>assistant\n84<|im_end|>\n",
    "<s>Once upon a time</s>",
    "Once upon a time",
];

fn oracle(name: &str) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(common::data(name)).expect("load oracle tokenizer.json")
}

fn ours(path: &std::path::Path) -> (Tokenizer, ChatTemplate) {
    let gguf = GgufFile::open(path).expect("open gguf");
    let tokenizer = Tokenizer::from_gguf(&gguf).expect("tokenizer from gguf");
    let template = ChatTemplate::from_gguf(&gguf, &tokenizer).expect("chat template");
    (tokenizer, template)
}

/// Sample texts, edge cases and every conversation rendered with the model's template.
fn corpus(template: &ChatTemplate) -> Vec<String> {
    let mut all = common::texts();
    all.extend(EDGE_CASES.iter().map(|s| s.to_string()));
    for conversation in common::conversations() {
        all.push(template.render(&conversation, true).expect("render"));
    }
    all
}

/// Compares ids and decoded text with the oracle; returns how many texts round-trip.
fn assert_matches_oracle(
    ours: &Tokenizer,
    oracle: &tokenizers::Tokenizer,
    texts: &[String],
) -> usize {
    let mut round_trips = 0;
    for text in texts {
        let ids = ours.encode(text).expect("encode");
        let expected = oracle.encode(text.as_str(), false).expect("oracle encode");
        assert_eq!(ids, expected.get_ids(), "ids differ for {text:?}");

        let decoded = ours.decode(&ids).expect("decode");
        let expected = oracle.decode(&ids, false).expect("oracle decode");
        assert_eq!(decoded, expected, "decoded text differs for {text:?}");
        if decoded == *text {
            round_trips += 1;
        }
    }
    round_trips
}

fn assert_stream_equals_decode(tokenizer: &Tokenizer, texts: &[String]) {
    for text in texts.iter().take(40) {
        let ids = tokenizer.encode(text).expect("encode");
        let mut stream = tokenizer.stream();
        let mut streamed = String::new();
        for &id in &ids {
            if let Some(piece) = stream.step(id).expect("stream step") {
                streamed.push_str(&piece);
            }
        }
        assert_eq!(
            streamed,
            tokenizer.decode(&ids).expect("decode"),
            "{text:?}"
        );
    }
}

/// The parts of a serialized tokenizer that decide its ids and text.
const PIPELINE_PARTS: [&str; 5] = [
    "model",
    "normalizer",
    "pre_tokenizer",
    "decoder",
    "added_tokens",
];

/// The assembled pipeline serializes to the oracle's configuration: vocabulary, merges in
/// rank order, normalizer, pre-tokenizer, decoder and special tokens.
fn assert_same_configuration(ours: &Tokenizer, oracle_file: &str) {
    let json = |t: &tokenizers::Tokenizer| -> serde_json::Value {
        serde_json::from_str(&t.to_string(false).expect("serialize")).expect("json")
    };
    let ours = json(ours.hf());
    let oracle = json(&oracle(oracle_file));
    for key in PIPELINE_PARTS {
        assert_eq!(ours[key], oracle[key], "{key} differs from {oracle_file}");
    }
}

#[test]
fn stories260k_pipeline_is_configured_like_the_oracle() {
    let (tokenizer, _) = ours(&common::stories_path());
    assert_same_configuration(&tokenizer, "stories260K.tokenizer.json");
}

#[test]
fn smollm2_pipeline_is_configured_like_the_oracle() {
    let (tokenizer, _) = ours(&common::smollm2_path());
    assert_same_configuration(&tokenizer, "SmolLM2-135M-Instruct.tokenizer.json");
}

#[test]
fn stories260k_ids_equal_the_oracle_on_real_text() {
    let (tokenizer, template) = ours(&common::stories_path());
    let texts = corpus(&template);
    let round_trips =
        assert_matches_oracle(&tokenizer, &oracle("stories260K.tokenizer.json"), &texts);

    // SentencePiece normalization is lossless except around special tokens written in
    // the text (each following piece gets its own "▁" prefix).
    let without_specials: Vec<&String> = texts
        .iter()
        .filter(|t| !t.contains("<s>") && !t.contains("</s>") && !t.contains("<unk>"))
        .collect();
    for text in &without_specials {
        let ids = tokenizer.encode(text).expect("encode");
        assert_eq!(&tokenizer.decode(&ids).expect("decode"), *text);
    }
    assert!(round_trips >= without_specials.len());
    assert_stream_equals_decode(&tokenizer, &texts);
}

#[test]
fn stories260k_special_ids_come_from_the_gguf() {
    let (tokenizer, _) = ours(&common::stories_path());
    assert_eq!(tokenizer.bos_id(), Some(1));
    assert_eq!(tokenizer.eos_id(), Some(2));
    assert_eq!(tokenizer.vocab_size(), 512);
    assert_eq!(tokenizer.encode("<s>").expect("encode"), vec![1]);
    // No BOS is added implicitly.
    let ids = tokenizer.encode("Once upon a time").expect("encode");
    assert_ne!(ids.first(), Some(&1));
}

#[test]
fn smollm2_ids_equal_the_oracle_on_real_text() {
    let (tokenizer, template) = ours(&common::smollm2_path());
    let texts = corpus(&template);
    let oracle = oracle("SmolLM2-135M-Instruct.tokenizer.json");
    let round_trips = assert_matches_oracle(&tokenizer, &oracle, &texts);
    // Byte-level BPE is lossless, special tokens included.
    assert_eq!(round_trips, texts.len());
    assert_stream_equals_decode(&tokenizer, &texts);
}

#[test]
fn smollm2_recognises_chatml_special_tokens_in_text() {
    let (tokenizer, _) = ours(&common::smollm2_path());
    let im_start = tokenizer.token_id("<|im_start|>").expect("<|im_start|>");
    let im_end = tokenizer.token_id("<|im_end|>").expect("<|im_end|>");
    let ids = tokenizer
        .encode("<|im_start|>user\nHi<|im_end|>")
        .expect("encode");
    assert_eq!(ids.first(), Some(&im_start));
    assert_eq!(ids.last(), Some(&im_end));
    assert_eq!(tokenizer.eos_id(), Some(im_end));
    // Digits are split one by one.
    let digits = tokenizer.encode("2024").expect("encode");
    assert_eq!(digits.len(), 4);
}
