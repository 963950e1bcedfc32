//! Multi-process clusters of kvtierd on loopback for the cluster tests: each node a child
//! process with its own data directory and ports, short Raft timeouts, and helpers that
//! poll the cluster service until a condition holds or a deadline passes.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kvtier_proto::cluster::cluster_client::ClusterClient;
use kvtier_proto::cluster::{StatusRequest, StatusResponse};
use tempfile::TempDir;
use tonic::transport::Channel;

/// Cluster tests run one at a time: with a dozen kvtierd processes on two cores, Raft's
/// timeouts would measure the machine's load instead of the cluster.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for the length of a test.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Raft timing of the tests: a leader is missed after 300-600 ms.
pub const HEARTBEAT: &str = "50ms";
pub const ELECTION_TIMEOUT: &str = "300ms";

/// The lowest port tried for a node.
const LOWEST_PORT: u32 = 10_000;

/// A port no other listener holds, for a kvtierd that binds it later. It comes from below
/// the kernel's ephemeral range: a port from inside it could be taken, between this probe
/// and the child's bind, as the source port of any outgoing connection (the other nodes'
/// Raft and client traffic make many). Each call tries the next port of a sequence that
/// starts at a place given by the process id, so no port is handed out twice.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low <= LOWEST_PORT + 1 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        return listener.local_addr().expect("local addr").port();
    }
    let span = ephemeral_low - LOWEST_PORT;
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOWEST_PORT + (start + step) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOWEST_PORT} and {ephemeral_low}")
}

/// How long the tests' members may go unanswered before their partitions move.
pub const DOWN_AFTER: &str = "1500ms";

/// One kvtierd process and what is needed to start it again.
pub struct Node {
    pub id: u64,
    pub data_port: u16,
    pub cluster_port: u16,
    pub dir: TempDir,
    /// `--down-after` of the process; a test of a full stop sets it long, so the members
    /// stopped first are not marked down by the last.
    pub down_after: &'static str,
    /// When puts reach the ssd tier (`--durability`).
    pub durability: &'static str,
    /// How often it pulls partitions it gained (`--pull-interval`).
    pub pull_interval: &'static str,
    child: Option<Child>,
}

impl Node {
    pub fn new(id: u64) -> Node {
        Node {
            id,
            data_port: free_port(),
            cluster_port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            down_after: DOWN_AFTER,
            durability: "async",
            pull_interval: "200ms",
            child: None,
        }
    }

    pub fn cluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.cluster_port)
    }

    pub fn data_addr(&self) -> String {
        format!("127.0.0.1:{}", self.data_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Starts the process; `join` is the cluster address of a member, or none to form.
    pub fn start(&mut self, join: Option<&str>) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kvtierd"));
        command
            .args(["--listen", &self.data_addr()])
            .args(["--cluster-listen", &self.cluster_addr()])
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--node-id", &self.id.to_string()])
            .args(["--metrics-listen", ""])
            .args(["--dram-capacity", "16MiB", "--ssd-capacity", "64MiB"])
            .args(["--max-block-bytes", "1MiB", "--segment-size", "4MiB"])
            .args([
                "--heartbeat",
                HEARTBEAT,
                "--election-timeout",
                ELECTION_TIMEOUT,
            ])
            .args(["--partitions", "16", "--replication", "2"])
            .args(["--down-after", self.down_after])
            .args(["--durability", self.durability])
            .args(["--pull-interval", self.pull_interval])
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file());
        if let Some(addr) = join {
            command.args(["--join", addr]);
        }
        self.child = Some(command.spawn().expect("start kvtierd"));
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: `kill` only sends a signal to a pid this test spawned and still owns.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn client(&self) -> ClusterClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.cluster_addr()))
            .expect("uri")
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        ClusterClient::new(channel)
    }

    /// The node's status, or `None` while it does not answer.
    pub async fn status(&self) -> Option<StatusResponse> {
        let mut client = self.client().await;
        client
            .status(StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }
}

impl Node {
    /// Waits up to `limit` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Some(status);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("kvtierd.log")
    }

    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the node's log")
    }
}

impl Drop for Node {
    /// Stops the process; when a test failed, shows the end of its log.
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("--- node {} log (last lines) ---", self.id);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Polls `check` every 50 ms until it gives a value or `limit` passes.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A status with a leader, `members` voters and no partition moving, from `node`.
pub async fn settled(node: &Node, members: usize) -> StatusResponse {
    eventually(Duration::from_secs(20), "cluster settles", || async {
        let status = node.status().await?;
        let voters = status
            .members
            .iter()
            .filter(|m| m.role != "learner")
            .count();
        // The map records a member after Raft does; until then it owns nothing.
        let mapped = status
            .members
            .iter()
            .all(|m| m.role == "draining" || m.partitions > 0);
        // New owners have pulled what they gained, so nothing is still being written.
        let still = status.moving_partitions == 0;
        let ready = status.leader_id != 0 && mapped && voters == members && still;
        (ready && status.members.len() == members).then_some(status)
    })
    .await
}

/// Three nodes with ids 1, 2, 3: node 1 forms the cluster, the others join it.
pub async fn three_nodes() -> Vec<Node> {
    three_nodes_with(|_| {}).await
}

/// [`three_nodes`] with each node's settings changed by `setup` before it starts.
pub async fn three_nodes_with(setup: impl Fn(&mut Node)) -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=3).map(Node::new).collect();
    for node in &mut nodes {
        setup(node);
    }
    nodes[0].start(None);
    settled(&nodes[0], 1).await;
    let seed = nodes[0].cluster_addr();
    for node in &mut nodes[1..] {
        node.start(Some(&seed));
    }
    for node in &nodes {
        settled(node, 3).await;
    }
    nodes
}

