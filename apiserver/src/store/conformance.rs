//! The store conformance suite: every case runs against every backend (`memory::*`, `sled::*`,
//! and sled checkpointing all the time, `sled_checkpointing::*`),
//! so both give the object layer the same semantics. A new backend adds one `Harness` and one
//! line to `suite!`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use proptest::prelude::*;
use tempfile::TempDir;

use super::{
    Error, KeyValue, MemoryStore, Precondition, Revision, SledStore, Store, StoreOptions,
    WatchEvent, WatchEventKind, WatchStream,
};

/// How long a test waits for something that should happen promptly before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

trait Harness {
    type S: Store;
    fn open(options: &StoreOptions) -> Fixture<Self::S>;
}

/// A store plus whatever must outlive it (sled's directory: bind it as `_dir`, not `..`, which
/// would delete the directory while the store still writes log segments into it).
struct Fixture<S> {
    store: S,
    _dir: Option<TempDir>,
}

struct Memory;

impl Harness for Memory {
    type S = MemoryStore;
    fn open(options: &StoreOptions) -> Fixture<MemoryStore> {
        Fixture {
            store: MemoryStore::with_options(options),
            _dir: None,
        }
    }
}

struct Sled;

impl Harness for Sled {
    type S = SledStore;
    fn open(options: &StoreOptions) -> Fixture<SledStore> {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path(), options).unwrap();
        Fixture {
            store,
            _dir: Some(dir),
        }
    }
}

/// Sled with a checkpoint every millisecond and a new log segment every few records, so that
/// checkpoints and segment deletions interleave with every case's writes.
struct SledCheckpointing;

impl Harness for SledCheckpointing {
    type S = SledStore;
    fn open(options: &StoreOptions) -> Fixture<SledStore> {
        Sled::open(&busy_checkpoints(options))
    }
}

fn busy_checkpoints(options: &StoreOptions) -> StoreOptions {
    StoreOptions {
        checkpoint_interval: Duration::from_millis(1),
        wal_segment_bytes: 256,
        ..options.clone()
    }
}

fn open<H: Harness>() -> Fixture<H::S> {
    H::open(&StoreOptions::default())
}

async fn put(store: &impl Store, key: &str, value: &str) -> KeyValue {
    store
        .put(
            key.as_bytes(),
            value.as_bytes().to_vec(),
            Precondition::None,
        )
        .await
        .unwrap()
}

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(DEADLINE, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("expected a watch event within {DEADLINE:?}, got {other:?}"),
    }
}

/// Everything the stream has ready now. Acknowledged writes are already published, so after
/// awaiting them this is deterministic.
fn ready_events(stream: &mut WatchStream) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    while let Some(Some(item)) = stream.next().now_or_never() {
        events.push(item.unwrap());
    }
    events
}

fn revisions(events: &[WatchEvent]) -> Vec<Revision> {
    events.iter().map(WatchEvent::revision).collect()
}

fn keys(kvs: &[KeyValue]) -> Vec<&[u8]> {
    kvs.iter().map(|kv| &kv.key[..]).collect()
}

async fn put_then_get_returns_the_value_with_its_revisions<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    assert_eq!(store.get(b"/a").await.unwrap(), None);
    let written = put(&store, "/a", "one").await;
    let expected = KeyValue {
        key: b"/a".to_vec().into(),
        value: b"one".to_vec().into(),
        create_revision: 1,
        mod_revision: 1,
    };
    assert_eq!(written, expected);
    assert_eq!(store.get(b"/a").await.unwrap(), Some(expected));
}

async fn list_returns_the_keys_with_the_prefix_sorted_at_the_current_revision<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    for key in [
        "/registry/B/2",
        "/registry/A/1",
        "/registry/B/1",
        "/registry/Bx/1",
        "/other",
    ] {
        put(&store, key, "v").await;
    }
    let (kvs, rev) = store.list(b"/registry/B/").await.unwrap();
    assert_eq!(keys(&kvs), [&b"/registry/B/1"[..], b"/registry/B/2"]);
    assert_eq!(rev, 5);
    let (all, _) = store.list(b"").await.unwrap();
    assert_eq!(all.len(), 5);
    let (none, _) = store.list(b"/nothing/").await.unwrap();
    assert!(none.is_empty());
}

