//! Reading the store by what it holds rather than by request: the blocks of some keys'
//! partitions, for a new owner pulling them, and a block checked against its own header.

use std::sync::Arc;

use bytes::Bytes;

use super::Store;
use crate::Key;

/// A held block's chain links, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBlock {
    pub key: Key,
    /// The parent as this store links it; `None` for a chain root here.
    pub parent: Option<Key>,
    pub position: u32,
    pub conversation: Option<Arc<str>>,
}

impl Store {
    /// True when `key` is held (not merely reserved by a put in flight).
    pub fn holds(&self, key: &Key) -> bool {
        self.inner.catalog().holds(key)
    }

    /// The held blocks whose key `wanted` accepts, parents before children.
    pub fn held_where(&self, wanted: impl Fn(&Key) -> bool) -> Vec<HeldBlock> {
        let mut held: Vec<HeldBlock> = self
            .inner
            .catalog()
            .iter()
            .filter(|(key, meta)| !meta.pending && wanted(key))
            .map(|(key, meta)| HeldBlock {
                key: *key,
                parent: meta.parent,
                position: meta.position,
                conversation: meta.conversation.clone(),
            })
            .collect();
        held.sort_by_key(|block| block.position);
        held
    }

    /// The block under `key`, verified against the checksum and namespace in its own
    /// header; `None` for a miss or a block that fails (which is dropped, as on any read).
    pub fn read_own(&self, key: &Key) -> Option<Bytes> {
        self.inner.read(None, key)
    }
}
