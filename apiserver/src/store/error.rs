//! Errors of the store. The object layer maps them to gRPC codes: `Conflict` to
//! `Aborted`/`AlreadyExists`/`NotFound` depending on the precondition, `NotFound` to `NotFound`,
//! `Compacted` to `OutOfRange`, `WatcherLagged` to a resumable stream end.

use std::path::PathBuf;

use super::{Precondition, Revision};

/// An error from a [`Store`](super::Store) operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A conditional write found the key in a state its precondition does not allow.
    #[error("precondition {expected:?} failed on key {key:?}: {}", describe_actual(*.actual))]
    Conflict {
        /// The key, lossily decoded as UTF-8.
        key: String,
        /// The precondition the write carried.
        expected: Precondition,
        /// The key's current `mod_revision`, `None` if it does not exist.
        actual: Option<Revision>,
    },

    /// A delete named a key that does not exist.
    #[error("key {key:?} does not exist")]
    NotFound {
        /// The key, lossily decoded as UTF-8.
        key: String,
    },

    /// A watch asked for history the hub no longer holds; the client must re-list.
    #[error(
        "cannot watch from revision {requested}: history before revision {oldest} is compacted"
    )]
    Compacted {
        /// The revision the watch asked to start after.
        requested: Revision,
        /// The oldest revision a watch can start after.
        oldest: Revision,
    },

    /// The watcher fell so far behind that its buffer filled, and the hub dropped it rather than
    /// block writers. The client resumes from `last_delivered` (or re-lists if that is compacted).
    #[error("watcher fell behind after revision {last_delivered} and was dropped")]
    WatcherLagged {
        /// The revision of the last event the stream delivered before this error.
        last_delivered: Revision,
    },

    /// Opening the sled database failed.
    #[error("opening the store at {path}")]
    Open {
        /// The database directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: sled::Error,
    },

    /// Opening sled's log file (to sync it) or the write-ahead log failed.
    #[error("opening the store's log {path}")]
    OpenLog {
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The write-ahead log lacks a write between the last checkpoint and a later record: a
    /// segment was lost or damaged in its middle, so acknowledged writes are missing.
    #[error(
        "the store's log in {path} is missing writes: expected revision {expected} next, found \
         {found} (a log segment was lost or damaged; restore the data directory from a backup)"
    )]
    LogGap {
        /// The log's directory.
        path: PathBuf,
        /// The revision that should have come next.
        expected: Revision,
        /// The revision that came instead.
        found: Revision,
    },

    /// A sled operation failed.
    #[error("store backend failed to {op}")]
    Backend {
        /// What the store was doing, as a verb phrase ("read a key", "apply a write").
        op: &'static str,
        /// The cause.
        #[source]
        source: sled::Error,
    },

    /// Starting one of the store's threads (the flusher, the sled backend's checkpointer) failed.
    #[error("starting a thread of the store")]
    SpawnFlusher {
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A stored record could not be decoded.
    #[error("stored record for key {key:?} is corrupt: {reason}")]
    Corrupt {
        /// The key, lossily decoded as UTF-8.
        key: String,
        /// What was wrong with it.
        reason: &'static str,
    },

    /// A flush to disk failed earlier. The store stops serving (fail-stop, as etcd does on a
    /// failed fsync) because it can no longer tell which applied writes are durable; restart
    /// the server to recover from what is on disk.
    #[error("store stopped after a failed flush")]
    FlushFailed {
        /// The cause.
        #[source]
        source: sled::Error,
    },

    /// The store was dropped (a watch stream outlived it).
    #[error("store is closed")]
    Closed,
}

/// Result of a store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn describe_actual(actual: Option<Revision>) -> String {
    match actual {
        Some(rev) => format!("it is at revision {rev}"),
        None => "it does not exist".to_owned(),
    }
}
