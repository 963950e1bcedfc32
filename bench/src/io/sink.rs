//! The loopback ceiling: the same bytes through a plain TCP connection with the least
//! protocol that can store and return them. A request is a 17-byte header (op, key,
//! length, little-endian) followed by the value for a put; a put is answered with one
//! byte, a get with an 8-byte length and the value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PUT: u8 = 1;
const GET: u8 = 2;
const CLEAR: u8 = 3;
const MISSING: u64 = u64::MAX;

type Values = Arc<Mutex<HashMap<u64, Bytes>>>;

/// Accepts connections until the listener fails; each is served on its own task.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let values = Values::default();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let values = values.clone();
        tokio::spawn(async move {
            if let Err(error) = connection(stream, values).await {
                tracing::debug!(%error, "sink connection ended");
            }
        });
    }
}

async fn connection(mut stream: TcpStream, values: Values) -> anyhow::Result<()> {
    let mut header = [0u8; 17];
    loop {
        if stream.read_exact(&mut header).await.is_err() {
            return Ok(());
        }
        let key = u64::from_le_bytes(header[1..9].try_into()?);
        let length = u64::from_le_bytes(header[9..17].try_into()?);
        match header[0] {
            PUT => {
                let mut value = vec![0u8; usize::try_from(length)?];
                stream.read_exact(&mut value).await?;
                lock(&values).insert(key, Bytes::from(value));
                stream.write_all(&[0]).await?;
            }
            GET => {
                let value = lock(&values).get(&key).cloned();
                match value {
                    Some(value) => {
                        stream
                            .write_all(&(value.len() as u64).to_le_bytes())
                            .await?;
                        stream.write_all(&value).await?;
                    }
                    None => stream.write_all(&MISSING.to_le_bytes()).await?,
                }
            }
            CLEAR => {
                lock(&values).clear();
                stream.write_all(&[0]).await?;
            }
            other => anyhow::bail!("unknown sink op {other}"),
        }
    }
}

fn lock(values: &Values) -> std::sync::MutexGuard<'_, HashMap<u64, Bytes>> {
    values
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One client connection to the sink.
pub struct SinkConn {
    stream: TcpStream,
}

impl SinkConn {
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(SinkConn { stream })
    }

    pub async fn put(&mut self, key: u64, value: &[u8]) -> anyhow::Result<()> {
        self.stream
            .write_all(&header(PUT, key, value.len() as u64))
            .await?;
        self.stream.write_all(value).await?;
        self.stream.read_u8().await?;
        Ok(())
    }

    pub async fn get(&mut self, key: u64) -> anyhow::Result<Option<Vec<u8>>> {
        self.stream.write_all(&header(GET, key, 0)).await?;
        let length = self.stream.read_u64_le().await?;
        if length == MISSING {
            return Ok(None);
        }
        let mut value = vec![0u8; usize::try_from(length)?];
        self.stream.read_exact(&mut value).await?;
        Ok(Some(value))
    }

    pub async fn clear(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&header(CLEAR, 0, 0)).await?;
        self.stream.read_u8().await?;
        Ok(())
    }
}

fn header(op: u8, key: u64, length: u64) -> [u8; 17] {
    let mut header = [0u8; 17];
    header[0] = op;
    header[1..9].copy_from_slice(&key.to_le_bytes());
    header[9..17].copy_from_slice(&length.to_le_bytes());
    header
}
