//! The sled backend: the embedded default store.
//!
//! A write's path touches neither sled nor its log. The engine's write lock applies the change to
//! the in-memory [`Index`] (which serves every read), appends its record to the [write-ahead
//! log](super::wal) and marks the key dirty; the group commit writes and `fdatasync`s the log
//! once for every write that arrived meanwhile. A checkpointer thread then brings sled up to date
//! about once a second: it takes the dirty keys, applies them and the revision they reach as one
//! atomic sled batch, flushes sled (its flush, then an `fdatasync` of its log file, since sled
//! 0.34 ends a flush with `sync_file_range`, which does not survive a power cut), and deletes the
//! log segments that the checkpoint covers. So sled holds the state as of its last checkpoint,
//! the log holds every acknowledged write after it, and opening replays one onto the other.
//!
//! Sled layout: one tree, `kv`, holding both data and metadata, because a sled `Batch` is atomic
//! only within one tree. The first byte of every sled key separates the two spaces, so user keys
//! need no reserved range:
//!
//! ```text
//! b'd' ++ key        → create_revision (u64 BE) ++ mod_revision (u64 BE) ++ value
//! b"m/revision"      → the revision the checkpoint reached (u64 BE)
//! ```
//!
//! The whole data set lives in memory as well as on disk, as in etcd (whose bbolt file is
//! memory-mapped): the desired state of a homelab is megabytes. Writing each object to sled on
//! the write path cost more CPU than the whole rest of a create (on 2 cores, half of etcd's
//! durable creates/s; see `BENCHMARKS.md`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use ::sled::{Batch, Db, IVec, Tree};
use bytes::Bytes;

use super::engine::{Backend, Engine, delegate_store};
use super::index::Index;
use super::wal::Wal;
use super::{Error, KeyValue, Result, Revision, StoreOptions, key_text};

const TREE: &[u8] = b"kv";
const DATA: u8 = b'd';
const REVISION_KEY: &[u8] = b"m/revision";
const HEADER_LEN: usize = 16;
/// Where sled 0.34 keeps its log, inside the database directory.
const LOG_FILE: &str = "db";
/// The write-ahead log's directory, inside the database directory (sled ignores it).
const WAL_DIR: &str = "wal";

/// The [`Store`](super::Store) backed by sled in a directory on disk.
pub struct SledStore {
    engine: Engine<SledBackend>,
}

impl SledStore {
    /// Opens (or creates) the store in directory `path` with default options. Blocks while sled
    /// recovers and the log replays, so call it at startup or from `spawn_blocking`. The revision
    /// continues from the last write on disk; watch history starts empty.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, &StoreOptions::default())
    }

    /// Opens (or creates) the store in directory `path` with these options.
    pub fn open_with(path: impl AsRef<Path>, options: &StoreOptions) -> Result<Self> {
        let path = path.as_ref();
        let open_error = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let db = open_sled(path).map_err(open_error)?;
        let tree = db.open_tree(TREE).map_err(open_error)?;
        let log_path = path.join(LOG_FILE);
        let log = File::open(&log_path).map_err(|source| Error::OpenLog {
            path: log_path,
            source,
        })?;
        let checkpointed = stored_revision(&tree)?;
        let index = Index::from_entries(scan(&tree, &[DATA])?);

        // Replay the log's writes that the last checkpoint does not cover.
        let wal_path = path.join(WAL_DIR);
        let opened =
            Wal::open(&wal_path, options.wal_segment_bytes).map_err(|source| Error::OpenLog {
                path: wal_path.clone(),
                source,
            })?;
        let mut dirty = Dirty {
            changes: BTreeMap::new(),
            rev: checkpointed,
        };
        let torn = opened.torn;
        for record in opened.records {
            if record.rev <= dirty.rev {
                continue;
            }
            if record.rev != dirty.rev + 1 {
                return Err(Error::LogGap {
                    path: wal_path,
                    expected: dirty.rev + 1,
                    found: record.rev,
                });
            }
            index.apply(&record.key, record.kv.as_ref());
            dirty.changes.insert(record.key, record.kv);
            dirty.rev = record.rev;
        }
        let revision = dirty.rev;
        tracing::info!(
            keys = index.len(),
            checkpoint = checkpointed,
            replayed = revision - checkpointed,
            torn_segments = torn,
            revision,
            "Opened the store."
        );
        let shared = Arc::new(Checkpointed {
            db,
            tree,
            log,
            wal: opened.wal,
            dirty: Mutex::new(dirty),
            closing: Mutex::new(false),
            wake: Condvar::new(),
        });
        // Segments that an earlier checkpoint covers entirely can go now.
        remove_covered(&shared.wal, checkpointed);
        let checkpointer = std::thread::Builder::new()
            .name("hanul-store-checkpoint".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                let interval = options.checkpoint_interval;
                move || run_checkpointer(&shared, interval)
            })
            .map_err(|source| Error::SpawnFlusher { source })?;
        let backend = SledBackend {
            index,
            revision,
            shared,
            checkpointer: Some(checkpointer),
        };
        let engine = Engine::new(backend, options)?;
        Ok(Self { engine })
    }
}

