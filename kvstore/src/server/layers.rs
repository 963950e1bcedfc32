//! The GetLayers stream: the held prefix of a request's keys, sent one layer at a time.
//!
//! The blocks of the prefix are read (each verified by the store) and parsed first, so the
//! prefix length is fixed before the first layer goes out; then every message carries one
//! layer of every block, decoded to raw tensors. A block of another namespace's shape or
//! fingerprint ends the prefix there, as a miss would.

use bytes::Bytes;
use kvtier_format::BlockView;
use kvtier_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

use crate::{Key, NamespaceSpec, Store};

/// Streams the layers of the held prefix of `keys` into `tx` until done or the client
/// goes away.
pub fn stream(
    store: &Store,
    namespace: &NamespaceSpec,
    keys: &[Key],
    tx: &mpsc::Sender<Result<pb::LayerSlice, Status>>,
) {
    let blocks: Vec<Bytes> = keys
        .iter()
        .map_while(|key| store.read(namespace, key))
        .collect();
    send(namespace, &blocks, tx);
}

/// Streams the layers of `blocks`, a prefix already read and verified, into `tx`.
pub fn send(
    namespace: &NamespaceSpec,
    blocks: &[Bytes],
    tx: &mpsc::Sender<Result<pb::LayerSlice, Status>>,
) {
    let views: Vec<BlockView<'_>> = blocks
        .iter()
        .map_while(|bytes| BlockView::parse(bytes).ok())
        .take_while(|v| v.fingerprint == namespace.fingerprint && v.shape == namespace.shape)
        .collect();
    if views.is_empty() {
        return;
    }
    let layer_bytes = namespace.shape.layer_bytes();
    for layer in 0..namespace.shape.n_layers as usize {
        let mut slice = pb::LayerSlice {
            layer: layer as u32,
            blocks: Vec::with_capacity(views.len()),
        };
        for view in &views {
            let mut raw = vec![0u8; layer_bytes];
            if let Err(error) = view.decode_layer(layer, &mut raw) {
                let _ = tx.blocking_send(Err(Status::data_loss(format!(
                    "layer {layer} does not decode: {error}"
                ))));
                return;
            }
            slice.blocks.push(raw.into());
        }
        if tx.blocking_send(Ok(slice)).is_err() {
            return;
        }
    }
}
