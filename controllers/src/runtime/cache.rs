//! The reflector: a watch-fed, in-memory copy of the objects of one kind (or of every kind).
//!
//! A [`Cache`] is fed by [`Client::list_watch`]: each `Listed` replaces the whole picture (the
//! first one marks the cache synced), each watch event applies one change. Readers see it
//! synchronously (`get`, `list`, `by_owner_uid`). After applying a change the cache broadcasts a
//! [`CacheEvent`], so that controllers map changes to keys while the cache already shows them.
//! A subscriber that falls behind gets a `Lagged` error and must treat it as a relist.

use futures::StreamExt;
use hanul_proto::{
    Client, Fields, Kind,
    client::WatchUpdate,
    v1::{EventType, Object},
};
use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    sync::{
        Arc, PoisonError, RwLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
};
use tokio::sync::{broadcast, watch};
use tracing::{debug, warn};

use super::Shutdown;

/// Names an object: its kind and name (names are unique per kind).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            kind,
            name: name.into(),
        }
    }

    /// The key of `object`; `None` for an empty envelope.
    pub fn of(object: &Object) -> Option<ObjectKey> {
        Some(ObjectKey::new(object.kind()?, object.name()))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// A change the cache has applied.
#[derive(Clone, Debug)]
pub enum CacheEvent {
    /// An object was added (`old` is `None`) or changed.
    Applied {
        old: Option<Arc<Object>>,
        new: Arc<Object>,
    },
    /// An object is gone; this is its last state.
    Deleted(Arc<Object>),
    /// The whole picture was replaced by a (re-)list: anything may have changed, including
    /// deletions no event was sent for.
    Relisted,
}

/// A watch-fed map of objects. Cheap to clone; clones share the map.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    kind: Option<Kind>,
    selector: String,
    fields: Fields,
    state: RwLock<State>,
    synced: watch::Sender<bool>,
    events: broadcast::Sender<CacheEvent>,
    started: AtomicBool,
}

#[derive(Default)]
struct State {
    objects: HashMap<ObjectKey, Arc<Object>>,
    /// Owner uid → the objects naming it in their ownerReferences.
    by_owner: HashMap<String, BTreeSet<ObjectKey>>,
    revision: u64,
}

impl State {
    fn index(&mut self, key: &ObjectKey, object: &Object) {
        for uid in owner_uids(object) {
            self.by_owner
                .entry(uid.to_string())
                .or_default()
                .insert(key.clone());
        }
    }

    fn unindex(&mut self, key: &ObjectKey, object: &Object) {
        for uid in owner_uids(object) {
            if let Some(set) = self.by_owner.get_mut(uid) {
                set.remove(key);
                if set.is_empty() {
                    self.by_owner.remove(uid);
                }
            }
        }
    }
}

fn owner_uids(object: &Object) -> impl Iterator<Item = &str> {
    object
        .metadata()
        .into_iter()
        .flat_map(|m| m.owner_references.iter())
        .map(|r| r.uid.as_str())
        .filter(|uid| !uid.is_empty())
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("kind", &self.inner.kind)
            .field("selector", &self.inner.selector)
            .field("len", &self.len())
            .field("synced", &self.has_synced())
            .finish()
    }
}

/// How many unread changes a subscriber may fall behind before it must resync.
const EVENT_BUFFER: usize = 4096;

impl Cache {
    /// An empty cache of objects of `kind` (every kind when `None`); fed once
    /// [`Cache::start`]ed, or by hand through [`Cache::apply`].
    pub fn new(kind: Option<Kind>) -> Cache {
        Cache::with_selector(kind, "")
    }

    /// Like [`Cache::new`], only for objects matching a label selector.
    pub fn with_selector(kind: Option<Kind>, selector: &str) -> Cache {
        Cache::build(kind, selector, Fields::All)
    }

    /// Like [`Cache::new`], holding each object's kind and metadata only (spec and status are
    /// never sent): for collectors that judge objects by their metadata, as Kubernetes'
    /// metadata informers do.
    pub fn metadata_only(kind: Option<Kind>) -> Cache {
        Cache::build(kind, "", Fields::MetadataOnly)
    }

    fn build(kind: Option<Kind>, selector: &str, fields: Fields) -> Cache {
        Cache {
            inner: Arc::new(Inner {
                kind,
                selector: selector.to_string(),
                fields,
                state: RwLock::new(State::default()),
                synced: watch::channel(false).0,
                events: broadcast::channel(EVENT_BUFFER).0,
                started: AtomicBool::new(false),
            }),
        }
    }

