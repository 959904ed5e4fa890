//! The object layer: the generic object service's semantics over the byte-level [`Store`].
//!
//! Every kind is handled alike: admission on every write, `uid`/`createdAt` on create,
//! `generation` bumped on spec changes only, `resourceVersion` = the store revision of the last
//! write (optimistic concurrency), status written through its own call, and deletion that waits
//! for finalizers. Objects live under `/registry/<Kind>/<name>`, encoded as protobuf.

use crate::{
    admission::{self, BUILTIN_LABEL},
    error::{Error, Result},
    store::{self, KeyValue, Precondition, Store, WatchEventKind},
    time,
};
use futures::{Stream, StreamExt};
use hanul_proto::{
    Fields, Kind, Selector,
    v1::{ApplyResult, EventType, Object, WatchEvent, object::Resource},
};
use prometheus_client::metrics::histogram::Histogram;
use prost::Message;
use rand::Rng;
use std::{collections::HashMap, sync::Arc, time::Instant};
use tracing::debug;

/// How often an optimistic write without a caller precondition retries after a conflict.
const MAX_RETRIES: usize = 16;

/// The object layer. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    /// Latency of durable writes, flush included.
    write_latency: Option<Histogram>,
}

fn prefix(kind: Option<Kind>) -> Vec<u8> {
    match kind {
        Some(k) => format!("/registry/{}/", k.as_str()).into_bytes(),
        None => b"/registry/".to_vec(),
    }
}

fn key(kind: Kind, name: &str) -> Vec<u8> {
    format!("/registry/{}/{name}", kind.as_str()).into_bytes()
}

fn decode(kv: &KeyValue) -> Result<Object> {
    let mut obj = Object::decode(&kv.value[..]).map_err(|source| Error::Corrupt {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        source,
    })?;
    obj.metadata_mut().resource_version = kv.mod_revision;
    Ok(obj)
}

fn kind_of(obj: &Object) -> Result<Kind> {
    obj.kind()
        .ok_or_else(|| Error::invalid("kind", "required: the object envelope is empty"))
}

fn not_found(kind: Kind, name: &str) -> Error {
    Error::NotFound {
        kind: kind.as_str().into(),
        name: name.into(),
    }
}