async fn every_write_advances_the_revision_by_one<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    assert_eq!(store.revision(), 0);
    assert_eq!(put(&store, "/a", "1").await.mod_revision, 1);
    assert_eq!(put(&store, "/b", "1").await.mod_revision, 2);
    assert_eq!(put(&store, "/a", "2").await.mod_revision, 3);
    assert_eq!(
        store
            .delete(b"/b", Precondition::None)
            .await
            .unwrap()
            .mod_revision,
        4
    );
    assert_eq!(store.revision(), 4);
}

async fn an_update_keeps_the_create_revision<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    put(&store, "/other", "x").await;
    let created = put(&store, "/a", "1").await;
    let updated = put(&store, "/a", "2").await;
    assert_eq!((created.create_revision, created.mod_revision), (2, 2));
    assert_eq!((updated.create_revision, updated.mod_revision), (2, 3));
    store.delete(b"/a", Precondition::None).await.unwrap();
    let recreated = put(&store, "/a", "3").await;
    assert_eq!((recreated.create_revision, recreated.mod_revision), (5, 5));
}

async fn must_not_exist_creates_once_then_conflicts_with_the_current_revision<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    let created = store
        .put(b"/a", b"1".to_vec(), Precondition::MustNotExist)
        .await
        .unwrap();
    let error = store
        .put(b"/a", b"2".to_vec(), Precondition::MustNotExist)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Conflict { key, expected: Precondition::MustNotExist, actual: Some(1) }
                if key == "/a"
        ),
        "{error:?}"
    );
    assert_eq!(store.get(b"/a").await.unwrap(), Some(created));
    assert_eq!(
        store.revision(),
        1,
        "a rejected write must not take a revision"
    );
}

async fn must_exist_conflicts_on_an_absent_key_and_updates_a_present_one<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    let error = store
        .put(b"/a", b"1".to_vec(), Precondition::MustExist)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Conflict {
                expected: Precondition::MustExist,
                actual: None,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(store.get(b"/a").await.unwrap(), None);
    put(&store, "/a", "1").await;
    let updated = store
        .put(b"/a", b"2".to_vec(), Precondition::MustExist)
        .await
        .unwrap();
    assert_eq!(updated.value, &b"2"[..]);
}

async fn mod_revision_updates_only_at_exactly_that_revision<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    let absent = store
        .put(b"/a", b"0".to_vec(), Precondition::ModRevision(1))
        .await
        .unwrap_err();
    assert!(
        matches!(absent, Error::Conflict { actual: None, .. }),
        "{absent:?}"
    );

    let first = put(&store, "/a", "1").await;
    let second = store
        .put(
            b"/a",
            b"2".to_vec(),
            Precondition::ModRevision(first.mod_revision),
        )
        .await
        .unwrap();
    let stale = store
        .put(
            b"/a",
            b"3".to_vec(),
            Precondition::ModRevision(first.mod_revision),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            Error::Conflict {
                expected: Precondition::ModRevision(1),
                actual: Some(2),
                ..
            }
        ),
        "{stale:?}"
    );
    assert_eq!(store.get(b"/a").await.unwrap(), Some(second));
}

async fn delete_returns_the_last_value_at_the_delete_revision<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    let written = put(&store, "/a", "last").await;
    let deleted = store
        .delete(b"/a", Precondition::ModRevision(1))
        .await
        .unwrap();
    assert_eq!(
        deleted,
        KeyValue {
            mod_revision: 2,
            ..written
        }
    );
    assert_eq!(store.get(b"/a").await.unwrap(), None);
    assert!(store.list(b"/").await.unwrap().0.is_empty());
}

async fn delete_checks_its_precondition_and_reports_an_absent_key_as_not_found<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    for pre in [
        Precondition::None,
        Precondition::MustExist,
        Precondition::ModRevision(1),
    ] {
        let error = store.delete(b"/a", pre).await.unwrap_err();
        assert!(
            matches!(&error, Error::NotFound { key } if key == "/a"),
            "{pre:?}: {error:?}"
        );
    }
    put(&store, "/a", "1").await;
    let stale = store
        .delete(b"/a", Precondition::ModRevision(7))
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            Error::Conflict {
                actual: Some(1),
                ..
            }
        ),
        "{stale:?}"
    );
    let exists = store
        .delete(b"/a", Precondition::MustNotExist)
        .await
        .unwrap_err();
    assert!(
        matches!(
            exists,
            Error::Conflict {
                actual: Some(1),
                ..
            }
        ),
        "{exists:?}"
    );
    assert!(store.get(b"/a").await.unwrap().is_some());
    assert_eq!(store.revision(), 1);
}

