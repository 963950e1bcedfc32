//! A minimal Redis client speaking RESP2 over one TCP connection: SET, GET, PING and
//! FLUSHALL, one request in flight, no pipelining. Values are written straight from the
//! caller's buffer and read into one allocation of the announced length.

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub struct RespConn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: String,
}

impl RespConn {
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        Ok(RespConn {
            reader: BufReader::with_capacity(64 << 10, read),
            writer,
            line: String::new(),
        })
    }

    pub async fn ping(&mut self) -> anyhow::Result<()> {
        self.command(&[b"PING"]).await?;
        self.simple_reply("PONG").await
    }

    pub async fn flushall(&mut self) -> anyhow::Result<()> {
        self.command(&[b"FLUSHALL"]).await?;
        self.simple_reply("OK").await
    }

    pub async fn set(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.command(&[b"SET", key, value]).await?;
        self.simple_reply("OK").await
    }

    /// The value of `key`, `None` when Redis has none.
    pub async fn get(&mut self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        self.command(&[b"GET", key]).await?;
        let header = self.read_line().await?;
        let Some(length) = header.strip_prefix('$') else {
            anyhow::bail!("GET: unexpected reply {header:?}");
        };
        let length: i64 = length.parse().context("GET: bad bulk length")?;
        if length < 0 {
            return Ok(None);
        }
        let mut value = vec![0u8; length as usize + 2];
        self.reader.read_exact(&mut value).await?;
        anyhow::ensure!(value.ends_with(b"\r\n"), "GET: bulk reply not terminated");
        value.truncate(length as usize);
        Ok(Some(value))
    }

    /// Sends one command as an array of bulk strings.
    async fn command(&mut self, parts: &[&[u8]]) -> anyhow::Result<()> {
        let mut head = format!("*{}\r\n", parts.len()).into_bytes();
        let (last, small) = parts.split_last().context("empty command")?;
        for part in small {
            head.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            head.extend_from_slice(part);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(format!("${}\r\n", last.len()).as_bytes());
        self.writer.write_all(&head).await?;
        self.writer.write_all(last).await?;
        self.writer.write_all(b"\r\n").await?;
        Ok(())
    }

    async fn simple_reply(&mut self, expected: &str) -> anyhow::Result<()> {
        let line = self.read_line().await?;
        anyhow::ensure!(
            line.strip_prefix('+') == Some(expected),
            "redis answered {line:?} where +{expected} was due"
        );
        Ok(())
    }

    async fn read_line(&mut self) -> anyhow::Result<String> {
        self.line.clear();
        let n = self.reader.read_line(&mut self.line).await?;
        anyhow::ensure!(n > 0, "redis closed the connection");
        Ok(self.line.trim_end_matches(['\r', '\n']).to_string())
    }
}
