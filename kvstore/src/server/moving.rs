//! Partitions on the move, seen from a new owner: reads that miss here fall back to the
//! partition's previous owners until the move is done, and a background task pulls the
//! partitions this node gained from them, then reports each pull to the leader.
//!
//! Pulled blocks are put like any other, so a block this node already holds stays as it
//! is, and a pull that fails part-way is simply done again from the next previous owner.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kvtier_format::BlockView;
use kvtier_proto::v1 as pb;
use kvtier_raft::partition_of;
use tokio::sync::mpsc;
use tonic::Status;

use super::convert;
use super::route::{as_peer, wire, Routing};
use crate::{Key, NamespaceSpec, PutOptions, Store, StoreError};

/// Length of the held prefix of `keys`, asking previous owners past a local miss.
pub async fn lookup(
    store: &Store,
    routing: &Routing,
    namespace: &Option<pb::Namespace>,
    keys: &[Key],
) -> usize {
    let mut held = store.lookup(keys);
    while held < keys.len() {
        let mut found = 0;
        for addr in routing.fallbacks(&keys[held]) {
            let Ok(mut peer) = routing.peer(&addr) else {
                continue;
            };
            let request = pb::LookupRequest {
                namespace: namespace.clone(),
                keys: wire(&keys[held..]),
            };
            if let Ok(reply) = peer.lookup(as_peer(request)).await {
                found = found.max(reply.into_inner().prefix_len as usize);
            }
        }
        if found == 0 {
            break;
        }
        held += found;
        held += store.lookup(&keys[held..]);
    }
    held
}

/// Streams blocks of `keys[from..]` held by the previous owners of `keys[from]`'s
/// partition, indexed from `from`; returns how many it sent.
pub async fn get_from_previous(
    routing: &Routing,
    namespace: &Option<pb::Namespace>,
    keys: &[Key],
    from: usize,
    tx: &mpsc::Sender<Result<pb::GetResponse, Status>>,
) -> usize {
    let found = previous_blocks(routing, namespace, keys, from).await;
    let count = found.len();
    for item in found {
        if tx.send(Ok(item)).await.is_err() {
            break;
        }
    }
    count
}

