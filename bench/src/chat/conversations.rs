//! ShareGPT conversations as a chat server sees them: alternating user and assistant
//! messages. A conversation is read up to the first message that breaks the alternation.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

#[derive(Deserialize)]
struct Record {
    id: String,
    conversations: Vec<Message>,
}

#[derive(Deserialize)]
struct Message {
    from: String,
    value: String,
}

/// One turn: what the user said and the conversation's own answer.
#[derive(Debug, Clone)]
pub struct Turn {
    pub user: String,
    pub answer: String,
}

/// A conversation in file order.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub id: String,
    pub turns: Vec<Turn>,
}

/// Reads a ShareGPT JSONL file: `{"id", "conversations": [{"from", "value"}]}` per line.
pub fn load(path: &Path) -> anyhow::Result<Vec<Conversation>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read conversations from {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// Parses ShareGPT JSONL text; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> anyhow::Result<Vec<Conversation>> {
    let mut conversations = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let record: Record = serde_json::from_str(line)
            .with_context(|| format!("{source} line {}: not a ShareGPT record", number + 1))?;
        let turns = turns(&record.conversations);
        if !turns.is_empty() {
            conversations.push(Conversation {
                id: record.id,
                turns,
            });
        }
    }
    anyhow::ensure!(
        !conversations.is_empty(),
        "{source} holds no usable conversation"
    );
    Ok(conversations)
}

fn turns(messages: &[Message]) -> Vec<Turn> {
    let start = messages
        .iter()
        .position(|m| m.from == "human")
        .unwrap_or(messages.len());
    messages[start..]
        .chunks_exact(2)
        .map_while(|pair| match (&pair[0], &pair[1]) {
            (user, answer) if user.from == "human" && answer.from == "gpt" => Some(Turn {
                user: user.value.clone(),
                answer: answer.value.clone(),
            }),
            _ => None,
        })
        .collect()
}