/// Chains of small blocks, put and read through the routing client or straight to one
/// node's KvCache service.
pub mod blocks {
    use bytes::Bytes;
    use kvtier_client::{Key, KvClient, Namespace};
    use kvtier_format::{encode_block, BlockShape, DType};
    use kvtier_proto::v1 as pb;

    const FINGERPRINT: [u8; 32] = [0xc1; 32];
    const SHAPE: BlockShape = BlockShape {
        n_layers: 2,
        n_kv_heads: 2,
        block_tokens: 16,
        head_dim: 16,
        dtype: DType::F32,
    };

    pub fn namespace() -> Namespace {
        Namespace {
            tenant: "cluster-test".into(),
            fingerprint: FINGERPRINT,
            shape: SHAPE,
        }
    }

    /// Key `position` of chain `chain`: its first eight bytes mixed, so chains spread over
    /// the partitions as real keys do.
    pub fn key(chain: u32, position: u32) -> Key {
        let mut x =
            (u64::from(chain) << 32 | u64::from(position)).wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        let mut key = [0x5a; 32];
        key[..8].copy_from_slice(&x.to_le_bytes());
        key[8..12].copy_from_slice(&chain.to_le_bytes());
        key
    }

    pub fn keys(chain: u32, count: u32) -> Vec<Key> {
        (0..count).map(|p| key(chain, p)).collect()
    }

    fn raw(chain: u32, position: u32) -> Vec<u8> {
        (0..SHAPE.raw_bytes())
            .map(|i| (i as u32 ^ position ^ chain << 8).wrapping_mul(31) as u8)
            .collect()
    }

    pub fn block(chain: u32, position: u32) -> Bytes {
        let raw = raw(chain, position);
        Bytes::from(encode_block(&FINGERPRINT, &SHAPE, &raw).expect("encode a test block"))
    }

    /// Layer `layer` of block `position` of `chain`, raw, as GetLayers sends it.
    pub fn layer(chain: u32, position: u32, layer: usize) -> Bytes {
        let size = SHAPE.layer_bytes();
        Bytes::from(raw(chain, position)[layer * size..(layer + 1) * size].to_vec())
    }

    /// Every layer of the held prefix of `chain`'s first `count` blocks.
    pub async fn get_layers(client: &KvClient, chain: u32, count: u32) -> Vec<Vec<Bytes>> {
        use futures::StreamExt;
        let stream = client
            .get_layers(&namespace(), &keys(chain, count))
            .await
            .expect("get layers");
        let layers: Vec<_> = stream.collect().await;
        layers
            .into_iter()
            .map(|layer| layer.expect("a layer"))
            .collect()
    }

    pub fn blocks(chain: u32, count: u32) -> Vec<Bytes> {
        (0..count).map(|p| block(chain, p)).collect()
    }

    pub async fn client(addr: &str) -> KvClient {
        KvClient::connect(addr).await.expect("connect to kvtierd")
    }

    /// Puts positions `0..count` of `chain`, in order, each acknowledged.
    pub async fn put_chain(client: &KvClient, chain: u32, count: u32) {
        for position in 0..count {
            let parent = position.checked_sub(1).map(|p| key(chain, p));
            client
                .put(
                    &namespace(),
                    &key(chain, position),
                    parent.as_ref(),
                    position,
                    block(chain, position),
                )
                .await
                .unwrap_or_else(|e| panic!("put {chain}/{position}: {e}"));
        }
    }

    /// The blocks of `chain`'s positions `0..count`, as many as are held from the start.
    pub async fn get_chain(client: &KvClient, chain: u32, count: u32) -> Vec<Bytes> {
        client
            .get_all(&namespace(), &keys(chain, count))
            .await
            .expect("get a chain")
    }

    /// A put of block `position` of `chain` as the wire carries it.
    pub fn put_request(chain: u32, position: u32) -> pb::PutRequest {
        let parent = position.checked_sub(1).map(|p| key(chain, p));
        pb::PutRequest {
            namespace: Some(pb::Namespace {
                tenant: "cluster-test".into(),
                fingerprint: Bytes::copy_from_slice(&FINGERPRINT),
                layout: Some(pb::BlockLayout {
                    n_layers: SHAPE.n_layers,
                    n_kv_heads: SHAPE.n_kv_heads,
                    block_tokens: SHAPE.block_tokens,
                    head_dim: SHAPE.head_dim,
                    dtype: pb::DType::DtypeF32 as i32,
                }),
            }),
            key: Bytes::copy_from_slice(&key(chain, position)),
            parent: parent.map_or_else(Bytes::new, |p| Bytes::copy_from_slice(&p)),
            position,
            block: block(chain, position),
            ..Default::default()
        }
    }
}