/// The blocks of `keys[from..]` that the first answering previous owner of `keys[from]`'s
/// partition holds from the start, indexed from `from`.
async fn previous_blocks(
    routing: &Routing,
    namespace: &Option<pb::Namespace>,
    keys: &[Key],
    from: usize,
) -> Vec<pb::GetResponse> {
    for addr in routing.fallbacks(&keys[from]) {
        let Ok(mut peer) = routing.peer(&addr) else {
            continue;
        };
        let request = pb::GetRequest {
            namespace: namespace.clone(),
            keys: wire(&keys[from..]),
        };
        let Ok(reply) = peer.get(as_peer(request)).await else {
            continue;
        };
        let mut stream = reply.into_inner();
        let mut found = Vec::new();
        while let Ok(Some(mut item)) = stream.message().await {
            item.index = (from + found.len()) as u32;
            found.push(item);
        }
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

/// The GetLayers stream of a new owner that lacks some of `keys` while their partitions
/// move: the whole prefix is gathered first, block by block from here or from a previous
/// owner, as a Get would, then sent a layer at a time.
pub async fn layers_with_previous(
    store: Arc<Store>,
    routing: Arc<Routing>,
    namespace: NamespaceSpec,
    wire_namespace: Option<pb::Namespace>,
    keys: Vec<Key>,
    tx: mpsc::Sender<Result<pb::LayerSlice, Status>>,
) {
    let keys = Arc::new(keys);
    let mut blocks: Vec<bytes::Bytes> = Vec::with_capacity(keys.len());
    while blocks.len() < keys.len() {
        let (store, local_ns, local_keys) = (store.clone(), namespace.clone(), keys.clone());
        let from = blocks.len();
        let run = tokio::task::spawn_blocking(move || {
            local_keys[from..]
                .iter()
                .map_while(|key| store.read(&local_ns, key))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        blocks.extend(run);
        if blocks.len() == keys.len() {
            break;
        }
        let found = previous_blocks(&routing, &wire_namespace, &keys, blocks.len()).await;
        if found.is_empty() {
            break;
        }
        blocks.extend(found.into_iter().map(|item| item.block));
    }
    tokio::task::spawn_blocking(move || super::layers::send(&namespace, &blocks, &tx));
}

/// The held blocks of `partitions` (of `partition_count`), parents first, into `tx`.
pub fn scan(
    store: &Store,
    partition_count: u32,
    partitions: &[u32],
    tx: &mpsc::Sender<Result<pb::ScanItem, Status>>,
) {
    let wanted = |key: &Key| partitions.contains(&partition_of(key, partition_count));
    for held in store.held_where(wanted) {
        let Some(block) = store.read_own(&held.key) else {
            continue;
        };
        let item = pb::ScanItem {
            key: bytes::Bytes::copy_from_slice(&held.key),
            parent: held
                .parent
                .map_or_else(bytes::Bytes::new, |p| bytes::Bytes::copy_from_slice(&p)),
            position: held.position,
            conversation: held.conversation.as_deref().unwrap_or_default().to_string(),
            block,
        };
        if tx.blocking_send(Ok(item)).is_err() {
            return;
        }
    }
}

/// Pulls the partitions this node gained, looking `every` so often, for as long as the
/// runtime runs.
pub async fn pull_forever(store: Arc<Store>, routing: Arc<Routing>, every: Duration) {
    let mut attempts: HashMap<u32, usize> = HashMap::new();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (partition_count, pulls) = routing.pulls();
        if pulls.is_empty() {
            attempts.clear();
            continue;
        }
        let mut done = Vec::new();
        let mut by_source: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (partition, sources) in pulls {
            if sources.is_empty() {
                done.push(partition);
                continue;
            }
            let attempt = attempts.get(&partition).copied().unwrap_or(0);
            let source = sources[attempt % sources.len()].clone();
            by_source.entry(source).or_default().push(partition);
        }
        for (addr, partitions) in by_source {
            match pull(&store, &routing, &addr, partition_count, &partitions).await {
                Ok(blocks) => {
                    tracing::info!(from = %addr, partitions = partitions.len(), blocks, "pulled moved partitions");
                    done.extend(partitions);
                }
                Err(status) => {
                    tracing::warn!(from = %addr, message = status.message(), "pull failed; will try again");
                    for partition in partitions {
                        *attempts.entry(partition).or_default() += 1;
                    }
                }
            }
        }
        if !done.is_empty() {
            if let Err(error) = routing.cluster().report_moved(done).await {
                tracing::warn!(%error, "cannot report pulled partitions; will pull again");
            }
        }
    }
}

async fn pull(
    store: &Arc<Store>,
    routing: &Arc<Routing>,
    addr: &str,
    partition_count: u32,
    partitions: &[u32],
) -> Result<u64, Status> {
    let mut peer = routing.peer(addr)?;
    let request = pb::ScanRequest {
        partition_count,
        partitions: partitions.to_vec(),
    };
    let mut stream = peer.scan(as_peer(request)).await?.into_inner();
    let mut blocks = 0;
    while let Some(item) = stream.message().await? {
        let store = store.clone();
        tokio::task::spawn_blocking(move || put_pulled(&store, item))
            .await
            .map_err(|e| Status::internal(format!("pull task failed: {e}")))?
            .map_err(convert::status)?;
        blocks += 1;
    }
    Ok(blocks)
}

/// Stores a pulled block under the namespace its own header names.
fn put_pulled(store: &Store, item: pb::ScanItem) -> Result<(), StoreError> {
    let view =
        BlockView::parse(&item.block).map_err(|e| StoreError::invalid("block", e.to_string()))?;
    let namespace = NamespaceSpec {
        tenant: String::new(),
        fingerprint: view.fingerprint,
        shape: view.shape,
    };
    let key =
        Key::try_from(item.key.as_ref()).map_err(|_| StoreError::invalid("key", "not 32 bytes"))?;
    let parent = Key::try_from(item.parent.as_ref()).ok();
    let options = PutOptions {
        conversation: (!item.conversation.is_empty()).then_some(item.conversation),
        ..PutOptions::default()
    };
    // Partitions come in one scan per previous owner, so a parent may arrive after its
    // child: a block whose parent is not here (yet) is a chain root here.
    let parent = parent.filter(|p| store.holds(p));
    store.put(&namespace, key, parent, item.position, item.block, &options)?;
    Ok(())
}
