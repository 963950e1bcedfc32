//! The client's calls over a cluster: a put to its key's primary, and calls over many
//! keys split by node, sent in parallel and merged back in key order.
//!
//! A call that meets UNAVAILABLE (a redirect, or a node that cannot be reached) reads the
//! table again and is tried again, a bounded number of times with a growing pause; reads
//! pass over a node that could not be reached to the key's next replica.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use kvtier_proto::v1 as pb;
use kvtier_proto::v1::kv_cache_client::KvCacheClient;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::client::{ordered_blocks, wire};
use crate::routing::{worth_rerouting, Group, Routes};
use crate::{ClientError, Key, KvClient, Namespace, PrefetchOutcome};

/// Tries of a call before its last error is returned.
const ATTEMPTS: u32 = 6;

/// Pause before try `attempt` (from 1): 50 ms, doubling, at most 1 s.
fn pause(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(5)).min(1000))
}

fn keys_of(keys: &[Key], group: &Group) -> Vec<Bytes> {
    group
        .indices
        .iter()
        .map(|i| Bytes::copy_from_slice(&keys[*i]))
        .collect()
}

/// Runs `call` until it succeeds, fails with something other than UNAVAILABLE, or runs
/// out of tries; between tries the table is read again.
async fn with_retries<T, F, Fut>(client: &KvClient, mut call: F) -> Result<T, ClientError>
where
    F: FnMut(Arc<Routes>) -> Fut,
    Fut: std::future::Future<Output = Result<T, (String, tonic::Status)>>,
{
    let mut attempt = 0;
    loop {
        let routes = match client.routes().await {
            Some(routes) => routes,
            None => {
                return Err(ClientError::Protocol(
                    "the partition table went away".into(),
                ))
            }
        };
        match call(routes).await {
            Ok(value) => return Ok(value),
            Err((addr, status)) => {
                attempt += 1;
                if !worth_rerouting(&status) || attempt >= ATTEMPTS {
                    return Err(status.into());
                }
                tracing::debug!(%addr, message = status.message(), attempt, "rerouting");
                client.reroute(&addr, &status).await;
                tokio::time::sleep(pause(attempt)).await;
            }
        }
    }
}

/// Groups for a read over `keys`, or the error that no replica is known.
fn groups(
    client: &KvClient,
    routes: &Routes,
    keys: &[Key],
) -> Result<Vec<Group>, (String, tonic::Status)> {
    client.view().read_groups(routes, keys).ok_or_else(|| {
        (
            String::new(),
            tonic::Status::unavailable("a partition has no replica"),
        )
    })
}

pub async fn put(
    client: &KvClient,
    key: &Key,
    request: pb::PutRequest,
) -> Result<pb::PutResponse, ClientError> {
    with_retries(client, |routes| {
        let request = request.clone();
        async move {
            let primary = routes.replicas(key).first().cloned().unwrap_or_default();
            let mut node = client
                .member(&primary)
                .map_err(|e| (primary.clone(), status_of(e)))?;
            node.put(request)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| (primary, s))
        }
    })
    .await
}

pub async fn lookup(
    client: &KvClient,
    namespace: &Namespace,
    keys: &[Key],
) -> Result<usize, ClientError> {
    with_retries(client, |routes| async move {
        let groups = groups(client, &routes, keys)?;
        let calls = groups.iter().map(|group| async {
            let mut node = client
                .member(&group.addr)
                .map_err(|e| (group.addr.clone(), status_of(e)))?;
            let request = pb::LookupRequest {
                namespace: Some(namespace.to_proto()),
                keys: keys_of(keys, group),
            };
            let reply = node
                .lookup(request)
                .await
                .map_err(|s| (group.addr.clone(), s))?;
            let held = reply.into_inner().prefix_len as usize;
            Ok(group.indices.get(held).copied().unwrap_or(keys.len()))
        });
        let mut prefix = keys.len();
        for first_missing in futures::future::join_all(calls).await {
            prefix = prefix.min(first_missing?);
        }
        Ok(prefix)
    })
    .await
}

