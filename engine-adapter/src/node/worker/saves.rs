//! Saves in flight, so that a request can wait for the saves that started before it and
//! that its prompt continues: a conversation's next turn, sent the moment the previous
//! answer ended, then still finds the blocks that answer saved instead of computing them
//! again. A save is known by the first block it writes (its position and key); a prompt
//! continues it when its own key at that position is the same, since a key names its
//! whole prefix.

use std::sync::{Arc, Mutex, PoisonError};

use kvtier_client::Key;
use tokio::sync::watch;

/// The saves running now; cheap to clone.
#[derive(Clone, Default)]
pub(super) struct Saves {
    inflight: Arc<Mutex<Inflight>>,
}

#[derive(Default)]
struct Inflight {
    next: u64,
    running: Vec<Running>,
}

struct Running {
    id: u64,
    /// Position and key of the first block the save writes.
    first: (usize, Key),
    /// Sees its sender dropped when the save ends.
    ended: watch::Receiver<()>,
}

/// Held by a running save; dropping it marks the save as ended.
pub(super) struct SaveGuard {
    id: u64,
    _ended: watch::Sender<()>,
    saves: Saves,
}

impl Saves {
    /// Registers a save that starts now and whose first block is `first` (position, key).
    pub fn start(&self, first: (usize, Key)) -> SaveGuard {
        let (ended, watcher) = watch::channel(());
        let mut inflight = self.lock();
        let id = inflight.next;
        inflight.next += 1;
        inflight.running.push(Running {
            id,
            first,
            ended: watcher,
        });
        SaveGuard {
            id,
            _ended: ended,
            saves: self.clone(),
        }
    }

    /// Resolves once every save running at the time of the call that a prompt with block
    /// keys `keys` continues has ended.
    pub fn settled(&self, keys: &[Key]) -> impl std::future::Future<Output = ()> + Send + 'static {
        let continued = |r: &&Running| keys.get(r.first.0) == Some(&r.first.1);
        let running: Vec<watch::Receiver<()>> = self
            .lock()
            .running
            .iter()
            .filter(continued)
            .map(|r| r.ended.clone())
            .collect();
        async move {
            for mut watcher in running {
                // Resolves with an error once the save's guard is dropped.
                while watcher.changed().await.is_ok() {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inflight> {
        // The list stays consistent under every operation, so a poisoned lock is usable.
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for SaveGuard {
    fn drop(&mut self) {
        self.saves.lock().running.retain(|r| r.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Saves;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn settled_waits_for_the_saves_a_prompt_continues_that_started_before_it() {
        let saves = Saves::default();
        let prompt = [[1; 32], [2; 32], [3; 32]];
        let continued = saves.start((1, [2; 32]));
        let elsewhere = saves.start((1, [9; 32]));
        let waiter = tokio::spawn(saves.settled(&prompt));
        let later = saves.start((2, [3; 32]));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "a save the prompt continues was not waited for"
        );
        drop(continued);
        tokio::time::timeout(WAIT, waiter)
            .await
            .expect("waited for a save of another prefix, or one that started later")
            .unwrap();
        drop((elsewhere, later));
        tokio::time::timeout(WAIT, saves.settled(&prompt))
            .await
            .expect("nothing runs, so nothing is waited for");
    }
}
