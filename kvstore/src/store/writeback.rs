//! The ssd tier's background thread. For `async` durability it copies newly put blocks to
//! the ssd tier and syncs the log and the index WAL after every batch, so a block reaches
//! the disk within about one batch interval of its put. Every [`COMPACTION_INTERVAL`] it
//! also compacts: segments whose live ratio fell under the configured threshold have
//! their live records rewritten and are removed.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Inner;
use crate::tier::Slot;
use crate::Key;

const BATCH_INTERVAL: Duration = Duration::from_millis(50);

/// How often the thread looks for segments to compact. A look that finds none is cheap:
/// it reads one live-byte counter per segment.
pub(super) const COMPACTION_INTERVAL: Duration = Duration::from_secs(1);

enum Message {
    Block(Key),
    Flush(Sender<()>),
}

pub(super) struct WriteBack {
    sender: Sender<Message>,
    thread: Option<JoinHandle<()>>,
}

impl WriteBack {
    pub fn start(inner: Arc<Inner>) -> Self {
        let (sender, receiver) = mpsc::channel::<Message>();
        let thread = std::thread::Builder::new()
            .name("kvtier-writeback".into())
            .spawn(move || {
                let mut dirty = false;
                let mut compacted = Instant::now();
                loop {
                    if compacted.elapsed() >= COMPACTION_INTERVAL {
                        inner.compact();
                        compacted = Instant::now();
                    }
                    match receiver.recv_timeout(BATCH_INTERVAL) {
                        Ok(Message::Block(key)) => dirty |= inner.write_back(&key),
                        Ok(Message::Flush(done)) => {
                            inner.sync_durable();
                            dirty = false;
                            let _ = done.send(());
                        }
                        Err(RecvTimeoutError::Timeout) if dirty => {
                            inner.sync_durable();
                            dirty = false;
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => {
                            inner.sync_durable();
                            return;
                        }
                    }
                }
            })
            .expect("spawning the write-back thread");
        WriteBack {
            sender,
            thread: Some(thread),
        }
    }

    pub fn enqueue(&self, key: Key) {
        let _ = self.sender.send(Message::Block(key));
    }

    /// Waits until everything enqueued so far is written and synced.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    pub fn stop(mut self) {
        let (sender, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.sender, sender));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Inner {
    /// Copies one block's memory copy to the ssd tier; true when something was written.
    fn write_back(&self, key: &Key) -> bool {
        let (tier, slot) = {
            let mut catalog = self.catalog();
            let Some(meta) = catalog.get_mut(key) else {
                return false;
            };
            let Some((tier, slot)) = meta.memory.clone().filter(|_| meta.disk.is_none()) else {
                return false;
            };
            meta.leases += 1;
            (tier, slot)
        };
        let written = self
            .tiers
            .get(tier)
            .ok_or(crate::tier::TierError::ForeignSlot {
                tier: tier.as_str(),
            })
            .and_then(|source| source.read(key, &slot))
            .and_then(|bytes| self.write_disk(key, &bytes, false));
        let mut catalog = self.catalog();
        let still_here = catalog.get(key).is_some();
        if let Some(meta) = catalog.get_mut(key) {
            meta.leases = meta.leases.saturating_sub(1);
        }
        match written {
            Ok(location) if still_here => {
                catalog.set_disk(key, location);
                true
            }
            Ok(location) => {
                // Deleted while it was being written: take back the copy and its entry.
                drop(catalog);
                if let Some(ssd) = &self.tiers.ssd {
                    crate::tier::Tier::free(ssd, &Slot::Disk(location));
                }
                if let Some(index) = &self.index {
                    let _ = index.delete(key, false);
                }
                false
            }
            Err(error) => {
                tracing::debug!(%error, "write-back skipped");
                false
            }
        }
    }

    fn sync_durable(&self) {
        if let Some(ssd) = &self.tiers.ssd {
            if let Err(error) = ssd.log().sync() {
                tracing::warn!(%error, "segment sync failed");
            }
        }
        if let Some(index) = &self.index {
            if let Err(error) = index.flush_wal() {
                tracing::warn!(%error, "index WAL sync failed");
            }
        }
    }
}