async fn watch_from_zero_sees_only_writes_after_it_started<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    put(&store, "/a", "before").await;
    let mut stream = store.watch(b"/", 0).unwrap();
    let after = put(&store, "/a", "after").await;
    let event = next_event(&mut stream).await;
    assert_eq!(event.kind, WatchEventKind::Put);
    assert_eq!(event.kv, after);
    assert_eq!(
        event.prev.map(|prev| prev.value),
        Some(bytes::Bytes::from_static(b"before"))
    );
    assert!(ready_events(&mut stream).is_empty());
}

async fn watch_from_a_past_revision_replays_history_then_continues_live<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    for i in 1..=5 {
        put(&store, &format!("/k{i}"), "v").await;
    }
    let mut stream = store.watch(b"/", 2).unwrap();
    put(&store, "/k6", "v").await;
    put(&store, "/k7", "v").await;
    assert_eq!(revisions(&ready_events(&mut stream)), [3, 4, 5, 6, 7]);
}

async fn watch_from_a_compacted_revision_is_refused<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    for i in 1..=5 {
        put(&store, &format!("/k{i}"), "v").await;
    }
    store.compact(3);
    let error = store.watch(b"/", 2).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Compacted {
                requested: 2,
                oldest: 3
            }
        ),
        "{error:?}"
    );
    let mut stream = store.watch(b"/", 3).unwrap();
    assert_eq!(revisions(&ready_events(&mut stream)), [4, 5]);
}

async fn history_beyond_its_capacity_is_compacted<H: Harness>() {
    let Fixture { store, _dir } = H::open(&StoreOptions {
        history_capacity: 3,
        ..StoreOptions::default()
    });
    for i in 1..=5 {
        put(&store, &format!("/k{i}"), "v").await;
    }
    let error = store.watch(b"/", 1).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Compacted {
                requested: 1,
                oldest: 2
            }
        ),
        "{error:?}"
    );
    let mut stream = store.watch(b"/", 2).unwrap();
    assert_eq!(revisions(&ready_events(&mut stream)), [3, 4, 5]);
}

async fn watch_delivers_only_keys_with_its_prefix<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    put(&store, "/registry/A/old", "v").await;
    let mut live = store.watch(b"/registry/A/", 0).unwrap();
    put(&store, "/registry/B/1", "v").await;
    put(&store, "/registry/A/1", "v").await;
    put(&store, "/registry/AB/1", "v").await;
    store
        .delete(b"/registry/A/old", Precondition::None)
        .await
        .unwrap();
    let mut replayed = store.watch(b"/registry/A/", 1).unwrap();
    for stream in [&mut live, &mut replayed] {
        let events = ready_events(stream);
        let keys: Vec<&[u8]> = events.iter().map(|event| &event.kv.key[..]).collect();
        assert_eq!(keys, [&b"/registry/A/1"[..], b"/registry/A/old"]);
        assert_eq!(revisions(&events), [3, 5]);
    }
}

async fn watch_reports_a_delete_with_the_prior_value<H: Harness>() {
    let Fixture { store, _dir } = open::<H>();
    let written = put(&store, "/a", "last").await;
    let mut stream = store.watch(b"/", 0).unwrap();
    store.delete(b"/a", Precondition::None).await.unwrap();
    let event = next_event(&mut stream).await;
    assert_eq!(event.kind, WatchEventKind::Delete);
    assert_eq!(
        event.kv,
        KeyValue {
            mod_revision: 2,
            ..written.clone()
        }
    );
    assert_eq!(event.prev, Some(written));
}

async fn concurrent_writers_get_distinct_revisions_and_watchers_see_each_once_in_order<
    H: Harness,
>() {
    const WRITERS: usize = 64;
    const PUTS: usize = 20;
    let Fixture { store, _dir } = open::<H>();
    let store = Arc::new(store);
    let mut stream = store.watch(b"/", 0).unwrap();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for i in 0..PUTS {
                    let key = format!("/w{writer}/{i}");
                    let kv = store
                        .put(key.as_bytes(), vec![1], Precondition::None)
                        .await
                        .unwrap();
                    revisions.push(kv.mod_revision);
                }
                revisions
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    acknowledged.sort_unstable();
    let total = (WRITERS * PUTS) as Revision;
    assert_eq!(acknowledged, (1..=total).collect::<Vec<_>>());
    assert_eq!(store.revision(), total);

    let mut seen = Vec::new();
    while seen.len() < acknowledged.len() {
        seen.push(next_event(&mut stream).await.revision());
    }
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    assert!(ready_events(&mut stream).is_empty());
}

