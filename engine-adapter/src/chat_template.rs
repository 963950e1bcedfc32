//! Rendering a conversation into prompt text with the model's own chat template.
//!
//! The template is the Jinja source in the GGUF key `tokenizer.chat_template`, rendered
//! with minijinja the way Hugging Face's `apply_chat_template` renders it (blocks trimmed,
//! Python string methods available, `raise_exception`, `bos_token`/`eos_token` defined).
//! A file without a template (stories260K) gets [`PLAIN_TEMPLATE`]:
//!
//! ```text
//! System: <content>
//! User: <content>
//! Assistant: <content>
//! Assistant:            <- only with add_generation_prompt
//! ```
//!
//! Both are append-only, which kvtier's prefix reuse relies on: the rendering of
//! `messages[..n]` is a prefix of the rendering of `messages[..n + 1]`, and the generation
//! prompt is a prefix of the rendering of the assistant message that answers it.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// The template used when the model file has none; one `Role: content` line a message.
pub const PLAIN_TEMPLATE: &str = "{% for message in messages %}\
{{ message['role'] | capitalize }}: {{ message['content'] }}\n{% endfor %}\
{% if add_generation_prompt %}Assistant:{% endif %}";

const NAME: &str = "chat";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The file's template, or [`PLAIN_TEMPLATE`] when it has none.
    pub fn from_gguf(gguf: &GgufFile, tokenizer: &Tokenizer) -> Result<Self> {
        let source = gguf
            .str_opt("tokenizer.chat_template")?
            .unwrap_or(PLAIN_TEMPLATE);
        let token = |id: Option<u32>| id.and_then(|i| tokenizer.token(i)).unwrap_or_default();
        Self::new(
            source,
            &token(tokenizer.bos_id()),
            &token(tokenizer.eos_id()),
        )
    }

    /// Compiles `source`; `bos_token` and `eos_token` are visible to it by those names.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, source.to_owned())?;
        Ok(Self {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The Jinja source in use.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_plain(&self) -> bool {
        self.source == PLAIN_TEMPLATE
    }

    /// Renders `messages`, followed by the assistant's turn opener when
    /// `add_generation_prompt` is set.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(NAME)?;
        let text = template.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })?;
        Ok(text)
    }
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}