/// A random lowercase suffix for `generateName`, like Kubernetes' five characters.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Registry {
    pub fn new(store: Arc<dyn Store>) -> Registry {
        Registry {
            store,
            write_latency: None,
        }
    }

    /// Records the latency of every durable write in `histogram`.
    pub fn with_write_latency(mut self, histogram: Histogram) -> Registry {
        self.write_latency = Some(histogram);
        self
    }

    async fn store_put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        pre: Precondition,
    ) -> store::Result<KeyValue> {
        let start = Instant::now();
        let r = self.store.put(key, value, pre).await;
        if let Some(h) = &self.write_latency {
            h.observe(start.elapsed().as_secs_f64());
        }
        r
    }

    async fn store_delete(&self, key: &[u8], pre: Precondition) -> store::Result<KeyValue> {
        let start = Instant::now();
        let r = self.store.delete(key, pre).await;
        if let Some(h) = &self.write_latency {
            h.observe(start.elapsed().as_secs_f64());
        }
        r
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    async fn read(&self, kind: Kind, name: &str) -> Result<Option<Object>> {
        match self.store.get(&key(kind, name)).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    async fn admission_context(
        &self,
        obj: &Object,
        old: Option<&Object>,
        also: &[String],
    ) -> Result<admission::Context> {
        let mut ctx = admission::Context::default();
        // The known instance types matter only when an instance's type is chosen, or a
        // group's launch template's (admission checks it then); an update that keeps the type
        // reads nothing.
        let type_of = |o: &Object| match &o.resource {
            Some(Resource::Instance(i)) => i.spec.as_ref().map(|s| s.instance_type.clone()),
            Some(Resource::AutoScalingGroup(g)) => g
                .spec
                .as_ref()
                .and_then(|s| s.launch_template.as_ref())
                .map(|t| t.instance_type.clone()),
            Some(Resource::LaunchTemplate(t)) => t.spec.as_ref().map(|s| s.instance_type.clone()),
            _ => None,
        };
        if type_of(obj).is_some() && old.is_none_or(|old| type_of(old) != type_of(obj)) {
            let (kvs, _) = self.store.list(&prefix(Some(Kind::InstanceType))).await?;
            ctx.instance_types = kvs
                .iter()
                .filter_map(|kv| std::str::from_utf8(&kv.key).ok())
                .filter_map(|k| k.rsplit('/').next())
                .map(String::from)
                .chain(also.iter().cloned())
                .collect();
            ctx.instance_types.sort();
            ctx.instance_types.dedup();
        }
        Ok(ctx)
    }

    /// Defaults and validates `obj`; `also` names instance types to count as existing (those a
    /// dry run of a whole manifest creates beside the instances using them).
    async fn admit(&self, obj: &mut Object, old: Option<&Object>, also: &[String]) -> Result<()> {
        admission::default(obj);
        let ctx = self.admission_context(obj, old, also).await?;
        admission::validate(obj, old, &ctx)
    }

    /// Writes with a precondition, mapping store conflicts to API errors.
    async fn put(&self, mut obj: Object, pre: Precondition) -> Result<Object> {
        let kind = kind_of(&obj)?;
        let name = obj.name().to_string();
        // The stored bytes carry no resourceVersion: the store's revision is the truth.
        obj.metadata_mut().resource_version = 0;
        let value = obj.encode_to_vec();
        let kv = self
            .store_put(&key(kind, &name), value, pre)
            .await
            .map_err(|e| match e {
                store::Error::Conflict { actual: None, .. } => not_found(kind, &name),
                store::Error::Conflict {
                    actual: Some(current),
                    ..
                } => match pre {
                    Precondition::MustNotExist => Error::AlreadyExists {
                        kind: kind.as_str().into(),
                        name: name.clone(),
                    },
                    Precondition::ModRevision(sent) => Error::Conflict {
                        kind: kind.as_str().into(),
                        name: name.clone(),
                        sent,
                        current,
                    },
                    _ => Error::Conflict {
                        kind: kind.as_str().into(),
                        name: name.clone(),
                        sent: 0,
                        current,
                    },
                },
                other => other.into(),
            })?;
        obj.metadata_mut().resource_version = kv.mod_revision;
        Ok(obj)
    }

    /// Creates a new object. A name may be generated from `metadata.generateName`.
    pub async fn create(&self, obj: Object, dry_run: bool) -> Result<Object> {
        self.create_with(obj, dry_run, &[]).await
    }

    async fn create_with(&self, mut obj: Object, dry_run: bool, also: &[String]) -> Result<Object> {
        let kind = kind_of(&obj)?;
        {
            let m = obj.metadata_mut();
            if m.name.is_empty() && !m.generate_name.is_empty() {
                m.name = format!("{}{}", m.generate_name, random_suffix());
            }
            m.uid = uuid::Uuid::new_v4().to_string();
            m.resource_version = 0;
            m.generation = 1;
            m.created_at = Some(time::now());
            m.deleted_at = None;
        }
        // Status is written by controllers and agents through update-status; a create that
        // carries one (an Event has none) keeps it only for kinds without a controller yet.
        if kind.has_status() {
            obj.clear_status();
        }
        self.admit(&mut obj, None, also).await?;
        if dry_run {
            return Ok(obj);
        }
        let out = self.put(obj, Precondition::MustNotExist).await?;
        debug!(kind = %kind, name = out.name(), rv = out.resource_version(), "Created object.");
        Ok(out)
    }

    /// Creates the object, or replaces its spec, labels and annotations (and finalizers and
    /// owner references when the applied object names some). Returns what it did.
    pub async fn apply(&self, obj: Object, dry_run: bool) -> Result<(Object, ApplyResult)> {
        self.apply_with(obj, dry_run, &[]).await
    }

    /// [`Registry::apply`]; a dry run counts the instance types `also` names as existing (a
    /// manifest that defines an instance type beside the instances using it).
    pub async fn apply_with(
        &self,
        obj: Object,
        dry_run: bool,
        also: &[String],
    ) -> Result<(Object, ApplyResult)> {
        let also = if dry_run { also } else { &[] };
        let kind = kind_of(&obj)?;
        for _ in 0..MAX_RETRIES {
            let Some(live) = self.read(kind, obj.name()).await? else {
                return match self.create_with(obj.clone(), dry_run, also).await {
                    Ok(o) => Ok((o, ApplyResult::Created)),
                    Err(Error::AlreadyExists { .. }) => continue,
                    Err(e) => Err(e),
                };
            };
            let mut next = live.clone();
            next.set_spec_from(&obj);
            {
                let applied = obj.metadata().cloned().unwrap_or_default();
                let m = next.metadata_mut();
                m.labels = applied.labels;
                m.annotations = applied.annotations;
                if !applied.finalizers.is_empty() {
                    m.finalizers = applied.finalizers;
                }
                if !applied.owner_references.is_empty() {
                    m.owner_references = applied.owner_references;
                }
            }
            match self.replace(&live, next, dry_run, also).await {
                Ok((o, changed)) => {
                    let result = if changed {
                        ApplyResult::Configured
                    } else {
                        ApplyResult::Unchanged
                    };
                    return Ok((o, result));
                }
                Err(Error::Conflict { .. }) => continue,
                Err(e) => Err(e)?,
            }
        }
        Err(Error::Conflict {
            kind: kind.as_str().into(),
            name: obj.name().into(),
            sent: 0,
            current: 0,
        })
    }

    /// Writes `next` over `live` (spec and metadata changes), bumping generation when the spec
    /// changed. Returns whether anything changed. Removes the object when it is being deleted and
    /// its last finalizer went.
    async fn replace(
        &self,
        live: &Object,
        mut next: Object,
        dry_run: bool,
        also: &[String],
    ) -> Result<(Object, bool)> {
        let kind = kind_of(live)?;
        if let Some(m) = live.metadata() {
            // The server owns these; a client cannot change them.
            let n = next.metadata_mut();
            n.uid = m.uid.clone();
            n.created_at = m.created_at;
            n.deleted_at = m.deleted_at;
            n.generation = m.generation;
            n.resource_version = m.resource_version;
            n.name = m.name.clone();
        }
        next.set_status_from(live);
        self.admit(&mut next, Some(live), also).await?;
        let spec_changed = next.spec_bytes() != live.spec_bytes();
        if spec_changed {
            next.metadata_mut().generation += 1;
        }
        if next == *live {
            return Ok((next, false));
        }
        if live.metadata().is_some_and(|m| m.deleted_at.is_some()) && spec_changed {
            return Err(Error::BeingDeleted {
                kind: kind.as_str().into(),
                name: live.name().into(),
            });
        }
        if dry_run {
            return Ok((next, true));
        }
        let pre = Precondition::ModRevision(live.resource_version());
        let finalized = next
            .metadata()
            .is_some_and(|m| m.deleted_at.is_some() && m.finalizers.is_empty());
        if finalized {
            self.store_delete(&key(kind, next.name()), pre)
                .await
                .map_err(|e| self.map_conflict(e, kind, next.name(), pre))?;
            return Ok((next, true));
        }
        Ok((self.put(next, pre).await?, true))
    }

    fn map_conflict(&self, e: store::Error, kind: Kind, name: &str, pre: Precondition) -> Error {
        match (e, pre) {
            (
                store::Error::Conflict {
                    actual: Some(current),
                    ..
                },
                Precondition::ModRevision(sent),
            ) => Error::Conflict {
                kind: kind.as_str().into(),
                name: name.into(),
                sent,
                current,
            },
            (store::Error::Conflict { actual: None, .. } | store::Error::NotFound { .. }, _) => {
                not_found(kind, name)
            }
            (e, _) => e.into(),
        }
    }

    /// Reads the live object; when `sent` is non-zero it must still be at that revision.
    async fn get_at(&self, kind: Kind, name: &str, sent: u64) -> Result<Object> {
        let live = self.get(kind, name).await?;
        if sent != 0 && live.resource_version() != sent {
            return Err(Error::Conflict {
                kind: kind.as_str().into(),
                name: name.into(),
                sent,
                current: live.resource_version(),
            });
        }
        Ok(live)
    }

    pub async fn get(&self, kind: Kind, name: &str) -> Result<Object> {
        self.read(kind, name)
            .await?
            .ok_or_else(|| not_found(kind, name))
    }

    /// Lists objects of a kind (all kinds when `None`) matching `selector`, with the revision the
    /// list is consistent at.
    pub async fn list(
        &self,
        kind: Option<Kind>,
        selector: &Selector,
        fields: Fields,
    ) -> Result<(Vec<Object>, u64)> {
        let (kvs, revision) = self.store.list(&prefix(kind)).await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            let mut o = decode(kv)?;
            if selector.matches(labels(&o)) {
                keep(&mut o, fields);
                out.push(o);
            }
        }
        Ok((out, revision))
    }

    /// Replaces spec and user metadata (labels, annotations, finalizers, owner references).
    /// A non-zero `resourceVersion` is a precondition; zero means "whatever is there now".
    pub async fn update(&self, obj: Object, dry_run: bool) -> Result<Object> {
        let kind = kind_of(&obj)?;
        let sent = obj.resource_version();
        for _ in 0..MAX_RETRIES {
            let live = self.get_at(kind, obj.name(), sent).await?;
            let mut next = obj.clone();
            next.clear_status();
            match self.replace(&live, next, dry_run, &[]).await {
                Err(Error::Conflict { .. }) if sent == 0 => continue,
                other => return other.map(|(o, _)| o),
            }
        }
        Err(Error::Conflict {
            kind: kind.as_str().into(),
            name: obj.name().into(),
            sent,
            current: 0,
        })
    }

    /// Replaces the status only. A non-zero `resourceVersion` is a precondition.
    pub async fn update_status(&self, obj: Object, dry_run: bool) -> Result<Object> {
        let kind = kind_of(&obj)?;
        if !kind.has_status() {
            return Err(Error::invalid("status", format!("{kind} has no status")));
        }
        let sent = obj.resource_version();
        for _ in 0..MAX_RETRIES {
            let live = self.get_at(kind, obj.name(), sent).await?;
            let mut next = live.clone();
            next.set_status_from(&obj);
            if next == live {
                return Ok(live);
            }
            if dry_run {
                return Ok(next);
            }
            match self
                .put(next, Precondition::ModRevision(live.resource_version()))
                .await
            {
                Err(Error::Conflict { .. }) if sent == 0 => continue,
                other => return other,
            }
        }
        Err(Error::Conflict {
            kind: kind.as_str().into(),
            name: obj.name().into(),
            sent,
            current: 0,
        })
    }

    /// Deletes the object; while finalizers remain it is only marked (`deletedAt`) and
    /// `removed` is false. A non-zero `resource_version` is a precondition.
    pub async fn delete(
        &self,
        kind: Kind,
        name: &str,
        resource_version: u64,
        dry_run: bool,
    ) -> Result<(Object, bool)> {
        for _ in 0..MAX_RETRIES {
            let live = self.get_at(kind, name, resource_version).await?;
            if let Some(Resource::DbCluster(c)) = &live.resource
                && c.spec.as_ref().is_some_and(|s| s.deletion_protection)
            {
                return Err(Error::DeletionProtected {
                    kind: kind.as_str().into(),
                    name: name.into(),
                    field: "spec.deletionProtection".into(),
                });
            }
            let pre = Precondition::ModRevision(live.resource_version());
            let has_finalizers = live.metadata().is_some_and(|m| !m.finalizers.is_empty());
            if has_finalizers {
                if live.metadata().is_some_and(|m| m.deleted_at.is_some()) || dry_run {
                    return Ok((live, false));
                }
                let mut marked = live.clone();
                marked.metadata_mut().deleted_at = Some(time::now());
                match self.put(marked, pre).await {
                    Ok(o) => return Ok((o, false)),
                    Err(Error::Conflict { .. }) if resource_version == 0 => continue,
                    Err(e) => return Err(e),
                }
            }
            if dry_run {
                return Ok((live, true));
            }
            match self.store_delete(&key(kind, name), pre).await {
                Ok(kv) => {
                    let mut gone = live;
                    gone.metadata_mut().resource_version = kv.mod_revision;
                    return Ok((gone, true));
                }
                Err(e) => match self.map_conflict(e, kind, name, pre) {
                    Error::Conflict { .. } if resource_version == 0 => continue,
                    e => return Err(e),
                },
            }
        }
        Err(Error::Conflict {
            kind: kind.as_str().into(),
            name: name.into(),
            sent: resource_version,
            current: 0,
        })
    }

    /// Streams changes to objects of `kind` (all when `None`) after revision `since` (0: from
    /// now). With a selector, an object that stops matching is sent as DELETED and one that
    /// starts matching as ADDED, as Kubernetes does.
    pub fn watch(
        &self,
        kind: Option<Kind>,
        selector: Selector,
        since: u64,
        fields: Fields,
    ) -> Result<impl Stream<Item = Result<WatchEvent>> + Send + 'static> {
        let stream = self.store.watch(&prefix(kind), since)?;
        Ok(stream.filter_map(move |ev| {
            let out = match ev {
                Err(e) => Some(Err(Error::from(e))),
                Ok(ev) => translate(&selector, fields, ev).transpose(),
            };
            futures::future::ready(out)
        }))
    }

    /// Creates the built-in instance types that are missing (first start, or deleted by hand).
    pub async fn seed_builtin_catalog(&self) -> Result<usize> {
        let mut created = 0;
        for t in admission::builtin_catalog() {
            let obj = Object::from(t);
            if self.read(Kind::InstanceType, obj.name()).await?.is_none() {
                match self.create(obj, false).await {
                    Ok(_) => created += 1,
                    Err(Error::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        debug!(
            created,
            label = BUILTIN_LABEL,
            "Seeded the built-in instance types."
        );
        Ok(created)
    }
}

/// Turns a store event into an API watch event, applying the label selector.
fn translate(
    selector: &Selector,
    fields: Fields,
    ev: store::WatchEvent,
) -> Result<Option<WatchEvent>> {
    let revision = ev.kv.mod_revision;
    let (ty, mut object) = match ev.kind {
        WatchEventKind::Delete => {
            // The last state before the delete.
            let mut o = decode(ev.prev.as_ref().unwrap_or(&ev.kv))?;
            if !selector.matches(labels(&o)) {
                return Ok(None);
            }
            o.metadata_mut().resource_version = revision;
            (EventType::Deleted, o)
        }
        WatchEventKind::Put => {
            // The previous state matters only to a selector (whether the object enters or
            // leaves it): without one, it is not decoded.
            let prev_matched = match &ev.prev {
                None => false,
                Some(_) if selector.is_empty() => true,
                Some(p) => selector.matches(labels(&decode(p)?)),
            };
            let o = decode(&ev.kv)?;
            match (prev_matched, selector.matches(labels(&o))) {
                (false, true) => (EventType::Added, o),
                (true, true) => (EventType::Modified, o),
                (true, false) => (EventType::Deleted, o),
                (false, false) => return Ok(None),
            }
        }
    };
    keep(&mut object, fields);
    Ok(Some(WatchEvent {
        r#type: ty as i32,
        object: Some(object),
        revision,
    }))
}

/// An object's labels (none when it has no metadata).
fn labels(o: &Object) -> &HashMap<String, String> {
    static NONE: std::sync::LazyLock<HashMap<String, String>> =
        std::sync::LazyLock::new(HashMap::new);
    o.metadata().map_or(&NONE, |m| &m.labels)
}

/// Leaves only the asked fields of an object that goes out.
fn keep(o: &mut Object, fields: Fields) {
    if fields == Fields::MetadataOnly {
        o.keep_only_metadata();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use hanul_proto::v1::{Image, ImageSpec, ImageStatus, ObjectMeta, object::Resource};

    async fn registry() -> Registry {
        let r = Registry::new(Arc::new(MemoryStore::new()));
        r.seed_builtin_catalog().await.unwrap();
        r
    }

    fn image(name: &str, command: &str) -> Object {
        Image {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: Some(ImageSpec {
                command: vec![command.into()],
                ..Default::default()
            }),
            status: None,
        }
        .into()
    }

    fn with_status(mut o: Object, reason: &str) -> Object {
        if let Some(Resource::Image(i)) = &mut o.resource {
            i.status = Some(ImageStatus {
                observed_generation: 7,
                conditions: vec![hanul_proto::v1::Condition {
                    r#type: reason.into(),
                    ..Default::default()
                }],
            });
        }
        o
    }

    #[tokio::test]
    async fn a_protected_db_cluster_is_not_deleted_until_the_protection_is_off() {
        use hanul_proto::v1::{DbCluster, DbClusterSpec};
        let r = registry().await;
        let cluster = |protect| -> Object {
            DbCluster {
                metadata: Some(ObjectMeta {
                    name: "orders".into(),
                    ..Default::default()
                }),
                spec: Some(DbClusterSpec {
                    master_password: "long-enough-pw".into(),
                    deletion_protection: protect,
                    ..Default::default()
                }),
                status: None,
            }
            .into()
        };
        r.create(cluster(true), false).await.unwrap();
        let err = r
            .delete(Kind::DbCluster, "orders", 0, false)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::DeletionProtected { .. }), "{err}");
        assert!(err.to_string().contains("spec.deletionProtection"));
        r.get(Kind::DbCluster, "orders").await.unwrap();
        r.apply(cluster(false), false).await.unwrap();
        let (_, removed) = r.delete(Kind::DbCluster, "orders", 0, false).await.unwrap();
        assert!(removed);
    }

    #[tokio::test]
    async fn apply_creates_then_configures_then_leaves_unchanged() {
        let r = registry().await;
        let (a, res) = r.apply(image("a", "one"), false).await.unwrap();
        assert_eq!(res, ApplyResult::Created);
        assert_eq!(a.metadata().unwrap().generation, 1);
        let (b, res) = r.apply(image("a", "one"), false).await.unwrap();
        assert_eq!(res, ApplyResult::Unchanged);
        assert_eq!(b.resource_version(), a.resource_version());
        let (c, res) = r.apply(image("a", "two"), false).await.unwrap();
        assert_eq!(res, ApplyResult::Configured);
        assert_eq!(c.metadata().unwrap().generation, 2);
        assert!(c.resource_version() > a.resource_version());
        assert_eq!(c.metadata().unwrap().uid, a.metadata().unwrap().uid);
    }

    #[tokio::test]
    async fn status_changes_neither_spec_nor_generation_and_spec_writes_keep_status() {
        let r = registry().await;
        let a = r.create(image("a", "one"), false).await.unwrap();
        let s = r
            .update_status(with_status(image("a", "ignored-spec"), "Ready"), false)
            .await
            .unwrap();
        assert_eq!(
            s.spec_bytes(),
            a.spec_bytes(),
            "update-status must not touch spec"
        );
        assert_eq!(s.metadata().unwrap().generation, 1);
        // A spec update carrying another status keeps the stored one.
        let u = r
            .update(with_status(image("a", "two"), "Other"), false)
            .await
            .unwrap();
        assert_eq!(u.status_bytes(), s.status_bytes());
        assert_eq!(u.metadata().unwrap().generation, 2);
        // A label-only change bumps the revision but not the generation.
        let mut l = u.clone();
        l.metadata_mut().labels.insert("x".into(), "y".into());
        let l = r.update(l, false).await.unwrap();
        assert_eq!(l.metadata().unwrap().generation, 2);
        assert!(l.resource_version() > u.resource_version());
    }

    #[tokio::test]
    async fn an_instance_type_is_checked_only_when_an_instance_chooses_it() {
        let r = registry().await;
        let manifest = |ty: &str| {
            hanul_proto::manifest::parse(
                "t",
                &format!(
                    "apiVersion: hanul/v1\nkind: Instance\nmetadata: {{name: i}}\nspec: {{image: web, instanceType: {ty}}}\n"
                ),
            )
            .unwrap()
            .remove(0)
            .object
        };
        let ty: Object = hanul_proto::v1::InstanceType {
            metadata: Some(ObjectMeta {
                name: "custom.type".into(),
                ..Default::default()
            }),
            spec: Some(hanul_proto::v1::InstanceTypeSpec {
                vcpu: 1,
                memory_mib: 64,
                ..Default::default()
            }),
            status: None,
        }
        .into();
        r.create(ty, false).await.unwrap();
        r.create(manifest("custom.type"), false).await.unwrap();
        r.delete(Kind::InstanceType, "custom.type", 0, false)
            .await
            .unwrap();
        // Keeping the (now deleted) type: admitted; choosing an unknown one: refused.
        let mut keep = r.get(Kind::Instance, "i").await.unwrap();
        keep.metadata_mut().labels.insert("a".into(), "b".into());
        r.update(keep, false).await.unwrap();
        let mut change = r.get(Kind::Instance, "i").await.unwrap();
        change
            .as_instance_mut()
            .unwrap()
            .spec
            .as_mut()
            .unwrap()
            .instance_type = "gone.too".into();
        let err = r.update(change, false).await.unwrap_err().to_string();
        assert!(err.contains("unknown instance type \"gone.too\""), "{err}");
    }

    #[tokio::test]
    async fn a_stale_resource_version_is_refused_with_both_versions() {
        let r = registry().await;
        let a = r.create(image("a", "one"), false).await.unwrap();
        r.update(image("a", "two"), false).await.unwrap();
        let mut stale = image("a", "three");
        stale.metadata_mut().resource_version = a.resource_version();
        match r.update(stale, false).await {
            Err(Error::Conflict { sent, current, .. }) => {
                assert_eq!(sent, a.resource_version());
                assert!(current > sent);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn dry_runs_validate_but_write_nothing() {
        let r = registry().await;
        let rev = r.store().revision();
        r.apply(image("a", "one"), true).await.unwrap();
        assert!(matches!(
            r.get(Kind::Image, "a").await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            r.apply(image("b", ""), true).await,
            Err(Error::Invalid(_))
        ));
        assert_eq!(r.store().revision(), rev);
    }

    #[tokio::test]
    async fn finalizers_defer_removal_until_the_last_one_goes() {
        let r = registry().await;
        let mut o = image("a", "one");
        o.metadata_mut().finalizers = vec!["x".into(), "y".into()];
        r.create(o, false).await.unwrap();
        let (marked, removed) = r.delete(Kind::Image, "a", 0, false).await.unwrap();
        assert!(!removed);
        assert!(marked.metadata().unwrap().deleted_at.is_some());
        let mut one = r.get(Kind::Image, "a").await.unwrap();
        one.metadata_mut().finalizers = vec!["y".into()];
        r.update(one, false).await.unwrap();
        let mut none = r.get(Kind::Image, "a").await.unwrap();
        assert!(
            none.metadata().unwrap().deleted_at.is_some(),
            "deletedAt stays once set"
        );
        none.metadata_mut().finalizers.clear();
        r.update(none, false).await.unwrap();
        assert!(matches!(
            r.get(Kind::Image, "a").await,
            Err(Error::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn generate_name_makes_unique_names() {
        let r = registry().await;
        let mut o = image("", "one");
        o.metadata_mut().generate_name = "web-".into();
        let a = r.create(o.clone(), false).await.unwrap();
        let b = r.create(o, false).await.unwrap();
        assert!(
            a.name().starts_with("web-") && a.name().len() == 9,
            "{}",
            a.name()
        );
        assert_ne!(a.name(), b.name());
    }

    #[tokio::test]
    async fn a_watch_with_a_selector_sees_objects_enter_and_leave_it() {
        let r = registry().await;
        let since = r.store().revision();
        let mut a = r.create(image("a", "one"), false).await.unwrap();
        a.metadata_mut().labels.insert("app".into(), "web".into());
        let mut a = r.update(a, false).await.unwrap();
        a.metadata_mut().labels.clear();
        r.update(a, false).await.unwrap();
        r.delete(Kind::Image, "a", 0, false).await.unwrap();
        let mut w = r
            .watch(
                Some(Kind::Image),
                Selector::parse("app=web").unwrap(),
                since,
                Fields::All,
            )
            .unwrap();
        let first = w.next().await.unwrap().unwrap();
        let second = w.next().await.unwrap().unwrap();
        assert_eq!(first.r#type(), EventType::Added);
        assert_eq!(second.r#type(), EventType::Deleted);
        assert!(second.revision > first.revision);
    }

    #[tokio::test]
    async fn a_metadata_only_list_and_watch_leave_out_spec_and_status() {
        let r = registry().await;
        let since = r.store().revision();
        let a = r.create(image("a", "one"), false).await.unwrap();
        r.update_status(with_status(a, "Ready"), false)
            .await
            .unwrap();
        r.delete(Kind::Image, "a", 0, false).await.unwrap();
        let (full, _) = r
            .list(Some(Kind::InstanceType), &Selector::default(), Fields::All)
            .await
            .unwrap();
        let (bare, _) = r
            .list(
                Some(Kind::InstanceType),
                &Selector::default(),
                Fields::MetadataOnly,
            )
            .await
            .unwrap();
        assert_eq!(bare.len(), full.len());
        for (f, b) in full.iter().zip(&bare) {
            assert!(!f.spec_bytes().is_empty());
            assert!(b.spec_bytes().is_empty() && b.status_bytes().is_empty());
            assert_eq!(f.metadata(), b.metadata());
        }
        let mut w = r
            .watch(
                Some(Kind::Image),
                Selector::default(),
                since,
                Fields::MetadataOnly,
            )
            .unwrap();
        let mut types = Vec::new();
        for _ in 0..3 {
            let ev = w.next().await.unwrap().unwrap();
            let o = ev.object.as_ref().unwrap();
            assert_eq!(o.kind(), Some(Kind::Image));
            assert_eq!(o.name(), "a");
            assert_eq!(o.resource_version(), ev.revision);
            assert!(o.spec_bytes().is_empty() && o.status_bytes().is_empty());
            types.push(ev.r#type());
        }
        assert_eq!(
            types,
            [EventType::Added, EventType::Modified, EventType::Deleted]
        );
    }

    #[tokio::test]
    async fn the_builtin_catalog_is_seeded_once() {
        let r = registry().await;
        assert_eq!(r.seed_builtin_catalog().await.unwrap(), 0);
        let (types, _) = r
            .list(Some(Kind::InstanceType), &Selector::default(), Fields::All)
            .await
            .unwrap();
        assert!(types.iter().any(|t| t.name() == "t3.micro"));
        assert!(types.len() >= 10);
    }
}