delegate_store!(SledStore);

/// How long an opening waits for the directory lock of a store closed just before in this
/// process: sled frees its last handles lazily (epoch-based reclamation), so its file lock can
/// outlive the drop of the store by a moment. Another process holding the lock still fails the
/// opening, after this wait.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// sled's database in `path`, waiting up to [`LOCK_WAIT`] for its lock. No periodic flush of
/// sled's own: a checkpoint flushes it when it has written, and nothing else writes to sled.
fn open_sled(path: &Path) -> std::result::Result<Db, ::sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match ::sled::Config::new().path(path).flush_every_ms(None).open() {
            Err(::sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

struct SledBackend {
    index: Index,
    /// The revision of the last write on disk when the store was opened.
    revision: Revision,
    shared: Arc<Checkpointed>,
    checkpointer: Option<JoinHandle<()>>,
}

/// What the checkpointer shares with the write path.
struct Checkpointed {
    db: Db,
    tree: Tree,
    /// sled's log file, opened again only to `fdatasync` it (which acts on the file, whatever
    /// the descriptor).
    log: File,
    wal: Wal,
    dirty: Mutex<Dirty>,
    closing: Mutex<bool>,
    wake: Condvar,
}

/// The writes sled has not been given yet: each key's latest state (`None`: deleted), and the
/// revision of the last one.
struct Dirty {
    changes: BTreeMap<Bytes, Option<KeyValue>>,
    rev: Revision,
}

impl Checkpointed {
    fn dirty(&self) -> MutexGuard<'_, Dirty> {
        // Map operations leave the map consistent even if a caller panicked.
        self.dirty.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for SledBackend {
    fn revision(&self) -> Result<Revision> {
        Ok(self.revision)
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self.index.get(key))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        Ok(self.index.scan_prefix(prefix))
    }

    fn apply(&self, key: &[u8], kv: Option<&KeyValue>, rev: Revision) -> Result<()> {
        self.shared.wal.append(rev, key, kv);
        self.index.apply(key, kv);
        let mut dirty = self.shared.dirty();
        let key = kv.map_or_else(|| Bytes::copy_from_slice(key), |kv| kv.key.clone());
        dirty.changes.insert(key, kv.cloned());
        dirty.rev = rev;
        Ok(())
    }

    fn flush(&self) -> Result<(), ::sled::Error> {
        self.shared.wal.sync().map_err(::sled::Error::from)
    }
}

impl Drop for SledBackend {
    fn drop(&mut self) {
        // No last checkpoint: the log has every acknowledged write, and the next opening
        // replays it (which keeps that path exercised).
        *self
            .shared
            .closing
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.checkpointer.take()
            && thread.join().is_err()
        {
            tracing::error!("The store's checkpointer thread panicked.");
        }
    }
}

/// Every `interval`, gives sled the dirty keys in one batch and makes it durable, then deletes
/// the log segments the checkpoint covers. A failed checkpoint is logged and retried: the log
/// still holds every write, so nothing acknowledged depends on it.
fn run_checkpointer(shared: &Checkpointed, interval: Duration) {
    lower_priority();
    loop {
        {
            let closing = shared
                .closing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let (closing, _) = shared
                .wake
                .wait_timeout_while(closing, interval, |closing| !*closing)
                .unwrap_or_else(PoisonError::into_inner);
            if *closing {
                return;
            }
        }
        let (changes, rev) = {
            let mut dirty = shared.dirty();
            (std::mem::take(&mut dirty.changes), dirty.rev)
        };
        if changes.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        match checkpoint(shared, &changes, rev) {
            Ok(()) => {
                remove_covered(&shared.wal, rev);
                tracing::debug!(
                    keys = changes.len(),
                    revision = rev,
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "Checkpointed the store into sled."
                );
            }
            Err(source) => {
                tracing::error!(
                    error = &source as &dyn std::error::Error,
                    revision = rev,
                    "Checkpointing the store into sled failed; the log keeps every write and \
                     the checkpoint is retried."
                );
                // Give the changes back, behind any newer change to the same key.
                let mut dirty = shared.dirty();
                for (key, kv) in changes {
                    dirty.changes.entry(key).or_insert(kv);
                }
            }
        }
    }
}

/// Checkpoints are background work: a second's writes take sled tens of milliseconds of CPU,
/// which at full load would otherwise stall the requests sharing the cores. At nice 19 the
/// thread yields to them during a burst and catches up after it; it never starves (the
/// scheduler still gives it a share), so the log and the dirty keys stay bounded.
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: `setpriority` on this thread's own id changes only this thread's nice value.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if result != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "Cannot lower the store checkpointer's priority."
        );
    }
}

