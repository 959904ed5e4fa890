//! The backend-independent part of the store: preconditions, revision allocation, group commit
//! and publication to the hub.
//!
//! A write takes the state lock, reads the key, checks the precondition, allocates
//! `applied + 1`, and has the backend apply the change and the new revision in one atomic write;
//! it queues the watch event as pending and wakes the flusher. The lock is a `std` mutex held only
//! for that synchronous work, never across an `.await`.
//!
//! The flusher is one dedicated thread (flushing is blocking I/O, and a thread needs no Tokio
//! runtime to exist when a store is opened). Each round it takes the applied revision and the
//! pending events, flushes the backend once, which covers every write applied before the flush
//! began, then publishes those events to the hub and advances the durable revision (a
//! `tokio::sync::watch`), which releases every writer up to it. Writers that arrive during a
//! flush are covered by the next one, so one fsync serves everyone waiting.
//!
//! Publishing before advancing the durable revision means a writer that got its answer and then
//! watches from just before its revision sees its own event. Events are taken under the same
//! lock that allocated their revisions, so the hub receives them contiguous and in order.
//!
//! If a flush fails the store stops (fail-stop): it can no longer tell which applied writes are
//! on disk, so every waiting and later operation gets [`Error::FlushFailed`].

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::hub::Hub;
use super::{
    Error, KeyValue, Precondition, Result, Revision, StoreOptions, WatchEvent, WatchEventKind,
    WatchStream, key_text,
};

/// What a backend provides: reads, one atomic write of a change plus the revision, and a flush.
/// Calls that change data are serialized by the engine.
pub(super) trait Backend: Send + Sync + 'static {
    /// The store revision recorded by the last applied write (`0` for a new store).
    fn revision(&self) -> Result<Revision>;
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>>;
    /// Reads every key with this prefix, sorted by key.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>>;
    /// Atomically stores `kv` under `key` (or removes `key` if `None`) and records `rev` as the
    /// store revision.
    fn apply(&self, key: &[u8], kv: Option<&KeyValue>, rev: Revision) -> Result<()>;
    /// Makes every write applied before this call durable.
    fn flush(&self) -> Result<(), sled::Error>;
}

/// The shared store logic over one backend. Dropping it stops the flusher thread after its last
/// flush and so releases the backend (sled's directory lock) before returning.
pub(super) struct Engine<B: Backend> {
    shared: Arc<Shared<B>>,
    flusher: Option<JoinHandle<()>>,
}

struct Shared<B> {
    backend: B,
    state: Mutex<WriteState>,
    /// Signalled when a write is applied or the engine closes; the flusher waits on it.
    wake: Condvar,
    durable: watch::Sender<Durable>,
    hub: Hub,
}

struct WriteState {
    /// The revision of the last write applied to the backend (durable or not).
    applied: Revision,
    /// Events of applied writes not yet taken by the flusher, in revision order.
    pending: Vec<WatchEvent>,
    /// Set when a flush failed; the store then refuses everything.
    failed: Option<sled::Error>,
    closing: bool,
}

impl WriteState {
    fn ensure_healthy(&self) -> Result<()> {
        match &self.failed {
            Some(source) => Err(Error::FlushFailed {
                source: source.clone(),
            }),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug)]
struct Durable {
    rev: Revision,
    failed: Option<sled::Error>,
}

impl<B: Backend> Engine<B> {
    pub(super) fn new(backend: B, options: &StoreOptions) -> Result<Self> {
        let rev = backend.revision()?;
        let (durable, _) = watch::channel(Durable { rev, failed: None });
        let shared = Arc::new(Shared {
            backend,
            state: Mutex::new(WriteState {
                applied: rev,
                pending: Vec::new(),
                failed: None,
                closing: false,
            }),
            wake: Condvar::new(),
            durable,
            hub: Hub::new(rev, options),
        });
        let flusher = std::thread::Builder::new()
            .name("hanul-store-flush".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run_flusher(&shared, rev)
            })
            .map_err(|source| Error::SpawnFlusher { source })?;
        Ok(Self {
            shared,
            flusher: Some(flusher),
        })
    }