/// Opens one streaming call per node over its share of `keys`, every call started before
/// any is read so the nodes work in parallel; retried as a whole like any call.
async fn open_streams<T, F, Fut>(
    client: &KvClient,
    keys: &[Key],
    open: F,
) -> Result<(Vec<Group>, Vec<Streaming<T>>), ClientError>
where
    F: Fn(KvCacheClient<Channel>, Vec<Bytes>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Streaming<T>>, tonic::Status>>,
{
    with_retries(client, |routes| {
        let open = &open;
        async move {
            let groups = groups(client, &routes, keys)?;
            let calls = groups.iter().map(|group| {
                let node = client.member(&group.addr);
                let share = keys_of(keys, group);
                async move {
                    let node = node.map_err(|e| (group.addr.clone(), status_of(e)))?;
                    let reply = open(node, share).await;
                    reply
                        .map(|r| r.into_inner())
                        .map_err(|s| (group.addr.clone(), s))
                }
            });
            let streams = futures::future::join_all(calls)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            Ok((groups, streams))
        }
    })
    .await
}

/// Which group each key went to, and its place in that group's request.
fn placement(groups: &[Group], keys: usize) -> Vec<(usize, usize)> {
    let mut place = vec![(0, 0); keys];
    for (g, group) in groups.iter().enumerate() {
        for (rank, i) in group.indices.iter().enumerate() {
            place[*i] = (g, rank);
        }
    }
    place
}

pub async fn get(
    client: &KvClient,
    namespace: &Namespace,
    keys: &[Key],
) -> Result<BoxStream<'static, Result<Bytes, ClientError>>, ClientError> {
    let request = |keys| pb::GetRequest {
        namespace: Some(namespace.to_proto()),
        keys,
    };
    let (groups, streams) = open_streams(client, keys, |mut node, keys| {
        let request = request(keys);
        async move { node.get(request).await }
    })
    .await?;
    let place = Arc::new(placement(&groups, keys.len()));
    let mut streams: Vec<_> = streams
        .into_iter()
        .map(|s| ordered_blocks(s).boxed())
        .collect();
    if streams.len() == 1 {
        return Ok(streams.remove(0));
    }
    // Key i comes from its group's stream, whose blocks arrive in the group's key order:
    // pulling the streams in global key order merges them, and a group that ends early
    // ends the prefix.
    let merged = stream::unfold(
        (streams, 0usize, false),
        move |(mut streams, next, done)| {
            let place = place.clone();
            async move {
                if done || next == place.len() {
                    return None;
                }
                let (group, _) = place[next];
                match streams[group].next().await {
                    Some(Ok(block)) => Some((Ok(block), (streams, next + 1, false))),
                    Some(Err(error)) => Some((Err(error), (streams, next, true))),
                    None => None,
                }
            }
        },
    );
    Ok(merged.boxed())
}

pub async fn get_layers(
    client: &KvClient,
    namespace: &Namespace,
    keys: &[Key],
) -> Result<BoxStream<'static, Result<Vec<Bytes>, ClientError>>, ClientError> {
    let request = |keys| pb::GetLayersRequest {
        namespace: Some(namespace.to_proto()),
        keys,
    };
    let (groups, streams) = open_streams(client, keys, |mut node, keys| {
        let request = request(keys);
        async move { node.get_layers(request).await }
    })
    .await?;
    let merger = LayerMerger {
        place: placement(&groups, keys.len()),
        groups,
        streams,
        prefix: None,
        layer: 0,
    };
    let merged = stream::unfold(Some(merger), |merger| async move {
        let mut merger = merger?;
        match merger.next_layer().await {
            Ok(Some(layer)) => Some((Ok(layer), Some(merger))),
            Ok(None) => None,
            Err(error) => Some((Err(error), None)),
        }
    });
    Ok(merged.boxed())
}

/// Merges per-node GetLayers streams into layers of the whole held prefix.
struct LayerMerger {
    groups: Vec<Group>,
    place: Vec<(usize, usize)>,
    streams: Vec<Streaming<pb::LayerSlice>>,
    /// Held prefix of the call, fixed by the first layer.
    prefix: Option<usize>,
    layer: u32,
}

