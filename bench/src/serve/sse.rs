//! A minimal HTTP/1.1 client for the node's streaming chat endpoint: sends one request
//! with `Connection: close`, undoes chunked transfer encoding as bytes arrive and hands
//! back each server-sent event's data, timing the first piece of text.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one streamed turn gave.
#[derive(Debug, Clone, Default)]
pub struct Streamed {
    /// Time from sending the request to the first non-empty text delta.
    pub ttft: Option<Duration>,
    pub total: Duration,
    pub text: String,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
}

/// How a request ended.
pub enum Answer {
    Done(Streamed),
    /// 429: the node's queue was full.
    Busy,
}

/// POSTs `body` to `/v1/chat/completions` and reads the event stream to its end.
pub async fn chat(
    addr: SocketAddr,
    body: &Value,
    headers: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach the node at {addr}"))?;
    let body = body.to_string();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;

    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let head_end = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("the node closed the connection before its response head");
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(at) = find(&raw, b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    if status == 429 {
        return Ok(Answer::Busy);
    }
    let chunked = head.contains("transfer-encoding: chunked");
    let mut body = Dechunk::new(chunked);
    body.push(&raw[head_end..]);
    let mut turn = Streamed::default();
    let mut events = String::new();
    loop {
        events.push_str(&String::from_utf8_lossy(&body.take()));
        while let Some(at) = events.find("\n\n") {
            let event: String = events.drain(..at + 2).collect();
            if status != 200 {
                bail!("the node answered {status}: {}", event.trim());
            }
            if read_event(event.trim(), &mut turn, started)? {
                turn.total = started.elapsed();
                return Ok(Answer::Done(turn));
            }
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            let rest = String::from_utf8_lossy(&body.take()).to_string();
            bail!("the stream ended before [DONE] (status {status}): {events}{rest}");
        }
        body.push(&buf[..n]);
    }
}

/// Applies one event; true at `[DONE]`.
fn read_event(event: &str, turn: &mut Streamed, started: Instant) -> anyhow::Result<bool> {
    let Some(data) = event.strip_prefix("data:").map(str::trim) else {
        return Ok(false);
    };
    if data == "[DONE]" {
        return Ok(true);
    }
    let chunk: Value = serde_json::from_str(data).context("an event is not JSON")?;
    if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
        if !text.is_empty() && turn.ttft.is_none() {
            turn.ttft = Some(started.elapsed());
        }
        turn.text.push_str(text);
    }
    if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
        turn.prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0);
        turn.completion_tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
        turn.cached_tokens = usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0);
    }
    Ok(false)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Incremental undoing of chunked transfer encoding.
struct Dechunk {
    chunked: bool,
    pending: Vec<u8>,
    out: Vec<u8>,
}

impl Dechunk {
    fn new(chunked: bool) -> Self {
        Dechunk {
            chunked,
            pending: Vec::new(),
            out: Vec::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if !self.chunked {
            self.out.extend_from_slice(bytes);
            return;
        }
        self.pending.extend_from_slice(bytes);
        while let Some(line_end) = find(&self.pending, b"\r\n") {
            let size_text = String::from_utf8_lossy(&self.pending[..line_end]).to_string();
            let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
                self.pending.clear();
                return;
            };
            let start = line_end + 2;
            if self.pending.len() < start + size + 2 {
                return;
            }
            self.out
                .extend_from_slice(&self.pending[start..start + size]);
            self.pending.drain(..start + size + 2);
        }
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::Dechunk;

    #[test]
    fn chunks_split_anywhere_reassemble_the_body() {
        let wire = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        for cut in 0..wire.len() {
            let mut d = Dechunk::new(true);
            d.push(&wire[..cut]);
            let mut body = d.take();
            d.push(&wire[cut..]);
            body.extend(d.take());
            assert_eq!(body, b"hello, world", "cut at {cut}");
        }
    }
}