    pub(super) async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let (kv, applied) = {
            let state = self.shared.lock_state();
            state.ensure_healthy()?;
            (self.shared.backend.get(key)?, state.applied)
        };
        self.wait_durable(applied).await?;
        Ok(kv)
    }

    pub(super) async fn list(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, Revision)> {
        // Scanning under the write lock makes the result a consistent snapshot at `applied`
        // (sled has no snapshots); writers wait for the scan, which is short at this scale.
        let (kvs, applied) = {
            let state = self.shared.lock_state();
            state.ensure_healthy()?;
            (self.shared.backend.scan_prefix(prefix)?, state.applied)
        };
        self.wait_durable(applied).await?;
        Ok((kvs, applied))
    }

    pub(super) async fn put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        pre: Precondition,
    ) -> Result<KeyValue> {
        let kv = {
            let mut state = self.shared.lock_state();
            state.ensure_healthy()?;
            let current = self.shared.backend.get(key)?;
            check(key, pre, current.as_ref())?;
            let rev = state.applied + 1;
            let kv = KeyValue {
                key: bytes::Bytes::copy_from_slice(key),
                value: value.into(),
                create_revision: current.as_ref().map_or(rev, |kv| kv.create_revision),
                mod_revision: rev,
            };
            self.shared.backend.apply(key, Some(&kv), rev)?;
            state.applied = rev;
            state.pending.push(WatchEvent {
                kind: WatchEventKind::Put,
                kv: kv.clone(),
                prev: current,
            });
            kv
        };
        self.shared.wake.notify_one();
        self.wait_durable(kv.mod_revision).await?;
        Ok(kv)
    }

    pub(super) async fn delete(&self, key: &[u8], pre: Precondition) -> Result<KeyValue> {
        let kv = {
            let mut state = self.shared.lock_state();
            state.ensure_healthy()?;
            let Some(current) = self.shared.backend.get(key)? else {
                return Err(Error::NotFound { key: key_text(key) });
            };
            check(key, pre, Some(&current))?;
            let rev = state.applied + 1;
            self.shared.backend.apply(key, None, rev)?;
            state.applied = rev;
            let kv = KeyValue {
                mod_revision: rev,
                ..current.clone()
            };
            state.pending.push(WatchEvent {
                kind: WatchEventKind::Delete,
                kv: kv.clone(),
                prev: Some(current),
            });
            kv
        };
        self.shared.wake.notify_one();
        self.wait_durable(kv.mod_revision).await?;
        Ok(kv)
    }

    pub(super) fn watch(&self, prefix: &[u8], after: Revision) -> Result<WatchStream> {
        self.shared.hub.watch(prefix, after)
    }

    pub(super) fn revision(&self) -> Revision {
        self.shared.durable.borrow().rev
    }

    pub(super) fn compact(&self, rev: Revision) {
        self.shared.hub.compact(rev);
    }

    /// Waits until the flusher has made revision `rev` durable.
    async fn wait_durable(&self, rev: Revision) -> Result<()> {
        let mut durable = self.shared.durable.subscribe();
        let state = durable
            .wait_for(|durable| durable.rev >= rev || durable.failed.is_some())
            .await
            // The sender lives in `shared`, which outlives this borrow of the engine.
            .map_err(|_| Error::Closed)?;
        match &state.failed {
            Some(source) if state.rev < rev => Err(Error::FlushFailed {
                source: source.clone(),
            }),
            _ => Ok(()),
        }
    }
}

impl<B: Backend> Drop for Engine<B> {
    fn drop(&mut self) {
        self.shared.lock_state().closing = true;
        self.shared.wake.notify_one();
        if let Some(flusher) = self.flusher.take() {
            // Joining waits for at most one flush; it makes the backend's release (and sled's
            // directory lock) happen before drop returns, so the store can be reopened at once.
            if flusher.join().is_err() {
                tracing::error!("The store's flusher thread panicked.");
            }
        }
    }
}

impl<B> Shared<B> {
    fn lock_state(&self) -> MutexGuard<'_, WriteState> {
        // Every critical section updates the state only after its fallible backend call, with
        // nothing that can panic in between, so a poisoned lock still guards consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn check(key: &[u8], pre: Precondition, current: Option<&KeyValue>) -> Result<()> {
    let actual = current.map(|kv| kv.mod_revision);
    if pre.allows(actual) {
        Ok(())
    } else {
        Err(Error::Conflict {
            key: key_text(key),
            expected: pre,
            actual,
        })
    }
}

/// The group-commit loop; `flushed` is the revision already durable when it starts.
fn run_flusher<B: Backend>(shared: &Shared<B>, mut flushed: Revision) {
    loop {
        let (target, events) = {
            let mut state = shared.lock_state();
            while state.applied == flushed && !state.closing {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.applied == flushed {
                return; // Closing with nothing left to flush.
            }
            (state.applied, std::mem::take(&mut state.pending))
        };
        if let Err(source) = shared.backend.flush() {
            tracing::error!(
                error = &source as &dyn std::error::Error,
                revision = target,
                "Flushing the store failed; it stops serving until restarted."
            );
            shared.lock_state().failed = Some(source.clone());
            shared
                .durable
                .send_modify(|durable| durable.failed = Some(source));
            return;
        }
        shared.hub.publish(events);
        shared.durable.send_modify(|durable| durable.rev = target);
        flushed = target;
    }
}

/// Implements [`Store`](super::Store) for a type with an `engine: Engine<_>` field.
macro_rules! delegate_store {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $ty {
            async fn get(
                &self,
                key: &[u8],
            ) -> $crate::store::Result<Option<$crate::store::KeyValue>> {
                self.engine.get(key).await
            }

            async fn list(
                &self,
                prefix: &[u8],
            ) -> $crate::store::Result<(Vec<$crate::store::KeyValue>, $crate::store::Revision)>
            {
                self.engine.list(prefix).await
            }

            async fn put(
                &self,
                key: &[u8],
                value: Vec<u8>,
                pre: $crate::store::Precondition,
            ) -> $crate::store::Result<$crate::store::KeyValue> {
                self.engine.put(key, value, pre).await
            }

            async fn delete(
                &self,
                key: &[u8],
                pre: $crate::store::Precondition,
            ) -> $crate::store::Result<$crate::store::KeyValue> {
                self.engine.delete(key, pre).await
            }

            fn watch(
                &self,
                prefix: &[u8],
                after: $crate::store::Revision,
            ) -> $crate::store::Result<$crate::store::WatchStream> {
                self.engine.watch(prefix, after)
            }

            fn revision(&self) -> $crate::store::Revision {
                self.engine.revision()
            }

            fn compact(&self, rev: $crate::store::Revision) {
                self.engine.compact(rev)
            }
        }
    };
}
pub(super) use delegate_store;
