//! The watch hub: recent history plus live fan-out of durable events.
//!
//! The engine's flusher publishes each flushed batch here, in revision order, after the flush.
//! The hub appends the events to a bounded ring and offers each to every subscriber whose prefix
//! matches, through a per-subscriber bounded channel with `try_send`: a full channel means the
//! watcher lags, and it is dropped (its stream ends with [`Error::WatcherLagged`]) instead of
//! making the flusher, and so every writer, wait for it.
//!
//! A new watch replays matching history and registers its subscriber under the same lock that
//! publishing takes, so it sees every revision after its start exactly once.
//!
//! "Oldest" is the oldest revision a watch may start after: all events after it are in the ring.
//! After a restart the ring is empty, so it starts at the current revision, and it rises as the
//! ring is trimmed or compacted.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::{Error, Result, Revision, StoreOptions, WatchEvent};

/// The in-process watch hub of one store.
pub(crate) struct Hub {
    inner: Mutex<Inner>,
    history_capacity: usize,
    watcher_buffer: usize,
}

struct Inner {
    /// Events with revisions `oldest + 1 ..= head`, contiguous (every revision is one event).
    history: VecDeque<Arc<WatchEvent>>,
    oldest: Revision,
    head: Revision,
    subscribers: Vec<Subscriber>,
}

struct Subscriber {
    prefix: Vec<u8>,
    /// Only events after this revision are for this subscriber.
    after: Revision,
    tx: mpsc::Sender<Arc<WatchEvent>>,
    /// The revision of the last event put into `tx` (or replayed), reported if it lags.
    last_delivered: Revision,
    lagged: Arc<OnceLock<Revision>>,
}

