//! The sled backend: the embedded default store.
//!
//! Layout: one sled tree, `kv`, holding both data and metadata, because a sled `Batch` is atomic
//! only within one tree and each write must change a data key and the store revision together
//! (a cross-tree `transaction` would do too, at a higher cost per write). The first byte of every
//! sled key separates the two spaces, so user keys need no reserved range:
//!
//! ```text
//! b'd' ++ key        → create_revision (u64 BE) ++ mod_revision (u64 BE) ++ value
//! b"m/revision"      → store revision (u64 BE), rewritten by every write
//! ```
//!
//! Durability comes from the engine's group commit, which calls `Backend::flush`: sled's
//! own flush, then `fdatasync` of sled's log file. On Linux sled 0.34 ends its flush with
//! `sync_file_range`, which survives a killed process but neither flushes the drive's write cache
//! nor the file's size, so by itself it does not survive a power cut. One `fdatasync` per group
//! commit costs little: on the (busy, 2-core) dev VM a lone writer did 1.3k–3k durable puts/s and
//! 16–64 writers 7k–11k, with or without it. Sled's periodic background flush only makes
//! unacknowledged writes durable earlier.

use std::fs::File;
use std::path::Path;

use ::sled::{Batch, Db, IVec, Tree};

use super::engine::{Backend, Engine, delegate_store};
use super::{Error, KeyValue, Result, Revision, StoreOptions, key_text};

const TREE: &[u8] = b"kv";
const DATA: u8 = b'd';
const REVISION_KEY: &[u8] = b"m/revision";
const HEADER_LEN: usize = 16;
/// Where sled 0.34 keeps its log, inside the database directory.
const LOG_FILE: &str = "db";

/// The [`Store`](super::Store) backed by sled in a directory on disk.
pub struct SledStore {
    engine: Engine<SledBackend>,
}

impl SledStore {
    /// Opens (or creates) the store in directory `path` with default options. Blocks while sled
    /// recovers, so call it at startup or from `spawn_blocking`. The revision continues from the
    /// last write on disk; watch history starts empty.
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
        let db = ::sled::open(path).map_err(open_error)?;
        let tree = db.open_tree(TREE).map_err(open_error)?;
        let log_path = path.join(LOG_FILE);
        let log = File::open(&log_path).map_err(|source| Error::OpenLog {
            path: log_path,
            source,
        })?;
        let engine = Engine::new(SledBackend { db, tree, log }, options)?;
        Ok(Self { engine })
    }
}

delegate_store!(SledStore);

struct SledBackend {
    db: Db,
    tree: Tree,
    /// sled's log file, opened again only to `fdatasync` it (which acts on the file, whatever
    /// the descriptor).
    log: File,
}

impl Backend for SledBackend {
    fn revision(&self) -> Result<Revision> {
        let stored = self
            .tree
            .get(REVISION_KEY)
            .map_err(|source| Error::Backend {
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

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let record = self
            .tree
            .get(data_key(key))
            .map_err(|source| Error::Backend {
                op: "read a key",
                source,
            })?;
        record
            .map(|record| decode(key.to_vec(), &record))
            .transpose()
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        self.tree
            .scan_prefix(data_key(prefix))
            .map(|entry| {
                let (key, record) = entry.map_err(|source| Error::Backend {
                    op: "scan keys",
                    source,
                })?;
                decode(key[1..].to_vec(), &record)
            })
            .collect()
    }

    fn apply(&self, key: &[u8], kv: Option<&KeyValue>, rev: Revision) -> Result<()> {
        let mut batch = Batch::default();
        match kv {
            Some(kv) => batch.insert(data_key(key), encode(kv)),
            None => batch.remove(data_key(key)),
        }
        batch.insert(REVISION_KEY, &rev.to_be_bytes());
        self.tree
            .apply_batch(batch)
            .map_err(|source| Error::Backend {
                op: "apply a write",
                source,
            })
    }

    fn flush(&self) -> Result<(), ::sled::Error> {
        // Flushing the database flushes every tree: they share one log.
        self.db.flush()?;
        self.log.sync_data().map_err(::sled::Error::from)
    }
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

fn decode(key: Vec<u8>, record: &IVec) -> Result<KeyValue> {
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
        value: record[HEADER_LEN..].to_vec(),
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

    #[test]
    fn a_record_round_trips_through_its_encoding() {
        let kv = KeyValue {
            key: b"/registry/Instance/web-1".to_vec(),
            value: b"spec".to_vec(),
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
        let error = decode(b"/k".to_vec(), &IVec::from(&b"short"[..])).unwrap_err();
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
                key: b"/a".to_vec(),
                value: b"2".to_vec(),
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
