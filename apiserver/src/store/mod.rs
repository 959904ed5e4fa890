//! The API server's storage: a byte-level, etcd-shaped key-value store.
//!
//! The object layer above encodes objects to bytes under keys like `/registry/Instance/web-1`;
//! this module knows nothing of objects. It owns four guarantees the rest of the server is built
//! on:
//!
//! - **One store-wide revision.** Every write (put or delete) takes the next revision, written in
//!   the same atomic backend write as the change itself, so the revision and the data can never
//!   disagree after a crash. Each value carries its `create_revision` and `mod_revision`; the
//!   latter becomes the object's `resourceVersion`.
//! - **Conditional writes.** A [`Precondition`] is checked and the revision allocated under one
//!   write lock, so optimistic concurrency (update only if still at revision N) is exact.
//! - **Durable acknowledgement with group commit.** `put`/`delete` return only after a flush
//!   covers the write. One flusher thread loops: take every write applied since the last flush,
//!   flush once, then release all of their writers together. Concurrent writers therefore share
//!   fsyncs and throughput grows with concurrency instead of dying at one fsync per write.
//!   Reads wait for the writes they observed to be durable too, so nothing a client sees can be
//!   lost by a crash.
//! - **Watch from a revision.** Events go to an in-process hub only after the flush that made
//!   them durable, strictly in revision order. The hub keeps a bounded history, so a client that
//!   lost its stream resumes from its last revision; older than the history it gets
//!   [`Error::Compacted`] and re-lists. A watcher that cannot keep up is dropped with
//!   [`Error::WatcherLagged`] rather than slowing writers. (This is why `sled::Tree::watch_prefix`
//!   is not used: its subscribers block writers when they lag and carry no revision.)
//!
//! Two backends share all of that logic in `engine`: [`SledStore`] (the embedded default) and
//! [`MemoryStore`] (tests). A backend only reads, atomically applies one change together with the
//! revision, and flushes. The conformance suite in `conformance.rs` runs against both.
//!
//! ```text
//!  writer ──lock──▶ check precondition, rev = applied + 1, backend.apply(key, rev) ──unlock──┐
//!    ▲                                                                                       │
//!    │ durable >= rev                                   flusher thread: take pending events, │
//!    └──────────────── durable revision (watch) ◀────── backend.flush(), hub.publish(events) ◀┘
//! ```

mod engine;
pub mod error;
mod hub;
mod index;
mod memory;
mod sled;
mod wal;

#[cfg(test)]
mod conformance;

pub use error::{Error, Result};
pub use hub::WatchStream;
pub use memory::MemoryStore;
pub use sled::SledStore;

/// A store-wide revision. Every write increments it by one; `0` means "before any write".
pub type Revision = u64;

/// A key with its value and the revisions that created and last modified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: bytes::Bytes,
    /// The value as the object layer encoded it.
    pub value: bytes::Bytes,
    /// The revision of the put that created the key (kept across updates).
    pub create_revision: Revision,
    /// The revision of the latest write to the key.
    pub mod_revision: Revision,
}

/// The condition a write requires of the key's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Write unconditionally.
    None,
    /// The key must not exist (create).
    MustNotExist,
    /// The key must exist at exactly this `mod_revision` (compare-and-swap on `resourceVersion`).
    ModRevision(Revision),
    /// The key must exist, at any revision.
    MustExist,
}

impl Precondition {
    /// Checks the precondition against the key's current `mod_revision` (`None` if absent).
    pub fn allows(self, current: Option<Revision>) -> bool {
        match self {
            Precondition::None => true,
            Precondition::MustNotExist => current.is_none(),
            Precondition::MustExist => current.is_some(),
            Precondition::ModRevision(rev) => current == Some(rev),
        }
    }
}

/// Whether a watch event is a put or a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change, as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: WatchEventKind,
    /// For a put, the new key-value. For a delete, the key with its last value and
    /// `create_revision`, and `mod_revision` set to the delete's revision.
    pub kv: KeyValue,
    /// The key-value before this change, if the key existed.
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision of the write this event reports.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// Tuning of the stores (the log and checkpoint settings only matter to the sled backend).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How many recent events the hub keeps so that watches can resume from a past revision.
    pub history_capacity: usize,
    /// How many undelivered events a watcher may have buffered before it is dropped with
    /// [`Error::WatcherLagged`].
    pub watcher_buffer: usize,
    /// How often the sled backend writes what its log holds into sled (and can then delete
    /// log segments). Shorter: less to replay on opening; longer: fewer, larger sled batches.
    pub checkpoint_interval: std::time::Duration,
    /// The size past which the sled backend starts a new log segment.
    pub wal_segment_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            history_capacity: 100_000,
            watcher_buffer: 4096,
            checkpoint_interval: std::time::Duration::from_secs(1),
            wal_segment_bytes: 16 << 20,
        }
    }
}

/// The storage seam of the API server. Implemented by [`SledStore`] and [`MemoryStore`];
/// used as `Arc<dyn Store>`.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key. Waits until what it read is durable.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>>;

    /// Reads every key with this prefix, sorted by key, plus the revision the read is consistent
    /// at (to start a watch from). Waits until what it read is durable.
    async fn list(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, Revision)>;

    /// Writes `value` under `key` if `pre` holds. Returns only after the write is durable, with
    /// the new key-value and its revision. A failed precondition is [`Error::Conflict`].
    async fn put(&self, key: &[u8], value: Vec<u8>, pre: Precondition) -> Result<KeyValue>;

    /// Deletes `key` if `pre` holds. Returns only after the delete is durable, with the deleted
    /// key-value whose `mod_revision` is the delete's revision. An absent key is
    /// [`Error::NotFound`] whatever the precondition; a failed one is [`Error::Conflict`].
    async fn delete(&self, key: &[u8], pre: Precondition) -> Result<KeyValue>;

    /// Streams events for keys with this prefix with revision > `after`, in revision order:
    /// first those still in the hub's history, then live ones, with no gap and no duplicate.
    /// `after == 0` starts from the current revision. `after` older than the history is
    /// [`Error::Compacted`].
    fn watch(&self, prefix: &[u8], after: Revision) -> Result<WatchStream>;

    /// The latest durable (acknowledged) revision.
    fn revision(&self) -> Revision;

    /// Drops watch history up to and including `rev`; a later watch from below it gets
    /// [`Error::Compacted`]. Stored data is unaffected (the store keeps only latest values).
    fn compact(&self, rev: Revision);
}

/// The key as text, for error messages.
fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