impl Subscriber {
    /// Offers one event; returns false if the subscriber is gone or lagging and must be dropped.
    fn offer(&mut self, event: &Arc<WatchEvent>) -> bool {
        let rev = event.revision();
        if rev <= self.after || !event.kv.key.starts_with(&self.prefix) {
            return true;
        }
        match self.tx.try_send(Arc::clone(event)) {
            Ok(()) => {
                self.last_delivered = rev;
                true
            }
            Err(TrySendError::Full(_)) => {
                tracing::warn!(
                    prefix = %String::from_utf8_lossy(&self.prefix),
                    last_delivered = self.last_delivered,
                    "Dropped a watcher that fell behind."
                );
                // Set before the sender drops, so the stream sees it once its buffer drains.
                let _ = self.lagged.set(self.last_delivered);
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

impl Hub {
    /// A hub with empty history whose oldest and latest revision is `rev`.
    pub(crate) fn new(rev: Revision, options: &StoreOptions) -> Self {
        Self {
            inner: Mutex::new(Inner {
                history: VecDeque::new(),
                oldest: rev,
                head: rev,
                subscribers: Vec::new(),
            }),
            history_capacity: options.history_capacity,
            // A zero-capacity mpsc channel panics; one slot is the smallest meaningful buffer.
            watcher_buffer: options.watcher_buffer.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing in the critical sections panics while the state is half-updated, so a
        // poisoned lock still guards consistent state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends durable events, in revision order, and fans them out.
    pub(crate) fn publish(&self, events: Vec<WatchEvent>) {
        if events.is_empty() {
            return;
        }
        let events: Vec<Arc<WatchEvent>> = events.into_iter().map(Arc::new).collect();
        let mut inner = self.lock();
        inner
            .subscribers
            .retain_mut(|sub| events.iter().all(|event| sub.offer(event)));
        for event in events {
            debug_assert_eq!(
                event.revision(),
                inner.head + 1,
                "events must be contiguous"
            );
            inner.head = event.revision();
            inner.history.push_back(event);
        }
        while inner.history.len() > self.history_capacity {
            if let Some(dropped) = inner.history.pop_front() {
                inner.oldest = dropped.revision();
            }
        }
        if self.history_capacity == 0 {
            inner.oldest = inner.head;
        }
    }

    /// Starts a watch of `prefix` after revision `after` (`0` = from the latest revision).
    pub(crate) fn watch(&self, prefix: &[u8], after: Revision) -> Result<WatchStream> {
        let mut inner = self.lock();
        let after = if after == 0 { inner.head } else { after };
        if after < inner.oldest {
            return Err(Error::Compacted {
                requested: after,
                oldest: inner.oldest,
            });
        }
        let replay: VecDeque<Arc<WatchEvent>> = inner
            .history
            .iter()
            .filter(|event| event.revision() > after && event.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(self.watcher_buffer);
        let lagged = Arc::new(OnceLock::new());
        inner.subscribers.push(Subscriber {
            prefix: prefix.to_vec(),
            after,
            tx,
            last_delivered: replay.back().map_or(after, |event| event.revision()),
            lagged: Arc::clone(&lagged),
        });
        Ok(WatchStream {
            replay,
            rx,
            lagged,
            done: false,
        })
    }

    /// Drops history up to and including `rev` (clamped to the latest revision).
    pub(crate) fn compact(&self, rev: Revision) {
        let mut inner = self.lock();
        let rev = rev.min(inner.head);
        while inner
            .history
            .front()
            .is_some_and(|event| event.revision() <= rev)
        {
            inner.history.pop_front();
        }
        inner.oldest = inner.oldest.max(rev);
    }

    /// The oldest revision a watch can start after.
    #[cfg(test)]
    pub(crate) fn oldest(&self) -> Revision {
        self.lock().oldest
    }
}

/// A stream of [`WatchEvent`]s in revision order, from [`Store::watch`](super::Store::watch).
///
/// It ends with one error: [`Error::WatcherLagged`] if it fell behind (resume from the revision
/// it carries), or [`Error::Closed`] if the store was dropped.
pub struct WatchStream {
    replay: VecDeque<Arc<WatchEvent>>,
    rx: mpsc::Receiver<Arc<WatchEvent>>,
    lagged: Arc<OnceLock<Revision>>,
    done: bool,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("replay_pending", &self.replay.len())
            .field("buffered", &self.rx.len())
            .field("done", &self.done)
            .finish()
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(event) = self.replay.pop_front() {
            return Poll::Ready(Some(Ok(Arc::unwrap_or_clone(event))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(Ok(Arc::unwrap_or_clone(event)))),
            Poll::Ready(None) => {
                self.done = true;
                let error = match self.lagged.get() {
                    Some(&last_delivered) => Error::WatcherLagged { last_delivered },
                    None => Error::Closed,
                };
                Poll::Ready(Some(Err(error)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::store::{KeyValue, WatchEventKind};

    fn put(rev: Revision, key: &str) -> WatchEvent {
        WatchEvent {
            kind: WatchEventKind::Put,
            kv: KeyValue {
                key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                value: bytes::Bytes::new(),
                create_revision: rev,
                mod_revision: rev,
            },
            prev: None,
        }
    }

    fn options(history_capacity: usize, watcher_buffer: usize) -> StoreOptions {
        StoreOptions {
            history_capacity,
            watcher_buffer,
            ..StoreOptions::default()
        }
    }

    #[test]
    fn trimming_history_raises_the_oldest_resumable_revision() {
        let hub = Hub::new(10, &options(2, 8));
        hub.publish((11..=14).map(|rev| put(rev, "/a")).collect());
        assert_eq!(hub.oldest(), 12);
        assert!(hub.watch(b"", 12).is_ok());
        assert!(matches!(
            hub.watch(b"", 11),
            Err(Error::Compacted {
                requested: 11,
                oldest: 12
            })
        ));
    }

    #[test]
    fn compaction_is_clamped_to_the_latest_revision() {
        let hub = Hub::new(0, &options(10, 8));
        hub.publish(vec![put(1, "/a")]);
        hub.compact(100);
        assert_eq!(hub.oldest(), 1);
        assert!(hub.watch(b"", 1).is_ok());
    }

    #[tokio::test]
    async fn a_stream_ends_with_closed_when_the_hub_is_dropped() {
        let hub = Hub::new(0, &options(10, 8));
        let mut stream = hub.watch(b"", 0).unwrap();
        hub.publish(vec![put(1, "/a")]);
        drop(hub);
        assert_eq!(stream.next().await.unwrap().unwrap().revision(), 1);
        assert!(matches!(stream.next().await, Some(Err(Error::Closed))));
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_watch_from_a_future_revision_skips_events_up_to_it() {
        let hub = Hub::new(0, &options(10, 8));
        let mut stream = hub.watch(b"", 2).unwrap();
        hub.publish(vec![put(1, "/a"), put(2, "/a"), put(3, "/a")]);
        assert_eq!(stream.next().await.unwrap().unwrap().revision(), 3);
    }
}
