//! Mooncake-format traces: one JSON object a line, `{"timestamp" (ms), "input_length",
//! "output_length", "hash_ids"}`, where each hash id names one prefix-chained block, so
//! equal ids at the start of two requests are reusable KV.
//!
//! Loading sorts requests by timestamp (stably), renumbers blocks densely, and derives
//! what a replay needs: each block's parent and position, each request's conversation,
//! and for every block reference the index of the next request that uses that block
//! (Belady's oracle).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

#[derive(Deserialize)]
struct Record {
    timestamp: u64,
    input_length: u64,
    hash_ids: Vec<u64>,
}

/// A request as the replay sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub timestamp_ms: u64,
    pub input_tokens: u64,
    /// Dense block ids in chain order.
    pub blocks: Vec<u32>,
    /// For each block, the index of the next request that references it (`NEVER` if none).
    pub next_use: Vec<u32>,
    pub conversation: u32,
}

/// A request index that no request has.
pub const NEVER: u32 = u32::MAX;

/// The parent of a block at position 0.
pub const NO_PARENT: u32 = u32::MAX;

/// A loaded trace.
#[derive(Debug, Clone)]
pub struct Trace {
    pub requests: Vec<Request>,
    /// Chain position of every block (0 for the first block of a chain).
    pub position: Vec<u32>,
    /// The block before every block in its chain (`NO_PARENT` at position 0).
    pub parent: Vec<u32>,
    pub conversations: usize,
}

impl Trace {
    pub fn blocks(&self) -> usize {
        self.position.len()
    }

    pub fn references(&self) -> u64 {
        self.requests.iter().map(|r| r.blocks.len() as u64).sum()
    }
}

pub fn load(path: &Path) -> anyhow::Result<Trace> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the trace {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// Parses trace text; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> anyhow::Result<Trace> {
    let mut records = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(line)
            .with_context(|| format!("{source} line {}: not a trace record", number + 1))?;
        records.push(record);
    }
    anyhow::ensure!(!records.is_empty(), "{source} holds no request");
    records.sort_by_key(|r| r.timestamp);
    Ok(build(records))
}

fn build(records: Vec<Record>) -> Trace {
    let mut ids: HashMap<u64, u32> = HashMap::new();
    let mut position = Vec::new();
    let mut parent = Vec::new();
    let mut requests: Vec<Request> = records
        .into_iter()
        .map(|record| {
            let blocks = record
                .hash_ids
                .iter()
                .enumerate()
                .scan(NO_PARENT, |previous, (depth, hash)| {
                    let id = *ids.entry(*hash).or_insert_with(|| {
                        position.push(depth as u32);
                        parent.push(*previous);
                        (position.len() - 1) as u32
                    });
                    *previous = id;
                    Some(id)
                })
                .collect::<Vec<u32>>();
            Request {
                timestamp_ms: record.timestamp,
                input_tokens: record.input_length,
                next_use: vec![NEVER; blocks.len()],
                blocks,
                conversation: 0,
            }
        })
        .collect();
    fill_next_use(&mut requests, position.len());
    let conversations = assign_conversations(&mut requests, position.len());
    Trace {
        requests,
        position,
        parent,
        conversations,
    }
}

fn fill_next_use(requests: &mut [Request], blocks: usize) {
    let mut next = vec![NEVER; blocks];
    for (index, request) in requests.iter_mut().enumerate().rev() {
        for (slot, block) in request.blocks.iter().enumerate() {
            request.next_use[slot] = next[*block as usize];
            next[*block as usize] = index as u32;
        }
    }
}

/// The trace names no conversations, so they are derived as a chat server would see
/// them: a request whose prompt starts with the whole prompt of an earlier request (all
/// but that request's last, possibly partial, block) continues that request's
/// conversation; any other request starts a new one. A prefix of one block is a shared
/// system prompt, not a conversation. Returns how many conversations there are.
fn assign_conversations(requests: &mut [Request], blocks: usize) -> usize {
    let mut seen = vec![false; blocks];
    let mut ends: HashMap<u32, u32> = HashMap::new();
    let mut count = 0u32;
    for request in requests.iter_mut() {
        let matched = request
            .blocks
            .iter()
            .take_while(|b| seen[**b as usize])
            .count();
        let continued = (matched >= 2)
            .then(|| ends.get(&request.blocks[matched - 1]).copied())
            .flatten();
        request.conversation = continued.unwrap_or_else(|| {
            count += 1;
            count - 1
        });
        for block in &request.blocks {
            seen[*block as usize] = true;
        }
        for block in request.blocks.iter().rev().take(2) {
            ends.insert(*block, request.conversation);
        }
    }
    count as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = r#"
{"timestamp": 5, "input_length": 1500, "output_length": 9, "hash_ids": [0, 1, 2]}
{"timestamp": 1, "input_length": 1000, "output_length": 9, "hash_ids": [0, 7]}
{"timestamp": 9, "input_length": 2000, "output_length": 9, "hash_ids": [0, 1, 2, 3]}
"#;

    #[test]
    fn requests_are_replayed_in_timestamp_order_with_dense_ids() {
        let trace = parse(TRACE, "test").unwrap();
        let times: Vec<u64> = trace.requests.iter().map(|r| r.timestamp_ms).collect();
        assert_eq!(times, [1, 5, 9]);
        assert_eq!(trace.requests[0].blocks, [0, 1]);
        assert_eq!(trace.requests[1].blocks, [0, 2, 3]);
        assert_eq!(trace.position, [0, 1, 1, 2, 3]);
        assert_eq!(trace.parent, [NO_PARENT, 0, 0, 2, 3]);
    }

    #[test]
    fn next_use_points_at_the_next_request_with_the_block() {
        let trace = parse(TRACE, "test").unwrap();
        assert_eq!(trace.requests[0].next_use, [1, NEVER]);
        assert_eq!(trace.requests[1].next_use, [2, 2, 2]);
        assert_eq!(trace.requests[2].next_use, [NEVER; 4]);
    }

    #[test]
    fn a_request_extending_an_earlier_prompt_continues_its_conversation() {
        let trace = parse(TRACE, "test").unwrap();
        let conversations: Vec<u32> = trace.requests.iter().map(|r| r.conversation).collect();
        assert_eq!(conversations, [0, 1, 1]);
        assert_eq!(trace.conversations, 2);
    }
}