async fn a_lagging_watcher_is_dropped_instead_of_blocking_writers<H: Harness>() {
    let Fixture { store, _dir } = H::open(&StoreOptions {
        watcher_buffer: 4,
        ..StoreOptions::default()
    });
    let mut lagging = store.watch(b"/", 0).unwrap();
    let mut keeping_up = store.watch(b"/", 0).unwrap();
    for i in 1..=10 {
        let key = format!("/k{i}");
        let write = store.put(key.as_bytes(), Vec::new(), Precondition::None);
        tokio::time::timeout(DEADLINE, write)
            .await
            .expect("a lagging watcher blocked a writer")
            .unwrap();
        assert_eq!(next_event(&mut keeping_up).await.revision(), i);
    }
    for rev in 1..=4 {
        assert_eq!(next_event(&mut lagging).await.revision(), rev);
    }
    let end = tokio::time::timeout(DEADLINE, lagging.next())
        .await
        .unwrap();
    assert!(
        matches!(end, Some(Err(Error::WatcherLagged { last_delivered: 4 }))),
        "{end:?}"
    );
    assert!(lagging.next().await.is_none());
    let mut resumed = store.watch(b"/", 4).unwrap();
    assert_eq!(
        revisions(&ready_events(&mut resumed)),
        (5..=10).collect::<Vec<_>>()
    );
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case::<super::Memory>().await;
                }
            )*
        }

        mod sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case::<super::Sled>().await;
                }
            )*
        }

        mod sled_checkpointing {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case::<super::SledCheckpointing>().await;
                }
            )*
        }
    };
}

suite!(
    put_then_get_returns_the_value_with_its_revisions,
    list_returns_the_keys_with_the_prefix_sorted_at_the_current_revision,
    every_write_advances_the_revision_by_one,
    an_update_keeps_the_create_revision,
    must_not_exist_creates_once_then_conflicts_with_the_current_revision,
    must_exist_conflicts_on_an_absent_key_and_updates_a_present_one,
    mod_revision_updates_only_at_exactly_that_revision,
    delete_returns_the_last_value_at_the_delete_revision,
    delete_checks_its_precondition_and_reports_an_absent_key_as_not_found,
    watch_from_zero_sees_only_writes_after_it_started,
    watch_from_a_past_revision_replays_history_then_continues_live,
    watch_from_a_compacted_revision_is_refused,
    history_beyond_its_capacity_is_compacted,
    watch_delivers_only_keys_with_its_prefix,
    watch_reports_a_delete_with_the_prior_value,
    concurrent_writers_get_distinct_revisions_and_watchers_see_each_once_in_order,
    a_lagging_watcher_is_dropped_instead_of_blocking_writers,
);

// The model-based property test: random writes with random preconditions against a BTreeMap.

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: u8,
        value: u8,
        pre: Precondition,
    },
    Delete {
        key: u8,
        pre: Precondition,
    },
}

/// What a write did, comparable between the store and the model.
#[derive(Debug, PartialEq)]
enum Outcome {
    Written(KeyValue),
    Conflict { actual: Option<Revision> },
    NotFound,
}