fn checkpoint(
    shared: &Checkpointed,
    changes: &BTreeMap<Bytes, Option<KeyValue>>,
    rev: Revision,
) -> Result<(), ::sled::Error> {
    let mut batch = Batch::default();
    for (key, kv) in changes {
        match kv {
            Some(kv) => batch.insert(data_key(key), encode(kv)),
            None => batch.remove(data_key(key)),
        }
    }
    batch.insert(REVISION_KEY, &rev.to_be_bytes());
    shared.tree.apply_batch(batch)?;
    shared.db.flush()?;
    shared.log.sync_data().map_err(::sled::Error::from)
}

fn remove_covered(wal: &Wal, rev: Revision) {
    if let Err(e) = wal.remove_through(rev) {
        tracing::warn!(error = %e, revision = rev, "Cannot delete the store's old log segments.");
    }
}

fn stored_revision(tree: &Tree) -> Result<Revision> {
    let stored = tree.get(REVISION_KEY).map_err(|source| Error::Backend {
        op: "read the store revision",
        source,
    })?;
    match stored {
        None => Ok(0),
        Some(bytes) => decode_u64(&bytes).ok_or_else(|| Error::Corrupt {
            key: key_text(REVISION_KEY),
            reason: "the store revision is not 8 bytes",
        }),
    }
}

fn scan(tree: &Tree, prefix: &[u8]) -> Result<Vec<KeyValue>> {
    tree.scan_prefix(prefix)
        .map(|entry| {
            let (key, record) = entry.map_err(|source| Error::Backend {
                op: "scan keys",
                source,
            })?;
            decode(Bytes::copy_from_slice(&key[1..]), &record)
        })
        .collect()
}

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut data_key = Vec::with_capacity(key.len() + 1);
    data_key.push(DATA);
    data_key.extend_from_slice(key);
    data_key
}

fn encode(kv: &KeyValue) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER_LEN + kv.value.len());
    record.extend_from_slice(&kv.create_revision.to_be_bytes());
    record.extend_from_slice(&kv.mod_revision.to_be_bytes());
    record.extend_from_slice(&kv.value);
    record
}

