//! The HTTP handlers: turn a request into a queued job and the job's events into an
//! OpenAI-shaped JSON body or a stream of server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::api::{self, ApiError, ChatRequest, CompletionRequest, Generation, Prompt};
use super::worker::Event;
use super::NodeState;

type Shared = State<Arc<NodeState>>;

/// Which endpoint a response is for: the object names and where the text goes.
#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

pub async fn chat(
    State(state): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let conversation = api::conversation(&headers)?;
    let (request, sampling): (ChatRequest, _) = api::parse(&body)?;
    let generation = sampling.check(&state.model_id)?;
    let messages = api::chat_messages(&request.messages)?;
    let model = &state.model;
    let prompt = model
        .chat_template
        .render(&messages, true)
        .map_err(|e| ApiError::invalid(Some("messages"), format!("messages: {e}")))?;
    let tokens = model
        .tokenizer
        .encode(&prompt)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    run(&state, tokens, conversation, generation, Kind::Chat).await
}

pub async fn completion(
    State(state): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let conversation = api::conversation(&headers)?;
    let (request, sampling): (CompletionRequest, _) = api::parse(&body)?;
    let generation = sampling.check(&state.model_id)?;
    let prompt = match request.prompt {
        Prompt::One(text) => text,
        Prompt::Many(mut texts) if texts.len() == 1 => texts.remove(0),
        Prompt::Many(_) => {
            return Err(ApiError::invalid(Some("prompt"), "prompt: give one string"));
        }
    };
    let mut tokens: Vec<u32> = state.model.tokenizer.bos_id().into_iter().collect();
    let text = state
        .model
        .tokenizer
        .encode(&prompt)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tokens.extend(text);
    run(&state, tokens, conversation, generation, Kind::Completion).await
}

async fn run(
    state: &NodeState,
    tokens: Vec<u32>,
    conversation: Option<String>,
    generation: Generation,
    kind: Kind,
) -> Result<Response, ApiError> {
    let limit = state.model.info.context_length;
    if tokens.is_empty() || tokens.len() + generation.max_tokens > limit {
        let field = if matches!(kind, Kind::Chat) {
            "messages"
        } else {
            "prompt"
        };
        return Err(ApiError::invalid(
            Some(field),
            format!(
                "{field}: {} prompt tokens plus max_tokens {} exceed the context of {limit}",
                tokens.len(),
                generation.max_tokens
            ),
        ));
    }
    let events = state
        .queue
        .submit(tokens, conversation, generation.clone())
        .ok_or_else(|| ApiError::busy(state.queue.capacity()))?;
    let meta = Meta::new(&state.model_id, kind);
    if generation.stream {
        Ok(Sse::new(stream(events, meta, generation.include_usage)).into_response())
    } else {
        Ok(Json(collect(events, meta).await?).into_response())
    }
}

/// Identity of one response.
#[derive(Clone)]
struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Meta {
    fn new(model: &str, kind: Kind) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let prefix = if matches!(kind, Kind::Chat) {
            "chatcmpl"
        } else {
            "cmpl"
        };
        Meta {
            id: format!("{prefix}-{:x}", now.as_nanos()),
            created: now.as_secs(),
            model: model.to_string(),
            kind,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn body(&self, chunk: bool, choices: Value, usage: Option<Value>) -> Value {
        let mut body = json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            body["usage"] = usage;
        }
        body
    }

    /// A choice carrying `text` (a whole answer, or a streamed delta).
    fn choice(&self, text: &str, finish: Option<&str>, chunk: bool) -> Value {
        match (self.kind, chunk) {
            (Kind::Chat, false) => json!({"index": 0, "finish_reason": finish,
                "message": {"role": "assistant", "content": text}}),
            (Kind::Chat, true) => json!({"index": 0, "finish_reason": finish,
                "delta": if text.is_empty() && finish.is_none() {
                    json!({"role": "assistant", "content": ""})
                } else if text.is_empty() { json!({}) } else { json!({"content": text}) }}),
            (Kind::Completion, _) => json!({"index": 0, "text": text,
                "finish_reason": finish, "logprobs": null}),
        }
    }
}

fn usage(prompt: usize, cached: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

async fn collect(mut events: mpsc::Receiver<Event>, meta: Meta) -> Result<Value, ApiError> {
    let (mut prompt, mut cached, mut text) = (0, 0, String::new());
    while let Some(event) = events.recv().await {
        match event {
            Event::Started {
                prompt_tokens,
                cached_tokens,
            } => (prompt, cached) = (prompt_tokens, cached_tokens),
            Event::Text(piece) => text.push_str(&piece),
            Event::Done {
                completion_tokens,
                finish_reason,
            } => {
                let choice = meta.choice(&text, Some(finish_reason), false);
                let usage = usage(prompt, cached, completion_tokens);
                return Ok(meta.body(false, json!([choice]), Some(usage)));
            }
            Event::Failed(message) => return Err(ApiError::internal(message)),
        }
    }
    Err(ApiError::internal("the request ended without an answer"))
}

/// The events as SSE chunks, ending with `[DONE]`. Dropping the stream (the client went
/// away) drops the receiver, which cancels the request.
fn stream(
    events: mpsc::Receiver<Event>,
    meta: Meta,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let state = (events, meta, (0usize, 0usize), false);
    let chunks =
        futures::stream::unfold(state, move |(mut events, meta, counts, done)| async move {
            if done {
                return None;
            }
            let event = events.recv().await?;
            let (chunks, counts, done) = sse_chunks(event, &meta, counts, include_usage);
            Some((chunks, (events, meta, counts, done)))
        });
    chunks.flat_map(|chunks| {
        futures::stream::iter(
            chunks
                .into_iter()
                .map(|data| Ok(SseEvent::default().data(data))),
        )
    })
}

/// The SSE data lines for one event; `counts` are (prompt, cached) tokens; the flag says
/// the stream is over.
fn sse_chunks(
    event: Event,
    meta: &Meta,
    counts: (usize, usize),
    include_usage: bool,
) -> (Vec<String>, (usize, usize), bool) {
    match event {
        Event::Started {
            prompt_tokens,
            cached_tokens,
        } => {
            let first = meta.choice("", None, true);
            let chunk = meta.body(true, json!([first]), None).to_string();
            (vec![chunk], (prompt_tokens, cached_tokens), false)
        }
        Event::Text(piece) => {
            let choice = meta.choice(&piece, None, true);
            (
                vec![meta.body(true, json!([choice]), None).to_string()],
                counts,
                false,
            )
        }
        Event::Done {
            completion_tokens,
            finish_reason,
        } => {
            let last = meta.choice("", Some(finish_reason), true);
            let usage = include_usage.then(|| usage(counts.0, counts.1, completion_tokens));
            let chunk = meta.body(true, json!([last]), usage).to_string();
            (vec![chunk, "[DONE]".to_string()], counts, true)
        }
        Event::Failed(message) => {
            let error = json!({"error": {"message": message, "type": "server_error"}});
            (vec![error.to_string(), "[DONE]".to_string()], counts, true)
        }
    }
}

pub async fn models(State(state): Shared) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": state.model_id,
        "object": "model",
        "created": 0,
        "owned_by": "kvtier",
        "max_model_len": state.model.info.context_length,
    }]}))
}

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn metrics(State(state): Shared) -> String {
    state.metrics.render()
}