    /// Starts feeding the cache from `client` in a background task, which ends on `shutdown`
    /// or when every handle to the cache is dropped. Starting twice does nothing.
    pub fn start(&self, client: &Client, shutdown: Shutdown) {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let stream =
            client.list_watch_fields(self.inner.kind, &self.inner.selector, self.inner.fields);
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let kind = self.inner.kind;
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                let update = tokio::select! {
                    _ = shutdown.wait() => break,
                    update = stream.next() => update,
                };
                let (Some(update), Some(inner)) = (update, weak.upgrade()) else {
                    break;
                };
                Cache { inner }.apply(update);
            }
            debug!(kind = ?kind, "Cache stopped.");
        });
    }

    /// Applies one update from [`Client::list_watch`] and tells subscribers.
    pub fn apply(&self, update: WatchUpdate) {
        let event = match update {
            WatchUpdate::Listed { items, revision } => {
                let mut state = State {
                    revision,
                    ..State::default()
                };
                for object in items {
                    if let Some(key) = self.key_if_wanted(&object) {
                        state.index(&key, &object);
                        state.objects.insert(key, Arc::new(object));
                    }
                }
                debug!(kind = ?self.inner.kind, objects = state.objects.len(), revision, "Cache relisted.");
                *self.write() = state;
                self.inner.synced.send_replace(true);
                CacheEvent::Relisted
            }
            WatchUpdate::Event(ev) => {
                let revision = ev.revision;
                let kind = ev.r#type();
                let Some(object) = ev.object else { return };
                let Some(key) = self.key_if_wanted(&object) else {
                    return;
                };
                let mut state = self.write();
                state.revision = state.revision.max(revision);
                match kind {
                    EventType::Added | EventType::Modified => {
                        let new = Arc::new(object);
                        let old = state.objects.get(&key).cloned();
                        if let Some(old) = &old {
                            // A replayed or reordered event must not move the picture back.
                            if old.resource_version() >= new.resource_version()
                                && new.resource_version() != 0
                            {
                                return;
                            }
                            state.unindex(&key, old);
                        }
                        state.index(&key, &new);
                        state.objects.insert(key, new.clone());
                        CacheEvent::Applied { old, new }
                    }
                    EventType::Deleted => {
                        let last = match state.objects.remove(&key) {
                            Some(old) => {
                                state.unindex(&key, &old);
                                // The event carries the last stored state; prefer it.
                                if object.resource_version() >= old.resource_version() {
                                    Arc::new(object)
                                } else {
                                    old
                                }
                            }
                            None => Arc::new(object),
                        };
                        CacheEvent::Deleted(last)
                    }
                    EventType::Bookmark | EventType::Unspecified => return,
                }
            }
            WatchUpdate::Error(status) => {
                warn!(kind = ?self.inner.kind, code = ?status.code(), error = %status.message(), "Cache watch failed; retrying.");
                return;
            }
        };
        // No subscriber is not an error: nobody is listening yet.
        let _ = self.inner.events.send(event);
    }

    fn key_if_wanted(&self, object: &Object) -> Option<ObjectKey> {
        let key = ObjectKey::of(object)?;
        match self.inner.kind {
            Some(kind) if kind != key.kind => None,
            _ => Some(key),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // Writers do not panic while holding the lock (no user code runs under it).
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The kind cached; `None` for every kind.
    pub fn kind(&self) -> Option<Kind> {
        self.inner.kind
    }

    /// The object of `kind` named `name`, if cached.
    pub fn get(&self, kind: Kind, name: &str) -> Option<Arc<Object>> {
        self.get_key(&ObjectKey::new(kind, name))
    }

    /// The object at `key`, if cached.
    pub fn get_key(&self, key: &ObjectKey) -> Option<Arc<Object>> {
        self.read().objects.get(key).cloned()
    }

    /// Every cached object, in no particular order.
    pub fn list(&self) -> Vec<Arc<Object>> {
        self.read().objects.values().cloned().collect()
    }

    /// Every cached object of `kind`.
    pub fn list_kind(&self, kind: Kind) -> Vec<Arc<Object>> {
        self.read()
            .objects
            .iter()
            .filter(|(k, _)| k.kind == kind)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// The keys of every cached object.
    pub fn keys(&self) -> Vec<ObjectKey> {
        self.read().objects.keys().cloned().collect()
    }

    /// The cached objects naming `uid` in their ownerReferences.
    pub fn by_owner_uid(&self, uid: &str) -> Vec<Arc<Object>> {
        let state = self.read();
        state
            .by_owner
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|k| state.objects.get(k).cloned())
            .collect()
    }

    /// The number of cached objects.
    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    /// Whether the cache holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The store revision the cache reflects.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// Whether a first list has been applied.
    pub fn has_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Completes once a first list has been applied.
    pub async fn wait_synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we wait.
        let _ = rx.wait_for(|synced| *synced).await;
    }

    /// Changes applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CacheEvent> {
        self.inner.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::{Image, ObjectMeta, OwnerReference, WatchEvent};

    pub(crate) fn image(name: &str, uid: &str, rv: u64, owners: &[(&str, &str)]) -> Object {
        Image {
            metadata: Some(ObjectMeta {
                name: name.into(),
                uid: uid.into(),
                resource_version: rv,
                owner_references: owners
                    .iter()
                    .map(|(name, uid)| OwnerReference {
                        kind: "Image".into(),
                        name: (*name).into(),
                        uid: (*uid).into(),
                        controller: false,
                    })
                    .collect(),
                ..Default::default()
            }),
            spec: None,
            status: None,
        }
        .into()
    }

    fn event(t: EventType, object: Object) -> WatchUpdate {
        WatchUpdate::Event(WatchEvent {
            r#type: t as i32,
            revision: object.resource_version(),
            object: Some(object),
        })
    }

    fn names(objects: Vec<Arc<Object>>) -> Vec<String> {
        let mut n: Vec<String> = objects.iter().map(|o| o.name().to_string()).collect();
        n.sort();
        n
    }

    #[tokio::test]
    async fn a_list_replaces_the_whole_picture_and_marks_the_cache_synced() {
        let cache = Cache::new(Some(Kind::Image));
        assert!(!cache.has_synced());
        cache.apply(WatchUpdate::Listed {
            items: vec![image("a", "u1", 1, &[]), image("b", "u2", 2, &[])],
            revision: 2,
        });
        cache.wait_synced().await;
        cache.apply(WatchUpdate::Listed {
            items: vec![image("c", "u3", 5, &[])],
            revision: 5,
        });
        assert_eq!(names(cache.list()), ["c"]);
        assert_eq!(cache.revision(), 5);
    }

    #[tokio::test]
    async fn events_are_applied_then_broadcast() {
        let cache = Cache::new(None);
        let mut events = cache.subscribe();
        cache.apply(WatchUpdate::Listed {
            items: vec![],
            revision: 1,
        });
        assert!(matches!(events.recv().await.unwrap(), CacheEvent::Relisted));
        cache.apply(event(EventType::Added, image("a", "u1", 2, &[])));
        match events.recv().await.unwrap() {
            CacheEvent::Applied { old: None, new } => assert_eq!(new.name(), "a"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(cache.get(Kind::Image, "a").is_some());
        cache.apply(event(EventType::Modified, image("a", "u1", 3, &[])));
        assert!(matches!(
            events.recv().await.unwrap(),
            CacheEvent::Applied { old: Some(_), .. }
        ));
        cache.apply(event(EventType::Deleted, image("a", "u1", 4, &[])));
        assert!(matches!(events.recv().await.unwrap(), CacheEvent::Deleted(o) if o.name() == "a"));
        assert!(cache.get(Kind::Image, "a").is_none());
    }

    #[tokio::test]
    async fn a_replayed_older_event_does_not_move_the_picture_back() {
        let cache = Cache::new(None);
        cache.apply(WatchUpdate::Listed {
            items: vec![image("a", "u1", 5, &[])],
            revision: 5,
        });
        cache.apply(event(EventType::Modified, image("a", "u1", 3, &[])));
        assert_eq!(cache.get(Kind::Image, "a").unwrap().resource_version(), 5);
    }

    #[tokio::test]
    async fn the_owner_index_follows_changes_of_owner_references() {
        let cache = Cache::new(None);
        cache.apply(WatchUpdate::Listed {
            items: vec![
                image("d1", "u1", 1, &[("o", "uo")]),
                image("d2", "u2", 2, &[("o", "uo"), ("p", "up")]),
            ],
            revision: 2,
        });
        assert_eq!(names(cache.by_owner_uid("uo")), ["d1", "d2"]);
        assert_eq!(names(cache.by_owner_uid("up")), ["d2"]);
        cache.apply(event(
            EventType::Modified,
            image("d2", "u2", 3, &[("p", "up")]),
        ));
        assert_eq!(names(cache.by_owner_uid("uo")), ["d1"]);
        cache.apply(event(
            EventType::Deleted,
            image("d1", "u1", 4, &[("o", "uo")]),
        ));
        assert!(cache.by_owner_uid("uo").is_empty());
        assert_eq!(names(cache.by_owner_uid("up")), ["d2"]);
    }

    #[tokio::test]
    async fn a_cache_of_one_kind_ignores_other_kinds() {
        let cache = Cache::new(Some(Kind::Volume));
        cache.apply(WatchUpdate::Listed {
            items: vec![image("a", "u1", 1, &[])],
            revision: 1,
        });
        assert!(cache.is_empty());
    }
}
