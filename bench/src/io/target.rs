//! The systems under test behind one interface: a connection that puts and gets a value
//! under an operation's id, and a way to empty the system between measurements.

use bytes::Bytes;
use kvtier_client::{KvClient, Namespace};
use serde::Serialize;

use super::resp::RespConn;
use super::sink::SinkConn;

/// A system the io benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Kvtier,
    /// Three kvtierd members, two replicas of every block.
    #[serde(rename = "kvtier-cluster")]
    Cluster,
    Redis,
    /// Plain TCP: the loopback ceiling.
    Tcp,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Kvtier => "kvtier",
            System::Cluster => "kvtier-cluster",
            System::Redis => "redis",
            System::Tcp => "tcp",
        }
    }
}

/// Where each system listens, and the kvtier namespace of the current block size.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub system: System,
    pub addr: String,
    pub namespace: Namespace,
}

/// One open connection to a system.
pub enum Conn {
    Kvtier(KvClient, Namespace),
    Redis(RespConn),
    Tcp(SinkConn),
}

/// The 32-byte key of operation `id` in measurement `run`: unique across the whole
/// benchmark, so no put is ever an idempotent repeat. Its first eight bytes are mixed, as
/// a real key's are, so a cluster spreads the operations over its partitions.
pub fn key(run: u64, id: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    let mixed = (run.rotate_left(32) ^ id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    key[..8].copy_from_slice(&mixed.to_le_bytes());
    key[8..16].copy_from_slice(&id.to_le_bytes());
    key[16..24].copy_from_slice(&run.to_le_bytes());
    key[24..].copy_from_slice(b"kvtier-b");
    key
}

impl Conn {
    pub async fn open(endpoint: &Endpoint) -> anyhow::Result<Self> {
        Ok(match endpoint.system {
            System::Kvtier | System::Cluster => Conn::Kvtier(
                KvClient::connect(&endpoint.addr).await?,
                endpoint.namespace.clone(),
            ),
            System::Redis => Conn::Redis(RespConn::connect(&endpoint.addr).await?),
            System::Tcp => Conn::Tcp(SinkConn::connect(&endpoint.addr).await?),
        })
    }

    pub async fn put(&mut self, run: u64, id: u64, value: &Bytes) -> anyhow::Result<()> {
        let key = key(run, id);
        match self {
            Conn::Kvtier(client, namespace) => {
                let outcome = client.put(namespace, &key, None, 0, value.clone()).await?;
                anyhow::ensure!(
                    outcome.stored && !outcome.already_present,
                    "kvtierd did not store a new block"
                );
            }
            Conn::Redis(conn) => conn.set(&key, value).await?,
            Conn::Tcp(conn) => conn.put(run.rotate_left(32) ^ id, value).await?,
        }
        Ok(())
    }

    /// Gets the value of operation `id` and checks that it is `expected`, byte for byte.
    pub async fn get_verified(&mut self, run: u64, id: u64, expected: &[u8]) -> anyhow::Result<()> {
        let key = key(run, id);
        let got: Option<Bytes> = match self {
            Conn::Kvtier(client, namespace) => {
                let mut blocks = client.get_all(namespace, &[key]).await?;
                anyhow::ensure!(blocks.len() <= 1, "kvtierd returned more than one block");
                blocks.pop()
            }
            Conn::Redis(conn) => conn.get(&key).await?.map(Bytes::from),
            Conn::Tcp(conn) => conn.get(run.rotate_left(32) ^ id).await?.map(Bytes::from),
        };
        match got {
            Some(value) if value == expected => Ok(()),
            Some(value) => anyhow::bail!(
                "get of operation {id} returned {} bytes that differ from the {} put",
                value.len(),
                expected.len()
            ),
            None => anyhow::bail!("get of operation {id} found nothing"),
        }
    }

    /// Removes what measurement `run` stored (`ops` operations).
    pub async fn clear(&mut self, run: u64, ops: u64) -> anyhow::Result<()> {
        match self {
            Conn::Kvtier(client, namespace) => {
                let keys: Vec<[u8; 32]> = (0..ops).map(|id| key(run, id)).collect();
                for chunk in keys.chunks(1024) {
                    client.delete(namespace, chunk).await?;
                }
            }
            Conn::Redis(conn) => conn.flushall().await?,
            Conn::Tcp(conn) => conn.clear().await?,
        }
        Ok(())
    }
}