impl LayerMerger {
    async fn next_layer(&mut self) -> Result<Option<Vec<Bytes>>, ClientError> {
        let wanted: Vec<usize> = match self.prefix {
            None => (0..self.groups.len()).collect(),
            Some(prefix) => {
                let mut groups: Vec<usize> = self.place[..prefix].iter().map(|(g, _)| *g).collect();
                groups.sort_unstable();
                groups.dedup();
                groups
            }
        };
        let mut slices: Vec<Option<pb::LayerSlice>> =
            (0..self.groups.len()).map(|_| None).collect();
        for g in wanted {
            slices[g] = self.streams[g].message().await?;
            if let Some(slice) = &slices[g] {
                if slice.layer != self.layer {
                    return Err(ClientError::Protocol(format!(
                        "layer {} arrived where {} was due",
                        slice.layer, self.layer
                    )));
                }
            }
        }
        let prefix = match self.prefix {
            Some(prefix) => prefix,
            None => {
                let mut prefix = self.place.len();
                for (g, group) in self.groups.iter().enumerate() {
                    let held = slices[g].as_ref().map_or(0, |s| s.blocks.len());
                    if let Some(first_missing) = group.indices.get(held) {
                        prefix = prefix.min(*first_missing);
                    }
                }
                self.prefix = Some(prefix);
                prefix
            }
        };
        if prefix == 0 {
            return Ok(None);
        }
        let mut layer = Vec::with_capacity(prefix);
        for (group, rank) in &self.place[..prefix] {
            let block = slices[*group].as_ref().and_then(|s| s.blocks.get(*rank));
            match block {
                Some(block) => layer.push(block.clone()),
                None if layer.is_empty() && self.layer > 0 => return Ok(None),
                None => {
                    return Err(ClientError::Protocol(format!(
                        "layer {} lacks block {} of the prefix",
                        self.layer,
                        layer.len()
                    )))
                }
            }
        }
        self.layer += 1;
        Ok(Some(layer))
    }
}

pub async fn prefetch(
    client: &KvClient,
    routes: Arc<Routes>,
    namespace: &Namespace,
    keys: &[Key],
    conversation: Option<&str>,
) -> Result<PrefetchOutcome, ClientError> {
    let groups = groups(client, &routes, keys).map_err(|(_, s)| ClientError::Status(s))?;
    // A conversation's blocks are on every node: each is asked about it.
    let mut calls: Vec<(String, Vec<Bytes>)> = routes
        .nodes()
        .into_iter()
        .filter(|addr| conversation.is_some() || groups.iter().any(|g| g.addr == *addr))
        .map(|addr| {
            let keys = groups
                .iter()
                .find(|g| g.addr == addr)
                .map(|g| keys_of(keys, g))
                .unwrap_or_default();
            (addr, keys)
        })
        .collect();
    calls.retain(|(_, keys)| conversation.is_some() || !keys.is_empty());
    let replies = futures::future::join_all(calls.into_iter().map(|(addr, keys)| async move {
        let request = pb::PrefetchRequest {
            namespace: Some(namespace.to_proto()),
            keys,
            conversation: conversation.unwrap_or_default().to_string(),
        };
        Ok::<_, ClientError>(client.member(&addr)?.prefetch(request).await?.into_inner())
    }))
    .await;
    let mut total = PrefetchOutcome::default();
    for reply in replies {
        let reply = reply?;
        total.promoted += reply.promoted;
        total.already_hot += reply.already_hot;
        total.skipped += reply.skipped;
    }
    Ok(total)
}

pub async fn delete(
    client: &KvClient,
    routes: Arc<Routes>,
    namespace: &Namespace,
    keys: &[Key],
) -> Result<u32, ClientError> {
    // Every replica drops its copy; the primaries' answers are the count.
    let mut per_node: Vec<(String, bool, Vec<Key>)> = Vec::new();
    for key in keys {
        for (rank, addr) in routes.replicas(key).iter().enumerate() {
            let primary = rank == 0;
            match per_node
                .iter_mut()
                .find(|(a, p, _)| a == addr && *p == primary)
            {
                Some((_, _, list)) => list.push(*key),
                None => per_node.push((addr.clone(), primary, vec![*key])),
            }
        }
    }
    let calls = per_node
        .into_iter()
        .map(|(addr, primary, list)| async move {
            let request = pb::DeleteRequest {
                namespace: Some(namespace.to_proto()),
                keys: wire(&list),
            };
            let deleted = client
                .member(&addr)?
                .delete(request)
                .await?
                .into_inner()
                .deleted;
            Ok::<_, ClientError>(if primary { deleted } else { 0 })
        });
    let mut deleted = 0;
    for reply in futures::future::join_all(calls).await {
        deleted += reply?;
    }
    Ok(deleted)
}

fn status_of(error: ClientError) -> tonic::Status {
    match error {
        ClientError::Status(status) => status,
        other => tonic::Status::unavailable(other.to_string()),
    }
}
