//! Chat templates render as the model expects and only ever append.

mod common;

use kvtier_engine::gguf::GgufFile;
use kvtier_engine::{ChatMessage, ChatTemplate, Tokenizer};

fn template(path: &std::path::Path) -> ChatTemplate {
    let gguf = GgufFile::open(path).expect("open gguf");
    let tokenizer = Tokenizer::from_gguf(&gguf).expect("tokenizer");
    ChatTemplate::from_gguf(&gguf, &tokenizer).expect("template")
}

/// Rendering `messages[..n]` is a prefix of rendering `messages[..n + 1]`, and the
/// generation prompt is a prefix of the assistant message that follows.
fn assert_append_only(template: &ChatTemplate) {
    for conversation in common::conversations() {
        for n in 0..conversation.len() {
            let before = template.render(&conversation[..n], false).expect("render");
            let after = template
                .render(&conversation[..n + 1], false)
                .expect("render");
            assert!(after.starts_with(&before), "turn {n} rewrote earlier text");
            if conversation[n].role == "assistant" {
                let prompt = template.render(&conversation[..n], true).expect("render");
                assert!(
                    after.starts_with(&prompt),
                    "turn {n} does not extend its prompt"
                );
            }
        }
    }
}

#[test]
fn plain_template_renders_role_lines() {
    let template = template(&common::stories_path());
    assert!(template.is_plain());
    let messages = [
        ChatMessage::new("user", "Tell me a story."),
        ChatMessage::new("assistant", "Once upon a time"),
    ];
    let text = template.render(&messages, false).expect("render");
    assert_eq!(
        text,
        "User: Tell me a story.\nAssistant: Once upon a time\n"
    );
    let text = template.render(&messages[..1], true).expect("render");
    assert_eq!(text, "User: Tell me a story.\nAssistant:");
}

#[test]
fn plain_template_is_append_only() {
    assert_append_only(&template(&common::stories_path()));
}

#[test]
fn smollm2_template_is_chatml_with_a_default_system_message() {
    let template = template(&common::smollm2_path());
    assert!(!template.is_plain());
    let messages = [ChatMessage::new("user", "What is the capital of France?")];
    let text = template.render(&messages, true).expect("render");
    let expected = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
                    Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of \
                    France?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(text, expected);

    let with_system = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
    ];
    let text = template.render(&with_system, false).expect("render");
    assert_eq!(
        text,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn smollm2_template_is_append_only() {
    assert_append_only(&template(&common::smollm2_path()));
}

#[test]
fn templates_can_raise_errors() {
    let source = "{% if messages|length == 0 %}{{ raise_exception('no messages') }}{% endif %}";
    let template = ChatTemplate::new(source, "<s>", "</s>").expect("compile");
    assert!(template.render(&[], false).is_err());
    let text = template.render(&[ChatMessage::new("user", "x")], false);
    assert_eq!(text.expect("render"), "");
}