fn decode(key: Bytes, record: &IVec) -> Result<KeyValue> {
    let (Some(create_revision), Some(mod_revision)) = (
        record.get(..8).and_then(decode_u64),
        record.get(8..16).and_then(decode_u64),
    ) else {
        return Err(Error::Corrupt {
            key: key_text(&key),
            reason: "the record header is short",
        });
    };
    Ok(KeyValue {
        value: Bytes::copy_from_slice(&record[HEADER_LEN..]),
        key,
        create_revision,
        mod_revision,
    })
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::store::{Precondition, Store};

    /// Reopening right after a close succeeds (sled's lock, released lazily, is waited for);
    /// a directory another open store holds is refused, after the wait.
    #[tokio::test]
    async fn an_opening_waits_for_the_lock_of_a_closed_store_and_refuses_an_open_one() {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..20 {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .put(b"/registry/Image/a", vec![1], Precondition::None)
                .await
                .unwrap();
            drop(store);
        }
        let held = SledStore::open(dir.path()).unwrap();
        let started = Instant::now();
        assert!(matches!(
            SledStore::open(dir.path()),
            Err(Error::Open { .. })
        ));
        assert!(started.elapsed() >= LOCK_WAIT);
        drop(held);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.list(b"").await.unwrap().0.len(), 1);
    }

    #[test]
    fn a_record_round_trips_through_its_encoding() {
        let kv = KeyValue {
            key: Bytes::from_static(b"/registry/Instance/web-1"),
            value: Bytes::from_static(b"spec"),
            create_revision: 3,
            mod_revision: 1 << 40,
        };
        assert_eq!(
            decode(kv.key.clone(), &IVec::from(encode(&kv))).unwrap(),
            kv
        );
    }

    #[test]
    fn a_short_record_is_reported_as_corrupt() {
        let error = decode(Bytes::from_static(b"/k"), &IVec::from(&b"short"[..])).unwrap_err();
        assert!(matches!(error, Error::Corrupt { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn reopening_keeps_acknowledged_data_and_continues_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let (created, deleted) = {
            let store = SledStore::open(dir.path()).unwrap();
            let created = store
                .put(b"/a", b"1".to_vec(), Precondition::None)
                .await
                .unwrap();
            store
                .put(b"/a", b"2".to_vec(), Precondition::None)
                .await
                .unwrap();
            store
                .put(b"/b", b"3".to_vec(), Precondition::None)
                .await
                .unwrap();
            let deleted = store.delete(b"/b", Precondition::None).await.unwrap();
            (created, deleted)
        };
        assert_eq!(deleted.mod_revision, 4);

        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.revision(), 4);
        let (kvs, rev) = store.list(b"/").await.unwrap();
        assert_eq!(rev, 4);
        assert_eq!(
            kvs,
            vec![KeyValue {
                key: Bytes::from_static(b"/a"),
                value: Bytes::from_static(b"2"),
                create_revision: created.create_revision,
                mod_revision: 2,
            }]
        );
        let next = store
            .put(b"/c", Vec::new(), Precondition::None)
            .await
            .unwrap();
        assert_eq!(
            next.mod_revision, 5,
            "a revision must never be reused after a reopen"
        );
        assert!(
            matches!(
                store.watch(b"", 3),
                Err(Error::Compacted {
                    requested: 3,
                    oldest: 4
                })
            ),
            "history does not survive a restart"
        );
    }

    fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut paths: Vec<_> = std::fs::read_dir(dir.join(WAL_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        paths
    }

    /// Options under which nothing is checkpointed during a test, and each write gets a segment.
    fn log_only() -> StoreOptions {
        StoreOptions {
            checkpoint_interval: std::time::Duration::from_secs(3600),
            wal_segment_bytes: 1,
            ..StoreOptions::default()
        }
    }

    #[tokio::test]
    async fn writes_only_in_the_log_replay_on_opening_and_a_missing_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open_with(dir.path(), &log_only()).unwrap();
            for key in ["/a", "/b", "/c"] {
                store
                    .put(key.as_bytes(), b"v".to_vec(), Precondition::None)
                    .await
                    .unwrap();
            }
        }
        {
            let store = SledStore::open_with(dir.path(), &log_only()).unwrap();
            let (kvs, rev) = store.list(b"/").await.unwrap();
            assert_eq!((kvs.len(), rev), (3, 3), "the log alone had the writes");
        }
        // One segment per write (plus an empty one per opening): lose the one of revision 2.
        let with_two = segments(dir.path())
            .into_iter()
            .find(|path| {
                let bytes = std::fs::read(path).unwrap();
                bytes.windows(2).any(|w| w == b"/b")
            })
            .unwrap();
        std::fs::remove_file(with_two).unwrap();
        let error = SledStore::open_with(dir.path(), &log_only())
            .err()
            .expect("a gap in the log must be refused");
        assert!(
            matches!(
                error,
                Error::LogGap {
                    expected: 2,
                    found: 3,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_checkpoint_moves_the_writes_into_sled_and_deletes_the_segments_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            checkpoint_interval: std::time::Duration::from_millis(10),
            wal_segment_bytes: 1,
            ..StoreOptions::default()
        };
        let store = SledStore::open_with(dir.path(), &options).unwrap();
        for i in 0..5 {
            store
                .put(
                    format!("/k{i}").as_bytes(),
                    b"v".to_vec(),
                    Precondition::None,
                )
                .await
                .unwrap();
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while segments(dir.path()).len() > 1 {
            assert!(Instant::now() < deadline, "{:?}", segments(dir.path()));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(store);
        // sled alone has them now: the remaining segment is empty.
        for segment in segments(dir.path()) {
            assert_eq!(std::fs::metadata(segment).unwrap().len(), 0);
        }
        let store = SledStore::open_with(dir.path(), &log_only()).unwrap();
        let (kvs, rev) = store.list(b"/").await.unwrap();
        assert_eq!((kvs.len(), rev), (5, 5));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "throughput measurement; run with --ignored --nocapture"]
    async fn durable_put_throughput_at_1_16_and_64_writers() {
        for writers in [1usize, 16, 64] {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(SledStore::open(dir.path()).unwrap());
            let per_writer = 4000 / writers.min(8);
            let started = Instant::now();
            let tasks: Vec<_> = (0..writers)
                .map(|writer| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move {
                        for i in 0..per_writer {
                            let key = format!("/registry/Bench/w{writer}-{i}");
                            store
                                .put(key.as_bytes(), vec![0; 256], Precondition::None)
                                .await?;
                        }
                        Ok::<_, Error>(())
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap().unwrap();
            }
            let total = writers * per_writer;
            let rate = total as f64 / started.elapsed().as_secs_f64();
            println!("{writers:>3} writers: {total} durable puts, {rate:.0} puts/s");
        }
    }
}
