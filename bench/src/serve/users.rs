//! The simulated users: each one a task that chats through its conversation, thinking
//! between turns, and records what every turn cost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_engine::{ChatMessage, LoadedModel};
use serde_json::json;

use super::report::TurnRecord;
use super::sse::{self, Answer};
use super::Answers;

/// What one user sends: its conversation id and, per turn, the user message and the
/// answer the conversation recorded.
#[derive(Debug, Clone)]
pub struct UserPlan {
    pub user: usize,
    pub conversation: String,
    pub turns: Vec<(String, String)>,
}

/// Bounds every user keeps to.
#[derive(Debug, Clone)]
pub struct Limits {
    pub think: Duration,
    pub max_tokens: usize,
    pub answers: Answers,
    pub max_context: usize,
}

impl Limits {
    /// The answer length a turn asks for: `(max_tokens, min_tokens)`.
    fn answer_length(&self, model: &LoadedModel, recorded: &str) -> anyhow::Result<(usize, usize)> {
        if self.answers != Answers::RecordedLength {
            return Ok((self.max_tokens, 0));
        }
        let tokens = model.tokenizer.encode(recorded)?.len();
        let length = tokens.clamp(1, self.max_tokens);
        Ok((length, length))
    }
}

/// Users start this far apart, as people do not all press enter at once.
const STAGGER: Duration = Duration::from_millis(250);
/// Wait before retrying a request the node refused with 429.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// Runs every user to the end of its plan; returns all turns, in completion order.
pub async fn run_all(
    node: SocketAddr,
    model: Arc<LoadedModel>,
    plans: &[UserPlan],
    limits: &Limits,
    mode: &'static str,
) -> anyhow::Result<Vec<TurnRecord>> {
    let tasks: Vec<_> = plans
        .iter()
        .cloned()
        .map(|plan| {
            let model = model.clone();
            let limits = limits.clone();
            tokio::spawn(async move { user(node, model, plan, limits, mode).await })
        })
        .collect();
    let mut records = Vec::new();
    for task in tasks {
        records.extend(task.await??);
    }
    records.sort_by(|a, b| a.finished_s.total_cmp(&b.finished_s));
    Ok(records)
}

async fn user(
    node: SocketAddr,
    model: Arc<LoadedModel>,
    plan: UserPlan,
    limits: Limits,
    mode: &'static str,
) -> anyhow::Result<Vec<TurnRecord>> {
    let started = Instant::now();
    tokio::time::sleep(STAGGER * plan.user as u32).await;
    let mut history: Vec<ChatMessage> = Vec::new();
    let mut records = Vec::new();
    for (turn, (message, recorded)) in plan.turns.iter().enumerate() {
        history.push(ChatMessage::new("user", message));
        let text = model.chat_template.render(&history, true)?;
        let prompt = model.tokenizer.encode(&text)?.len();
        let (max_tokens, min_tokens) = limits.answer_length(&model, recorded)?;
        if prompt + max_tokens + 2 > limits.max_context {
            break;
        }
        let wire: Vec<_> = history
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let body = json!({
            "model": "model",
            "messages": wire,
            "max_tokens": max_tokens,
            "min_tokens": min_tokens,
            "temperature": 0,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let headers = [("x-kvtier-conversation", plan.conversation.as_str())];
        let (answer, retries) = loop_until_accepted(node, &body, &headers).await?;
        records.push(TurnRecord {
            mode,
            user: plan.user,
            turn,
            prompt_tokens: answer.prompt_tokens,
            cached_tokens: answer.cached_tokens,
            completion_tokens: answer.completion_tokens,
            ttft_ms: answer.ttft.unwrap_or(answer.total).as_secs_f64() * 1e3,
            total_ms: answer.total.as_secs_f64() * 1e3,
            retries,
            finished_s: started.elapsed().as_secs_f64(),
        });
        let kept = match limits.answers {
            Answers::RecordedText => recorded.clone(),
            Answers::RecordedLength | Answers::Natural => answer.text,
        };
        history.push(ChatMessage::new("assistant", kept));
        tokio::time::sleep(limits.think).await;
    }
    Ok(records)
}

/// Sends until the node accepts (429 is retried); returns the answer and the retries.
async fn loop_until_accepted(
    node: SocketAddr,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> anyhow::Result<(sse::Streamed, u32)> {
    let mut retries = 0;
    loop {
        match sse::chat(node, body, headers).await? {
            Answer::Done(streamed) => return Ok((streamed, retries)),
            Answer::Busy => {
                retries += 1;
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}
