//! The OpenAI-compatible wire types: requests as clients send them, checked into
//! [`Generation`] parameters, and the errors they get back.
//!
//! Fields the node does not use (`user`, `logprobs: false`, `presence_penalty`, ...) are
//! ignored, as the common servers do; values it cannot honour (`n` above 1) are refused
//! with a 400 whose `param` names the field.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::ChatMessage;

/// Defaults and bounds for a request.
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// The header naming the conversation a request continues.
pub const CONVERSATION_HEADER: &str = "x-kvtier-conversation";
/// Longest conversation id, in bytes.
const MAX_CONVERSATION_BYTES: usize = 256;
const MAX_STOP_SEQUENCES: usize = 4;

/// A request refused or failed, rendered as OpenAI's error body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// The field at fault, as a path into the request body (`messages[0].role`).
    pub param: Option<String>,
}

impl ApiError {
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    pub fn busy(queue: usize) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            message: format!("the node is busy: {queue} requests are already queued; retry"),
            param: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message: message.into(),
            param: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": null,
        }});
        (self.status, Json(body)).into_response()
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Message content: a string or a list of parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<serde_json::Value>),
}

#[derive(Debug, Deserialize)]
pub struct WireMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// Sampling fields shared by both endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    /// Tokens generated before an end-of-text token or a stop sequence may end the answer
    /// (an extension of vLLM's and other servers, for benchmarks that fix answer lengths).
    pub min_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields of `POST /v1/chat/completions` besides [`Sampling`]; [`parse`] decodes the
/// two apart, so that a mistyped sampling field is named by its path (which
/// `#[serde(flatten)]` would hide).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<WireMessage>,
}

/// The fields of `POST /v1/completions` besides [`Sampling`].
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// What a request asks the worker to do after its prompt.
#[derive(Debug, Clone)]
pub struct Generation {
    pub max_tokens: usize,
    /// The answer does not end before this many tokens (at most `max_tokens`).
    pub min_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// The conversation a request continues, from [`CONVERSATION_HEADER`]: 1 to 256 visible
/// ASCII characters, or absent.
pub fn conversation(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(CONVERSATION_HEADER) else {
        return Ok(None);
    };
    let refuse = |why: &str| {
        ApiError::invalid(
            Some(CONVERSATION_HEADER),
            format!("{CONVERSATION_HEADER}: {why}"),
        )
    };
    let id = value
        .to_str()
        .map_err(|_| refuse("must be visible ASCII"))?;
    if id.is_empty() || id.len() > MAX_CONVERSATION_BYTES {
        return Err(refuse("must be 1 to 256 characters"));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(refuse("must be visible ASCII without spaces"));
    }
    Ok(Some(id.to_string()))
}

/// Decodes a request body; a value of the wrong type is refused naming its path in the
/// body (`max_tokens: invalid type: string "ten", expected i64`), as `param` too. Returns
/// the endpoint's own fields and the sampling fields of the same body.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<(T, Sampling), ApiError> {
    let body: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("malformed request body: {e}")))?;
    Ok((decode(&body)?, decode(&body)?))
}

fn decode<T: serde::de::DeserializeOwned>(body: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        // A missing field is reported at the root, and its message names it.
        if path == "." {
            return ApiError::invalid(None, format!("malformed request body: {}", e.inner()));
        }
        ApiError::invalid(Some(&path), format!("{path}: {}", e.inner()))
    })
}

impl Sampling {
    /// Checks every field against what the node supports.
    pub fn check(&self, served_model: &str) -> Result<Generation, ApiError> {
        if let Some(model) = &self.model {
            if model != served_model {
                return Err(ApiError {
                    status: StatusCode::NOT_FOUND,
                    kind: "invalid_request_error",
                    message: format!(
                        "the model `{model}` does not exist; this node serves `{served_model}`"
                    ),
                    param: Some("model".into()),
                });
            }
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(
                Some("n"),
                "n: only 1 choice per request is supported",
            ));
        }
        let (max_tokens, field) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(n), _) => (n, "max_completion_tokens"),
            (None, Some(n)) => (n, "max_tokens"),
            (None, None) => (DEFAULT_MAX_TOKENS as i64, "max_tokens"),
        };
        if max_tokens < 1 {
            return Err(ApiError::invalid(
                Some(field),
                format!("{field} must be at least 1"),
            ));
        }
        let min_tokens = self.min_tokens.unwrap_or(0);
        if !(0..=max_tokens).contains(&min_tokens) {
            return Err(ApiError::invalid(
                Some("min_tokens"),
                format!("min_tokens must be between 0 and {field} ({max_tokens})"),
            ));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                Some("temperature"),
                "temperature must be between 0 and 2",
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(Some("top_p"), "top_p must be in (0, 1]"));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP_SEQUENCES || stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("stop takes up to {MAX_STOP_SEQUENCES} non-empty strings"),
            ));
        }
        Ok(Generation {
            max_tokens: max_tokens as usize,
            min_tokens: min_tokens as usize,
            temperature,
            top_p,
            seed: self.seed.unwrap_or(0),
            stop,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

/// The conversation as the chat template takes it.
pub fn chat_messages(messages: &[WireMessage]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "messages must not be empty",
        ));
    }
    messages
        .iter()
        .map(|m| {
            if !matches!(
                m.role.as_str(),
                "system" | "developer" | "user" | "assistant"
            ) {
                return Err(ApiError::invalid(
                    Some("messages"),
                    format!("messages: unsupported role `{}`", m.role),
                ));
            }
            let role = if m.role == "developer" {
                "system"
            } else {
                &m.role
            };
            // Only an assistant turn may come without content (as after a tool call).
            if m.content.is_none() && role != "assistant" {
                return Err(ApiError::invalid(
                    Some("messages"),
                    format!("messages: a `{}` message needs content", m.role),
                ));
            }
            Ok(ChatMessage::new(role, text(m.content.as_ref())?))
        })
        .collect()
}