fn precondition() -> impl Strategy<Value = Precondition> {
    prop_oneof![
        Just(Precondition::None),
        Just(Precondition::MustNotExist),
        Just(Precondition::MustExist),
        (1..24u64).prop_map(Precondition::ModRevision),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // Few keys, so that preconditions often meet existing keys.
    prop_oneof![
        3 => (0..4u8, any::<u8>(), precondition())
            .prop_map(|(key, value, pre)| Op::Put { key, value, pre }),
        1 => (0..4u8, precondition()).prop_map(|(key, pre)| Op::Delete { key, pre }),
    ]
}

fn key_of(key: u8) -> Vec<u8> {
    format!("/k{key}").into_bytes()
}

#[derive(Default)]
struct Model {
    data: BTreeMap<Vec<u8>, KeyValue>,
    revision: Revision,
    events: Vec<WatchEvent>,
}

impl Model {
    fn apply(&mut self, op: &Op) -> Outcome {
        let (key, pre) = match op {
            Op::Put { key, pre, .. } | Op::Delete { key, pre } => (key_of(*key), *pre),
        };
        let current = self.data.get(&key).cloned();
        if matches!(op, Op::Delete { .. }) && current.is_none() {
            return Outcome::NotFound;
        }
        let actual = current.as_ref().map(|kv| kv.mod_revision);
        let allowed = match pre {
            Precondition::None => true,
            Precondition::MustNotExist => actual.is_none(),
            Precondition::MustExist => actual.is_some(),
            Precondition::ModRevision(rev) => actual == Some(rev),
        };
        if !allowed {
            return Outcome::Conflict { actual };
        }
        self.revision += 1;
        let (kind, kv) = match op {
            Op::Put { value, .. } => {
                let kv = KeyValue {
                    key: key.clone().into(),
                    value: vec![*value].into(),
                    create_revision: current
                        .as_ref()
                        .map_or(self.revision, |kv| kv.create_revision),
                    mod_revision: self.revision,
                };
                self.data.insert(key, kv.clone());
                (WatchEventKind::Put, kv)
            }
            Op::Delete { .. } => {
                self.data.remove(&key);
                let last = current
                    .clone()
                    .expect("absent keys returned NotFound above");
                (
                    WatchEventKind::Delete,
                    KeyValue {
                        mod_revision: self.revision,
                        ..last
                    },
                )
            }
        };
        self.events.push(WatchEvent {
            kind,
            kv: kv.clone(),
            prev: current,
        });
        Outcome::Written(kv)
    }
}

async fn run_on_store(store: &impl Store, op: &Op) -> Outcome {
    let result = match op {
        Op::Put { key, value, pre } => store.put(&key_of(*key), vec![*value], *pre).await,
        Op::Delete { key, pre } => store.delete(&key_of(*key), *pre).await,
    };
    match result {
        Ok(kv) => Outcome::Written(kv),
        Err(Error::Conflict { actual, .. }) => Outcome::Conflict { actual },
        Err(Error::NotFound { .. }) => Outcome::NotFound,
        Err(other) => panic!("{op:?} failed unexpectedly: {other:?}"),
    }
}

fn store_matches_the_model<H: Harness>(ops: &[Op]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let Fixture { store, _dir } = open::<H>();
        let mut stream = store.watch(b"", 0).unwrap();
        let mut model = Model::default();
        for (i, op) in ops.iter().enumerate() {
            let expected = model.apply(op);
            assert_eq!(run_on_store(&store, op).await, expected, "op {i}: {op:?}");
        }
        let (kvs, rev) = store.list(b"").await.unwrap();
        assert_eq!(kvs, model.data.values().cloned().collect::<Vec<_>>());
        assert_eq!(rev, model.revision);
        assert_eq!(store.revision(), model.revision);
        assert_eq!(ready_events(&mut stream), model.events);
    });
}

proptest! {
    #[test]
    fn the_memory_store_behaves_like_a_sorted_map_model(
        ops in proptest::collection::vec(op(), 1..48),
    ) {
        store_matches_the_model::<Memory>(&ops);
    }
}

proptest! {
    // Every write is an fsync, so sled gets fewer cases.
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn the_sled_store_behaves_like_a_sorted_map_model(
        ops in proptest::collection::vec(op(), 1..48),
    ) {
        store_matches_the_model::<Sled>(&ops);
    }
}

/// Runs `ops` on a sled store that is closed and opened again after op `reopen_at` (the log
/// replays onto the last checkpoint): the data, revisions and answers are the model's all along.
fn sled_survives_reopening_like_the_model(ops: &[Op], reopen_at: usize, busy: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let options = if busy {
            busy_checkpoints(&StoreOptions::default())
        } else {
            StoreOptions::default()
        };
        let mut store = SledStore::open_with(dir.path(), &options).unwrap();
        let mut model = Model::default();
        for (i, op) in ops.iter().enumerate() {
            if i == reopen_at {
                drop(store);
                store = SledStore::open_with(dir.path(), &options).unwrap();
                let (kvs, rev) = store.list(b"").await.unwrap();
                assert_eq!(kvs, model.data.values().cloned().collect::<Vec<_>>());
                assert_eq!(rev, model.revision);
            }
            let expected = model.apply(op);
            assert_eq!(run_on_store(&store, op).await, expected, "op {i}: {op:?}");
        }
        drop(store);
        let store = SledStore::open_with(dir.path(), &options).unwrap();
        let (kvs, rev) = store.list(b"").await.unwrap();
        assert_eq!(kvs, model.data.values().cloned().collect::<Vec<_>>());
        assert_eq!(rev, model.revision);
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn the_sled_store_keeps_the_model_across_reopening(
        ops in proptest::collection::vec(op(), 1..48),
        reopen_at in 0usize..48,
        busy in any::<bool>(),
    ) {
        sled_survives_reopening_like_the_model(&ops, reopen_at, busy);
    }
}