fn text(content: Option<&Content>) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(s)) => Ok(s.clone()),
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(
                |part| match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(text)) => Ok(text),
                    _ => Err(ApiError::invalid(
                        Some("messages"),
                        "messages: only text content parts are supported",
                    )),
                },
            )
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_message_without_content_is_refused_naming_messages() {
        for body in [
            br#"{"messages":[{"role":"user"}]}"#.as_slice(),
            br#"{"messages":[{"role":"user","content":null}]}"#.as_slice(),
        ] {
            let (req, _): (ChatRequest, _) = parse(body).unwrap();
            let error = chat_messages(&req.messages).unwrap_err();
            assert!(format!("{error:?}").contains("needs content"), "{error:?}");
        }
        let (req, _): (ChatRequest, _) =
            parse(br#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant"}]}"#)
                .unwrap();
        assert_eq!(chat_messages(&req.messages).unwrap().len(), 2);
    }

    #[test]
    fn defaults_are_greedy_free_sampling_with_a_token_limit() {
        let g = Sampling::default().check("m").unwrap();
        assert_eq!(g.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!((g.temperature, g.top_p), (1.0, 1.0));
        assert!(g.stop.is_empty());
    }

    #[test]
    fn out_of_range_fields_are_refused_by_name() {
        let cases = [
            (r#"{"messages":[],"temperature":3}"#, "temperature"),
            (r#"{"messages":[],"top_p":0}"#, "top_p"),
            (r#"{"messages":[],"max_tokens":0}"#, "max_tokens"),
            (r#"{"messages":[],"n":2}"#, "n"),
            (r#"{"messages":[],"stop":["a","b","c","d","e"]}"#, "stop"),
        ];
        for (body, field) in cases {
            let (_, sampling): (ChatRequest, _) = parse(body.as_bytes()).unwrap();
            let err = sampling.check("m").unwrap_err();
            assert_eq!(err.param.as_deref(), Some(field), "{body}");
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn text_parts_are_joined_and_other_parts_refused() {
        let (req, _): (ChatRequest, _) = parse(
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(chat_messages(&req.messages).unwrap()[0].content, "ab");
        let (req, _): (ChatRequest, _) = parse(
            br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#,
        )
        .unwrap();
        assert!(chat_messages(&req.messages).is_err());
    }

    #[test]
    fn a_missing_field_is_named_in_the_error() {
        let err = parse::<ChatRequest>(br#"{"model":"m"}"#).unwrap_err();
        assert!(err.message.contains("messages"), "{}", err.message);
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_with_its_path() {
        let cases = [
            (r#"{"messages":"hi"}"#, "messages"),
            (r#"{"messages":[],"max_tokens":"ten"}"#, "max_tokens"),
            (
                r#"{"messages":[{"role":"user","content":7}]}"#,
                "messages[0].content",
            ),
        ];
        for (body, path) in cases {
            let err = parse::<ChatRequest>(body.as_bytes()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert_eq!(err.param.as_deref(), Some(path), "{body}");
            assert!(
                err.message.starts_with(&format!("{path}: ")),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn broken_json_and_trailing_bytes_are_malformed_bodies() {
        for body in [r#"{"messages":["#, r#"{"messages":[]} x"#] {
            let err = parse::<ChatRequest>(body.as_bytes()).unwrap_err();
            assert!(
                err.message.starts_with("malformed request body"),
                "{}",
                err.message
            );
            assert_eq!(err.param, None);
        }
    }
}
